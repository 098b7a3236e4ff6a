-- Suppression and bounces.
--
-- `suppressions` holds the addresses mailroom no longer sends to, one row per address
-- in its canonical form (lowercase, the domain in ASCII), so the delivery path finds
-- them by primary key. `suppressed` is the final status of an email none of whose
-- recipients could be sent to; `bounced` and `complained` follow `sent` when a report
-- comes back. An attempt that dropped every recipient is recorded as `suppressed`.
CREATE TABLE suppressions (
    address    text        PRIMARY KEY,
    -- Orders entries made at the same microsecond, for the list's cursor.
    id         uuid        NOT NULL UNIQUE,
    reason     text        NOT NULL CHECK (reason IN ('hard_bounce', 'complaint', 'manual')),
    -- The email whose refusal or report caused the entry; NULL for a manual one.
    email_id   uuid,
    -- What the receiving server said (an automatic entry).
    smtp_text  text,
    -- What the person who added a manual entry wrote.
    note       text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX suppressions_newest_idx ON suppressions (created_at DESC, id DESC);
CREATE INDEX suppressions_reason_idx ON suppressions (reason, created_at DESC, id DESC);

ALTER TABLE emails DROP CONSTRAINT emails_status_check;
ALTER TABLE emails ADD CONSTRAINT emails_status_check CHECK (status IN
    ('queued', 'sending', 'sent', 'deferred', 'failed', 'scheduled', 'canceled',
     'suppressed', 'bounced', 'complained'));

ALTER TABLE email_attempts DROP CONSTRAINT email_attempts_outcome_check;
ALTER TABLE email_attempts ADD CONSTRAINT email_attempts_outcome_check CHECK (outcome IN
    ('sent', 'transient', 'permanent', 'suppressed'));

-- Delivery reports (RFC 3464 DSNs) and complaints (RFC 5965 ARF) received for an email,
-- one row per recipient they name. `digest` (of the raw report) makes posting the same
-- report twice a no-op.
CREATE TABLE email_reports (
    email_id    uuid        NOT NULL REFERENCES emails (email_id) ON DELETE CASCADE,
    digest      text        NOT NULL,
    recipient   text        NOT NULL,
    -- 'failed', 'delayed' (a DSN's action) or 'complaint'.
    kind        text        NOT NULL CHECK (kind IN ('failed', 'delayed', 'complaint')),
    -- The DSN's status (`5.1.1`) or the ARF feedback type (`abuse`).
    status      text,
    diagnostic  text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (email_id, digest, recipient)
);
