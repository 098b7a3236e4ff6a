-- Idempotency keys belong to the client (API key name) that used them, and expire.
--
-- A key is unique per client among the emails whose key has not expired; a create past
-- `idempotency.ttl` first marks the older email's key expired (in the same transaction),
-- then stores a new email under the same key. Emails created before this migration, and
-- those from NATS publishers, belong to the client '' (no API key).
ALTER TABLE emails ADD COLUMN idempotency_client text NOT NULL DEFAULT '';
ALTER TABLE emails ADD COLUMN idempotency_expired boolean NOT NULL DEFAULT false;
DROP INDEX emails_idempotency_key_idx;
CREATE UNIQUE INDEX emails_idempotency_key_idx ON emails (idempotency_client, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND NOT idempotency_expired;

ALTER TABLE email_batches ADD COLUMN idempotency_client text NOT NULL DEFAULT '';
ALTER TABLE email_batches DROP CONSTRAINT email_batches_pkey;
ALTER TABLE email_batches ADD PRIMARY KEY (idempotency_client, idempotency_key);
