-- The state back into the message's row, as one table `emails` again.
DROP VIEW emails;
ALTER TABLE email_messages
    ADD COLUMN status          text        NOT NULL DEFAULT 'queued',
    ADD COLUMN attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    ADD COLUMN last_error      text,
    ADD COLUMN updated_at      timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN sent_at         timestamptz,
    ADD COLUMN next_attempt_at timestamptz DEFAULT now(),
    ADD COLUMN retry_base      integer     NOT NULL DEFAULT 0 CHECK (retry_base >= 0),
    ADD COLUMN scheduled_at    timestamptz;
UPDATE email_messages m
    SET status = d.status, attempts = d.attempts, last_error = d.last_error,
        updated_at = d.updated_at, sent_at = d.sent_at, next_attempt_at = d.next_attempt_at,
        retry_base = d.retry_base, scheduled_at = d.scheduled_at
    FROM email_deliveries d WHERE d.email_id = m.email_id;
DROP TRIGGER email_messages_delete_deliveries ON email_messages;
DROP FUNCTION email_messages_delete_deliveries();
DROP TABLE email_deliveries;
ALTER TABLE email_messages ADD CONSTRAINT emails_status_check CHECK (status IN
    ('queued', 'sending', 'sent', 'deferred', 'failed', 'scheduled', 'canceled',
     'suppressed', 'bounced', 'complained'));
ALTER INDEX email_messages_pkey RENAME TO emails_pkey;
ALTER INDEX email_messages_search_idx RENAME TO emails_search_idx;
ALTER INDEX email_messages_newest_first_idx RENAME TO emails_newest_first_idx;
ALTER INDEX email_messages_idempotency_key_idx RENAME TO emails_idempotency_key_idx;
ALTER TABLE email_messages RENAME TO emails;
CREATE INDEX emails_due_idx ON emails (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX emails_scheduled_idx ON emails (next_attempt_at) WHERE status = 'scheduled';
