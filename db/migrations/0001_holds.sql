-- Holds, the slots they claim, and the idempotency records of hold creation.
-- Postgres is the source of truth: the partial unique index hold_slots_one_active_hold decides every winner.

CREATE TABLE holds (
    id           text        PRIMARY KEY,            -- 128 random bits, base64url
    token        text        NOT NULL,               -- lease owner token in Redis; unique so a lost reply can be resolved
    event_id     text        NOT NULL,
    holder       text        NOT NULL,
    slots        text[]      NOT NULL,               -- sorted
    status       text        NOT NULL DEFAULT 'held',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    confirmed_at timestamptz,
    cancelled_at timestamptz,
    CONSTRAINT holds_token_key UNIQUE (token),
    CONSTRAINT holds_status_check CHECK (status IN ('held', 'confirmed', 'cancelled', 'expired'))
);

-- The sweeper's scan: held rows in expiry order.
CREATE INDEX holds_held_expires_at_idx ON holds (expires_at) WHERE status = 'held';

CREATE TABLE hold_slots (
    hold_id    text        NOT NULL,
    event_id   text        NOT NULL,
    slot_id    text        NOT NULL,
    status     text        NOT NULL,                 -- mirrors holds.status, so the index below can see it
    expires_at timestamptz NOT NULL,                 -- the hold's; a held row past it may be taken over
    CONSTRAINT hold_slots_pkey PRIMARY KEY (hold_id, slot_id),
    -- Deferred: a claim inserts slot rows before it knows whether it got all of them and inserts the hold.
    CONSTRAINT hold_slots_hold_id_fkey FOREIGN KEY (hold_id) REFERENCES holds (id) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT hold_slots_status_check CHECK (status IN ('held', 'confirmed', 'cancelled', 'expired'))
);

-- The final word: at most one active hold per slot. A lapsed `held` row still sits in this index until it is
-- swept or taken over, which the claim does with ON CONFLICT ... DO UPDATE ... WHERE expires_at <= now().
CREATE UNIQUE INDEX hold_slots_one_active_hold ON hold_slots (event_id, slot_id)
    WHERE status IN ('held', 'confirmed');

CREATE TABLE idempotency_keys (
    holder       text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,               -- sha256 of the canonical request
    hold_id      text        NOT NULL REFERENCES holds (id),
    status_code  smallint    NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (holder, key)
);

CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
