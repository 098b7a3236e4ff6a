-- Keys become global again: of the emails (and batches) sharing one, the oldest keeps
-- it and the others lose theirs, so that the global unique index can be built.
DELETE FROM email_batches b USING email_batches older
    WHERE b.idempotency_key = older.idempotency_key AND older.created_at < b.created_at;
DELETE FROM email_batches b USING email_batches other
    WHERE b.idempotency_key = other.idempotency_key AND other.created_at = b.created_at
      AND other.idempotency_client < b.idempotency_client;
ALTER TABLE email_batches DROP CONSTRAINT email_batches_pkey;
ALTER TABLE email_batches DROP COLUMN idempotency_client;
ALTER TABLE email_batches ADD PRIMARY KEY (idempotency_key);

UPDATE emails e SET idempotency_key = NULL
    FROM emails older
    WHERE e.idempotency_key = older.idempotency_key AND e.email_id <> older.email_id
      AND (older.created_at, older.email_id) < (e.created_at, e.email_id);
DROP INDEX emails_idempotency_key_idx;
ALTER TABLE emails DROP COLUMN idempotency_expired;
ALTER TABLE emails DROP COLUMN idempotency_client;
CREATE UNIQUE INDEX emails_idempotency_key_idx ON emails (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
