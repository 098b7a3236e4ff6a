DROP INDEX email_deliveries_status_idx;
ALTER TABLE email_deliveries DROP COLUMN message_created_at;
DROP INDEX email_messages_sender_idx;
DROP INDEX email_messages_search_idx;
CREATE INDEX email_messages_search_idx ON email_messages USING gin (search);
DROP FUNCTION email_bare_address(text);
DROP FUNCTION email_created_day(timestamptz);
DROP FUNCTION email_created_hour(timestamptz);
DROP FUNCTION email_created_minute(timestamptz);
-- btree_gin stays: it may have been there before the migration, and unused it costs
-- nothing.
