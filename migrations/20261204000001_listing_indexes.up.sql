-- Indexes that give a listing or a search its newest matches without reading the table.
-- PostgreSQL's index types give either the newest rows (a btree on created_at) or the
-- matching rows (GIN), not the newest matching ones; a word common in the table but
-- absent from its newest rows made the service read hundreds of thousands of rows.
--
-- Conditions a btree can serve with the order (status, sender) get a btree that ends in
-- (created_at, email_id). Words, recipients and tags stay with GIN, whose index now also
-- holds each email's minute, hour and day of creation: the service reads the matches of
-- a few minutes, hours or days at a time, newest first, and stops once it has a page
-- (src/adapters/postgres/newest.rs).
-- Only this insert-once table pays for the GIN keys; status changes do not touch it.

-- btree_gin (contrib, trusted: the database's owner may create it) lets GIN index the
-- minute, the hour and the day, integers, beside the words and the tags.
CREATE EXTENSION IF NOT EXISTS btree_gin;

-- The minute, hour and day of a moment, counted from the Unix epoch. Immutable (the
-- epoch does not depend on the time zone), so an index may hold them; the service
-- computes the same. Old emails are read a day at a time (a lookup per day rather than
-- per minute), a burst in the last hour a few minutes at a time.
CREATE FUNCTION email_created_minute(at timestamptz) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN floor(extract(epoch FROM at) / 60)::integer;

CREATE FUNCTION email_created_hour(at timestamptz) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN floor(extract(epoch FROM at) / 3600)::integer;

CREATE FUNCTION email_created_day(at timestamptz) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN floor(extract(epoch FROM at) / 86400)::integer;

-- The bare address of a mailbox in header form, lower case: `Acme <Billing@Acme.example>`
-- and `billing@acme.example` both give `billing@acme.example`.
CREATE FUNCTION email_bare_address(mailbox text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN lower(coalesce(substring(mailbox FROM '<([^<>]*)>\s*$'), btrim(mailbox)));

DROP INDEX email_messages_search_idx;
CREATE INDEX email_messages_search_idx ON email_messages
    USING gin (email_created_minute(created_at), email_created_hour(created_at),
               email_created_day(created_at), search, tags jsonb_path_ops);

CREATE INDEX email_messages_sender_idx ON email_messages
    (email_bare_address(address_from), created_at DESC, email_id DESC);

-- The message's creation time beside its state, so one btree gives the newest emails of
-- a status. Inserted with the message (in one transaction, where now() is one time). Not
-- named created_at: instances of the version before, still running while this one
-- starts, join the two tables with an unqualified created_at.
ALTER TABLE email_deliveries ADD COLUMN message_created_at timestamptz;
UPDATE email_deliveries d SET message_created_at = m.created_at
    FROM email_messages m WHERE m.email_id = d.email_id;
ALTER TABLE email_deliveries
    ALTER COLUMN message_created_at SET DEFAULT now(),
    ALTER COLUMN message_created_at SET NOT NULL;
-- Every email passes through queued and sending, which a listing by status rarely asks
-- for and which would cost two more index entries per email: those are left out (the
-- newest-first walk finds them, being the newest).
CREATE INDEX email_deliveries_status_idx ON email_deliveries
    (status, message_created_at DESC, email_id DESC) WHERE status NOT IN ('queued', 'sending');
