ALTER TABLE email_attempts DROP COLUMN refused;
DROP TABLE email_attachment_contents;
ALTER TABLE emails
    DROP COLUMN message_id,
    DROP COLUMN attachments,
    DROP COLUMN tags,
    DROP COLUMN headers,
    DROP COLUMN reply_to,
    DROP COLUMN address_bcc,
    DROP COLUMN address_cc;
