-- The delivery state of an email in a narrow table of its own. Every claim and every
-- finished attempt rewrites the state; in one wide row it rewrote the whole message
-- with it (subject, bodies, headers, tags, the stored search vector), and since
-- next_attempt_at is indexed no update was HOT, so each status change added entries to
-- every index, the full-text one's lexemes included. Apart, a status change writes a
-- row of a few dozen bytes and touches the state's own indexes only; the message is
-- written once.
--
-- `emails` stays, as a view joining the two: the service reads whole emails through it,
-- and so can operators.
ALTER TABLE emails RENAME TO email_messages;
ALTER INDEX emails_pkey RENAME TO email_messages_pkey;
ALTER INDEX emails_search_idx RENAME TO email_messages_search_idx;
ALTER INDEX emails_newest_first_idx RENAME TO email_messages_newest_first_idx;
ALTER INDEX emails_idempotency_key_idx RENAME TO email_messages_idempotency_key_idx;

-- One row per row of email_messages, inserted with it in one statement. No foreign key:
-- its check on every insert cost a fifth of a single email's insert (pgbench, one email
-- per transaction); a trigger on delete keeps the two in step instead.
CREATE TABLE email_deliveries (
    email_id        uuid        PRIMARY KEY,
    status          text        NOT NULL DEFAULT 'queued'
                    CONSTRAINT email_deliveries_status_check CHECK (status IN
                        ('queued', 'sending', 'sent', 'deferred', 'failed', 'scheduled',
                         'canceled', 'suppressed', 'bounced', 'complained')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- The attempts made before the last redrive; the retry budget counts from it.
    retry_base      integer     NOT NULL DEFAULT 0 CHECK (retry_base >= 0),
    last_error      text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    -- The time asked for by a scheduled send (moved by a reschedule).
    scheduled_at    timestamptz,
    -- When the email is due for its next attempt: its creation (or its scheduled time),
    -- the retry time of a deferred one, the end of the lease of one being sent. NULL
    -- once it is final. The reconciler republishes emails long past due.
    next_attempt_at timestamptz DEFAULT now()
);
INSERT INTO email_deliveries (email_id, status, attempts, retry_base, last_error, updated_at,
                              sent_at, scheduled_at, next_attempt_at)
    SELECT email_id, status, attempts, retry_base, last_error, updated_at, sent_at,
           scheduled_at, next_attempt_at
    FROM email_messages;
-- Dropping the columns drops emails_due_idx and emails_scheduled_idx with them.
ALTER TABLE email_messages
    DROP COLUMN status,
    DROP COLUMN attempts,
    DROP COLUMN retry_base,
    DROP COLUMN last_error,
    DROP COLUMN updated_at,
    DROP COLUMN sent_at,
    DROP COLUMN scheduled_at,
    DROP COLUMN next_attempt_at;
CREATE INDEX email_deliveries_due_idx ON email_deliveries (next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;
CREATE INDEX email_deliveries_scheduled_idx ON email_deliveries (next_attempt_at)
    WHERE status = 'scheduled';

CREATE FUNCTION email_messages_delete_deliveries() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM email_deliveries d USING deleted WHERE d.email_id = deleted.email_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER email_messages_delete_deliveries AFTER DELETE ON email_messages
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION email_messages_delete_deliveries();

CREATE VIEW emails AS
    SELECT m.email_id, m.address_from, m.address_to, m.address_cc, m.address_bcc, m.reply_to,
           m.subject, m.message, m.html, m.headers, m.tags, m.attachments, m.message_id,
           m.template, m.lane, d.status, d.attempts, d.retry_base, d.last_error,
           m.idempotency_key, m.idempotency_client, m.idempotency_expired, m.created_at,
           d.updated_at, d.sent_at, d.scheduled_at, d.next_attempt_at, m.search
    FROM email_messages m JOIN email_deliveries d USING (email_id);
