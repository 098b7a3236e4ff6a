-- Emails in the statuses this migration added must take one of the older ones first:
-- a scheduled email is queued (sent at once), a canceled one failed.
DROP TABLE email_batches;
DROP INDEX emails_scheduled_idx;
UPDATE emails SET status = 'queued', next_attempt_at = now() WHERE status = 'scheduled';
UPDATE emails SET status = 'failed', last_error = coalesce(last_error, 'canceled'),
    next_attempt_at = NULL WHERE status = 'canceled';
ALTER TABLE emails DROP COLUMN scheduled_at;
ALTER TABLE emails DROP CONSTRAINT emails_status_check;
ALTER TABLE emails ADD CONSTRAINT emails_status_check CHECK (status IN
    ('queued', 'sending', 'sent', 'deferred', 'failed'));
