-- Emails are the source of truth for every delivery: NATS carries only ids.
CREATE TABLE emails (
    email_id        uuid        PRIMARY KEY,
    address_from    text        NOT NULL,
    address_to      text        NOT NULL,
    subject         text        NOT NULL,
    message         text        NOT NULL,
    html            text,
    status          text        NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'sending', 'sent', 'deferred', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      text,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    -- When the email is due for its next attempt: its creation for a queued email, the
    -- retry time of a deferred one, the end of the lease of one being sent. NULL once
    -- sent or failed. The reconciler republishes emails long past due.
    next_attempt_at timestamptz DEFAULT now(),
    -- Full text over recipient, subject and message. The address is indexed whole, by
    -- domain and in parts so "alice", "example.com" and "alice@example.com" all find it. The
    -- message is cut at 64 KiB because a tsvector may not exceed 1 MiB.
    search          tsvector    GENERATED ALWAYS AS (
        to_tsvector('english',
            address_to || ' ' || split_part(address_to, '@', 2) || ' ' ||
            translate(address_to, '@.', '  ') || ' ' ||
            subject || ' ' || left(message, 65536))
    ) STORED
);

CREATE UNIQUE INDEX emails_idempotency_key_idx ON emails (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX emails_search_idx ON emails USING gin (search);
CREATE INDEX emails_newest_first_idx ON emails (created_at DESC, email_id DESC);
-- The reconciler looks only at unfinished emails; a partial index keeps that cheap.
CREATE INDEX emails_due_idx ON emails (next_attempt_at)
    WHERE status IN ('queued', 'sending', 'deferred');

-- One row per delivery attempt, with what the SMTP server said.
CREATE TABLE email_attempts (
    email_id     uuid        NOT NULL REFERENCES emails (email_id) ON DELETE CASCADE,
    attempt      integer     NOT NULL CHECK (attempt > 0),
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    outcome      text        NOT NULL CHECK (outcome IN ('sent', 'transient', 'permanent')),
    smtp_code    smallint,
    smtp_text    text,
    PRIMARY KEY (email_id, attempt)
);
