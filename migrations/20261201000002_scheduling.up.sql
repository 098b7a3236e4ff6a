-- The sending API: scheduled sends, cancellation, batches.
--
-- A scheduled email waits in `scheduled` with its time in next_attempt_at; the scheduler
-- of every instance moves due ones to `queued` (emails_scheduled_idx finds them without
-- reading the others). `canceled` is final.
ALTER TABLE emails DROP CONSTRAINT emails_status_check;
ALTER TABLE emails ADD CONSTRAINT emails_status_check CHECK (status IN
    ('queued', 'sending', 'sent', 'deferred', 'failed', 'scheduled', 'canceled'));
ALTER TABLE emails ADD COLUMN scheduled_at timestamptz;
CREATE INDEX emails_scheduled_idx ON emails (next_attempt_at) WHERE status = 'scheduled';

-- One row per batch created with an Idempotency-Key: a repeat of the key with the same
-- content answers the same emails again, with other content a conflict.
CREATE TABLE email_batches (
    idempotency_key text        PRIMARY KEY,
    content_sha256  text        NOT NULL,
    email_ids       uuid[]      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
