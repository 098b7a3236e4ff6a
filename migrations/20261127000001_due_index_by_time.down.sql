DROP INDEX emails_due_idx;
CREATE INDEX emails_due_idx ON emails (next_attempt_at)
    WHERE status IN ('queued', 'sending', 'deferred');
