-- Real messages: several recipients with display names, custom headers, tags and
-- attachments, a Message-ID. The new columns are NULL for a plain email (they cost it
-- nothing); attachment bytes live in their own table, out of the row that every status
-- change rewrites.
--
-- address_from and address_to now hold mailboxes in header form
-- (`Acme <billing@acme.example>`, `a@x.example, "Doe, Jo" <jo@y.example>`); a bare
-- address, as every older row holds, is such a form too. `message` is '' for an email
-- with an HTML part only (the search vector is built from it, so it stays NOT NULL).
ALTER TABLE emails
    ADD COLUMN address_cc  text,
    ADD COLUMN address_bcc text,
    ADD COLUMN reply_to    text,
    -- [{"name": …, "value": …}, …] in the caller's order.
    ADD COLUMN headers     jsonb,
    -- {"name": "value", …}
    ADD COLUMN tags        jsonb,
    -- [{"filename", "contentType", "size", "contentId"?, "sha256"}, …]: metadata only.
    ADD COLUMN attachments jsonb,
    -- `<emailID@domain>`; NULL for emails made before it was stored, whose Message-ID is
    -- `<emailID@mailroom>`.
    ADD COLUMN message_id  text;

CREATE TABLE email_attachment_contents (
    email_id uuid    NOT NULL REFERENCES emails (email_id) ON DELETE CASCADE,
    position integer NOT NULL CHECK (position >= 0),
    content  bytea   NOT NULL,
    PRIMARY KEY (email_id, position)
);

-- Recipients the server refused in an attempt: [{"address", "code", "text"}, …].
ALTER TABLE email_attempts ADD COLUMN refused jsonb;
