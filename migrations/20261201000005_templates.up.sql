-- Stored templates and every version of each. A version is never changed: an email
-- keeps the name and version it was rendered from (emails.template), and that version
-- stays readable until its template is deleted.
CREATE TABLE templates (
    template_id uuid        PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    -- The newest version, which sending without a version uses.
    version     integer     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE template_versions (
    template_id uuid        NOT NULL REFERENCES templates ON DELETE CASCADE,
    version     integer     NOT NULL,
    subject     text        NOT NULL,
    message     text,
    html        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, version)
);

-- The template an email was rendered from: {"name": …, "version": …}; NULL for emails
-- written out in full.
ALTER TABLE emails ADD COLUMN template jsonb;
