-- Webhooks: endpoints that receive every hold event (Standard Webhooks), and the deliveries still owed to them.
--
-- The sequencer creates an event's deliveries in the transaction that numbers it (gateway.hold_events), so a
-- numbered event is never without them and a restart loses nothing. A worker claims due deliveries with FOR
-- UPDATE SKIP LOCKED and a lease (`locked_until`) in a short transaction, sends outside any transaction, and
-- records the outcome in one statement: a delivered row is deleted and counted on its endpoint (`delivered`),
-- so the table holds only what is still owed (pending) or given up on (failed).

CREATE TABLE webhook_endpoints (
    id                text        NOT NULL,
    url               text        NOT NULL,
    secret            text        NOT NULL,  -- whsec_<base64>: the HMAC key, so it is kept as it is
    -- An endpoint gets the events that occurred at or after this; set under the sequencer's lock.
    created_at        timestamptz NOT NULL,
    delivered         bigint      NOT NULL DEFAULT 0,  -- deliveries answered 2xx (their rows are gone)
    last_delivered_at timestamptz,
    last_error        text,                            -- of the latest failed attempt: status and excerpt
    last_error_at     timestamptz,
    CONSTRAINT webhook_endpoints_pkey PRIMARY KEY (id),
    CONSTRAINT webhook_endpoints_url_length CHECK (length(url) <= 2048)
);

CREATE TABLE webhook_deliveries (
    endpoint_id     text        NOT NULL,
    event_id        bigint      NOT NULL,  -- hold_events.id: the feed position, and the webhook-id
    hold_id         text        NOT NULL,  -- a hold's events go out in feed order, one at a time
    occurred_at     timestamptz NOT NULL,  -- of the event: the delivery latency is counted from it
    retry_from      timestamptz NOT NULL,  -- the retry window's start: the event, or the operator's redeliver
    status          text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    locked_until    timestamptz,           -- a worker is sending it until then (a dead worker's lease lapses)
    last_status     integer,               -- HTTP status of the latest attempt; null: no answer
    last_error      text,
    last_attempt_at timestamptz,
    CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (endpoint_id, event_id),
    CONSTRAINT webhook_deliveries_endpoint_id_fkey
        FOREIGN KEY (endpoint_id) REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    CONSTRAINT webhook_deliveries_status_check CHECK (status IN ('pending', 'failed'))
);

-- The claim: an endpoint's due deliveries, soonest first.
CREATE INDEX webhook_deliveries_due_idx
    ON webhook_deliveries (endpoint_id, next_attempt_at, event_id) WHERE status = 'pending';

-- Order per hold: whether an earlier event of the same hold is still owed to the endpoint.
CREATE INDEX webhook_deliveries_hold_idx
    ON webhook_deliveries (endpoint_id, hold_id, event_id) WHERE status = 'pending';
