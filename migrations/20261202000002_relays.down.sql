ALTER TABLE email_attempts DROP COLUMN relay;
