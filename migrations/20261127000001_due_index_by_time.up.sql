-- The reconciler's index, keyed by what it looks for rather than by status.
--
-- Its predicate was `status IN ('queued', 'sending', 'deferred')`. Then the claim
-- (`status = 'queued' OR …`) and the recording of attempts (`status = 'sending'`) could
-- be served by it too, and once the table statistics went stale (analysed while nothing
-- was due, then a burst of new emails), PostgreSQL chose to: every batch of 16 read every
-- unfinished email. `next_attempt_at` is NULL exactly when an email is sent or failed,
-- so this index holds the same rows, and a condition on `status` no longer reaches it.
DROP INDEX emails_due_idx;
CREATE INDEX emails_due_idx ON emails (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
