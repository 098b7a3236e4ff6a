-- The lane an email is queued and sent in: transactional mail and bulk mail have their
-- own send subjects and consumers. Every email stored before lanes was transactional.
-- A constant default: PostgreSQL adds the column without rewriting the table.
ALTER TABLE emails ADD COLUMN lane text NOT NULL DEFAULT 'transactional'
    CHECK (lane IN ('transactional', 'bulk'));
