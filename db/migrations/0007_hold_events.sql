-- Hold lifecycle: extensions, and the durable feed of every state change of a hold.
--
-- Each statement that changes a hold writes its event in the same transaction (so a rolled-back claim writes
-- none). Events are numbered for the feed only after they commit: a transaction's `entry_id` is drawn when it
-- writes, and transactions do not commit in that order, so a reader that followed `entry_id` could pass an
-- event that commits later with a smaller one. The sequencer (one at a time per database, gateway.hold_events)
-- gives committed events their `id` in order; readers only ever see numbered events, so a cursor never skips
-- one.

ALTER TABLE holds ADD COLUMN extensions integer NOT NULL DEFAULT 0;
ALTER TABLE holds_archive ADD COLUMN extensions integer NOT NULL DEFAULT 0;

CREATE TABLE hold_events (
    entry_id    bigint      GENERATED ALWAYS AS IDENTITY,  -- write order
    id          bigint,                                    -- feed position, in commit order; null until numbered
    type        text        NOT NULL,
    hold_id     text        NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    hold        jsonb       NOT NULL,                      -- the holds row after the change, without its token
    CONSTRAINT hold_events_pkey PRIMARY KEY (entry_id),
    CONSTRAINT hold_events_type_check
        CHECK (type IN ('hold.created', 'hold.extended', 'hold.confirmed', 'hold.cancelled', 'hold.expired'))
);

-- The feed's order; partial, so that writing an event (not yet numbered) costs no entry here.
CREATE UNIQUE INDEX hold_events_id_key ON hold_events (id) WHERE id IS NOT NULL;

-- The sequencer's work: committed events not yet numbered (few at any moment).
CREATE INDEX hold_events_unnumbered_idx ON hold_events (entry_id) WHERE id IS NULL;

-- `hold.expired` exactly once per hold in the feed. The sweeper marking a hold expired and a claim taking over
-- its lapsed seats or pool units both write one, and neither waits for the other (a claim holding seat rows
-- must not wait on another's uncommitted event: two claims taking over seats of one hold would deadlock); the
-- sequencer numbers the first committed and deletes a later copy, found through this index.
CREATE INDEX hold_events_expired_hold_idx ON hold_events (hold_id) WHERE type = 'hold.expired';
