-- Emails in the statuses this migration added take the nearest older one: a suppressed
-- email failed, a bounced or complained one was sent.
DROP TABLE email_reports;
UPDATE emails SET status = 'failed', last_error = coalesce(last_error, 'suppressed')
    WHERE status = 'suppressed';
UPDATE emails SET status = 'sent' WHERE status IN ('bounced', 'complained');
ALTER TABLE emails DROP CONSTRAINT emails_status_check;
ALTER TABLE emails ADD CONSTRAINT emails_status_check CHECK (status IN
    ('queued', 'sending', 'sent', 'deferred', 'failed', 'scheduled', 'canceled'));
DELETE FROM email_attempts WHERE outcome = 'suppressed';
ALTER TABLE email_attempts DROP CONSTRAINT email_attempts_outcome_check;
ALTER TABLE email_attempts ADD CONSTRAINT email_attempts_outcome_check CHECK (outcome IN
    ('sent', 'transient', 'permanent'));
DROP TABLE suppressions;
