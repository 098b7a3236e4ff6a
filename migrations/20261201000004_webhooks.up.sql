-- Webhook endpoints, the deliveries of events to them, and every attempt of each.
--
-- A delivery is one event for one endpoint; its id is the `webhook-id` header, the same
-- on every attempt. It is derived from the status event's stream sequence and the
-- endpoint, so a status event handled twice makes no second delivery. A pending
-- delivery is due at next_attempt_at: the retry schedule's next time, or, while an
-- attempt is on its way, the time that attempt is given up as lost (a lease), so
-- PostgreSQL holds every retry and a crash loses none.
CREATE TABLE webhooks (
    webhook_id              uuid        PRIMARY KEY,
    url                     text        NOT NULL,
    events                  text[]      NOT NULL,
    description             text,
    enabled                 boolean     NOT NULL DEFAULT true,
    -- Why it was disabled, when mailroom disabled it (not the user).
    disabled_reason         text,
    secret                  text        NOT NULL,
    -- The secret before the last rotation, signed with too until it expires.
    previous_secret         text,
    previous_secret_expires timestamptz,
    -- When the run of failures going on began (NULL after a success).
    failing_since           timestamptz,
    -- Since when it receives events: its registration, or when it was last enabled.
    -- Status events from before are not for it (the dispatcher may read them late).
    active_since            timestamptz NOT NULL DEFAULT now(),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    delivery_id  uuid        PRIMARY KEY,
    webhook_id   uuid        NOT NULL REFERENCES webhooks ON DELETE CASCADE,
    event_type   text        NOT NULL,
    -- The exact body sent (and signed), the same on every attempt.
    payload      text        NOT NULL,
    status       text        NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts     integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- The delivery log of an endpoint, newest first, by cursor.
CREATE INDEX webhook_deliveries_log_idx
    ON webhook_deliveries (webhook_id, created_at DESC, delivery_id DESC);

-- Pending deliveries by when they are due, for the retriers.
CREATE INDEX webhook_deliveries_due_idx
    ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    delivery_id  uuid        NOT NULL REFERENCES webhook_deliveries ON DELETE CASCADE,
    attempt      integer     NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    http_status  integer,
    error        text,
    duration_ms  integer     NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
