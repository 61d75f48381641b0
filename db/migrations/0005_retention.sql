-- Retention: holds that ended long ago leave the hot tables, so that what claims and reads walk does not grow
-- with history. The sweeper moves them here in batches (or deletes them, GATEWAY_RETENTION_ARCHIVE=false).

-- The same columns as the hot tables (LIKE), and their keys only: an archived slot row holds no seat, so no
-- partial unique index, and an archived hold's token resolves no claim, so no unique token.
CREATE TABLE holds_archive (LIKE holds, CONSTRAINT holds_archive_pkey PRIMARY KEY (id));
CREATE TABLE hold_slots_archive (
    LIKE hold_slots,
    CONSTRAINT hold_slots_archive_pkey PRIMARY KEY (hold_id, slot_id)
);

-- The retention's scan of expired holds, oldest first (cancelled and confirmed holds have theirs, from 0003):
-- without it, every pass would walk all the old holds it keeps (confirmed ones, by default forever).
CREATE INDEX holds_expired_expires_at_idx ON holds (expires_at) WHERE status = 'expired';

-- A hold leaves only once no idempotency record references it: the retention's test, and the foreign key's
-- check on each deleted hold, are probes of this index rather than scans of idempotency_keys.
CREATE INDEX idempotency_keys_hold_id_idx ON idempotency_keys (hold_id);
