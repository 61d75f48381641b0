-- Client keys: the credentials booking frontends send on the hold routes. A key has 256 random bits, so its
-- sha256 is all that is stored (a slow password hash would buy nothing); the key is shown once, at creation.
CREATE TABLE client_keys (
    id         text        PRIMARY KEY,
    name       text        NOT NULL,
    key_sha256 bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT client_keys_key_sha256_key UNIQUE (key_sha256)
);

-- The client key a hold belongs to: only that key (and the ops token, for reading) may see or change it.
-- '' for holds made while no client key existed (the gateway was open).
ALTER TABLE holds ADD COLUMN client_key_id text NOT NULL DEFAULT '';

-- Idempotency keys are scoped to the client key and the holder: one frontend cannot replay, or poison,
-- another's keys.
ALTER TABLE idempotency_keys ADD COLUMN client_key_id text NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (client_key_id, holder, key);
