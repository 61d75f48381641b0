-- Inventory: an event's known seats (some blocked), its general-admission pools and its buyer limits; holds
-- that take pool quantities or span several events.
--
-- Pools are never oversold because a claim takes units only under the pool row's lock, and the row's check
-- constraint refuses more held + confirmed units than its capacity whatever the statement. Locks are taken in
-- one order everywhere: holds, then hold_slots, then inventory_pools (by event, pool), then hold_pools.

CREATE TABLE event_inventories (
    event_id        text        PRIMARY KEY,
    per_holder      integer,                -- live units (held or confirmed) a holder may have in the event
    per_hold        integer,                -- units of the event one hold may take
    seats_total     integer     NOT NULL,
    redis_sync_due  boolean     NOT NULL DEFAULT false,  -- changed: Redis must synchronize the event again
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT event_inventories_per_holder_check CHECK (per_holder >= 1),
    CONSTRAINT event_inventories_per_hold_check CHECK (per_hold >= 1)
);

CREATE INDEX event_inventories_redis_sync_due_idx ON event_inventories (event_id) WHERE redis_sync_due;

CREATE TABLE inventory_seats (
    event_id       text        NOT NULL REFERENCES event_inventories (event_id) ON DELETE CASCADE,
    seat_id        text        NOT NULL,
    blocked_reason text,                    -- null: sellable
    blocked_at     timestamptz,
    CONSTRAINT inventory_seats_pkey PRIMARY KEY (event_id, seat_id)
);

CREATE INDEX inventory_seats_blocked_idx ON inventory_seats (event_id, seat_id) WHERE blocked_reason IS NOT NULL;

CREATE TABLE inventory_pools (
    event_id        text     NOT NULL REFERENCES event_inventories (event_id) ON DELETE CASCADE,
    pool_id         text     NOT NULL,
    capacity        integer  NOT NULL,
    position        smallint NOT NULL,      -- the order the inventory lists it in
    -- Units of the pool's `held` hold_pools rows (a lapsed one counts until a claim or the sweeper marks it
    -- expired, under this row's lock) and of its confirmed ones.
    held_units      integer  NOT NULL DEFAULT 0,
    confirmed_units integer  NOT NULL DEFAULT 0,
    CONSTRAINT inventory_pools_pkey PRIMARY KEY (event_id, pool_id),
    CONSTRAINT inventory_pools_capacity_check CHECK (capacity >= 0),
    CONSTRAINT inventory_pools_not_oversold
        CHECK (held_units >= 0 AND confirmed_units >= 0 AND held_units + confirmed_units <= capacity)
);

CREATE TABLE hold_pools (
    hold_id    text        NOT NULL,
    event_id   text        NOT NULL,
    pool_id    text        NOT NULL,
    quantity   integer     NOT NULL,
    status     text        NOT NULL,        -- mirrors holds.status; `expired` once its units went back
    expires_at timestamptz NOT NULL,        -- the hold's
    CONSTRAINT hold_pools_pkey PRIMARY KEY (hold_id, event_id, pool_id),
    CONSTRAINT hold_pools_hold_id_fkey FOREIGN KEY (hold_id) REFERENCES holds (id) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT hold_pools_quantity_check CHECK (quantity >= 1),
    CONSTRAINT hold_pools_status_check CHECK (status IN ('held', 'confirmed', 'cancelled', 'expired'))
);

-- A pool's live units: the lapsed ones a claim gives back, the next release, the rebuild of Redis's counters.
CREATE INDEX hold_pools_live_idx ON hold_pools (event_id, pool_id, expires_at)
    WHERE status IN ('held', 'confirmed');

-- A hold's items, in canonical order (by event, seats before pools), as the API shows them. Null for a hold of
-- one event's seats made before pools existed: its items are (event_id, slots). event_id is null, and slots
-- empty, for a hold that spans several events.
ALTER TABLE holds ADD COLUMN items jsonb;
ALTER TABLE holds ADD COLUMN seat_count integer;  -- seats over all its events; null: cardinality(slots)
ALTER TABLE holds ALTER COLUMN event_id DROP NOT NULL;
ALTER TABLE holds_archive ADD COLUMN items jsonb;
ALTER TABLE holds_archive ADD COLUMN seat_count integer;
ALTER TABLE holds_archive ALTER COLUMN event_id DROP NOT NULL;

-- A holder's live holds, for the per-holder limit (a holder is one client key's).
CREATE INDEX holds_holder_live_idx ON holds (client_key_id, holder) WHERE status IN ('held', 'confirmed');

-- One seat id may be in two events of one hold.
ALTER TABLE hold_slots DROP CONSTRAINT hold_slots_pkey;
ALTER TABLE hold_slots ADD CONSTRAINT hold_slots_pkey PRIMARY KEY (hold_id, event_id, slot_id);
ALTER TABLE hold_slots_archive DROP CONSTRAINT hold_slots_archive_pkey;
ALTER TABLE hold_slots_archive ADD CONSTRAINT hold_slots_archive_pkey PRIMARY KEY (hold_id, event_id, slot_id);

CREATE TABLE hold_pools_archive (
    LIKE hold_pools,
    CONSTRAINT hold_pools_archive_pkey PRIMARY KEY (hold_id, event_id, pool_id)
);
