-- A redriven email (`mailroom dlq redrive`) gets a fresh retry budget: retries count
-- from the attempt number it had when it was queued again.
ALTER TABLE emails ADD COLUMN retry_base integer NOT NULL DEFAULT 0 CHECK (retry_base >= 0);
