-- claim_hold --
-- Claim every slot for a new hold (taking over lapsed holds) and insert the hold only if all were claimed.
-- $1 hold id, $2 token, $3 event id, $4 holder, $5 sorted slots, $6 ttl ms, $7 idempotency key or null,
-- $8 request hash or null, $9 the client key id the hold belongs to (and its idempotency record is scoped
-- to). Run alone for one slot without a key (atomic); otherwise inside a transaction
-- that the caller rolls back unless `created` and, with a key, `idempotency_recorded`.
-- One row, or one per live hold owning a slot the claim did not get (`owner_*`): a lost claim is answered
-- (200 to its own holder's retry, else 409) and taught to Redis without another statement. A claim that lost
-- with a key also reports the key's record (`prior_*`). Both are as the statement's snapshot saw them: a
-- rival that committed after it started is missing there, and the caller asks again.
WITH claimed AS (
    INSERT INTO hold_slots AS hs (hold_id, event_id, slot_id, status, expires_at)
    SELECT $1, $3, requested.slot_id, 'held', now() + $6 * interval '1 millisecond'
    FROM unnest($5::text[]) AS requested (slot_id)
    ORDER BY requested.slot_id  -- one lock order for every claim: opposite orders deadlock
    ON CONFLICT (event_id, slot_id) WHERE status IN ('held', 'confirmed')
    DO UPDATE SET hold_id = excluded.hold_id, status = 'held', expires_at = excluded.expires_at
    WHERE hs.status = 'held' AND hs.expires_at <= now()
    RETURNING hs.slot_id
), new_hold AS (
    INSERT INTO holds (id, token, event_id, holder, slots, status, expires_at, client_key_id)
    SELECT $1, $2, $3, $4, $5, 'held', now() + $6 * interval '1 millisecond', $9
    WHERE (SELECT count(*) FROM claimed) = cardinality($5::text[])
    ON CONFLICT (token) DO NOTHING
    RETURNING id, created_at, expires_at
), idempotency AS (
    INSERT INTO idempotency_keys (client_key_id, holder, key, request_hash, hold_id, status_code)
    SELECT $9, $4, $7, $8, new_hold.id, 201 FROM new_hold WHERE $7::text IS NOT NULL
    ON CONFLICT (client_key_id, holder, key) DO NOTHING
    RETURNING 1
), prior_record AS (
    SELECT request_hash, hold_id, status_code
    FROM idempotency_keys
    WHERE $7::text IS NOT NULL AND client_key_id = $9 AND holder = $4 AND key = $7
      AND NOT EXISTS (SELECT 1 FROM new_hold)
), owners AS (
    -- Our own rows are not in the snapshot, and a lapsed row the claim took over shows its old version.
    SELECT hs.slot_id, h.id, h.token, h.event_id, h.holder, h.slots, h.status,
           h.created_at, h.expires_at, h.confirmed_at, h.cancelled_at, h.client_key_id
    FROM hold_slots AS hs
    JOIN holds AS h ON h.id = hs.hold_id
    WHERE NOT EXISTS (SELECT 1 FROM new_hold)
      AND hs.event_id = $3
      AND hs.slot_id = ANY($5::text[])
      AND hs.status IN ('held', 'confirmed')
      AND NOT (hs.status = 'held' AND hs.expires_at <= now())
)
SELECT
    new_hold.id IS NOT NULL AS created,
    EXISTS (SELECT 1 FROM idempotency) AS idempotency_recorded,
    coalesce((SELECT array_agg(slot_id) FROM claimed), '{}') AS claimed_slots,
    new_hold.created_at,
    new_hold.expires_at,
    now() AS db_now,
    prior.request_hash AS prior_request_hash, prior.hold_id AS prior_hold_id,
    prior.status_code AS prior_status_code,
    o.slot_id AS owner_slot_id, o.id AS owner_id, o.token AS owner_token, o.event_id AS owner_event_id,
    o.holder AS owner_holder, o.slots AS owner_slots, o.status AS owner_status,
    o.created_at AS owner_created_at, o.expires_at AS owner_expires_at,
    o.confirmed_at AS owner_confirmed_at, o.cancelled_at AS owner_cancelled_at,
    o.client_key_id AS owner_client_key_id
FROM (SELECT) AS one
LEFT JOIN new_hold ON true
LEFT JOIN prior_record AS prior ON true
LEFT JOIN owners AS o ON true;

-- hold_by_token --
-- The hold with this lease token, if any: after a lost reply to a claim, finding it means the claim won.
-- $1 token.
SELECT id, token, event_id, holder, slots, status, created_at, expires_at, confirmed_at, cancelled_at,
       client_key_id, now() AS db_now
FROM holds
WHERE token = $1;

-- slot_owners --
-- The live holds that own any of the given slots of an event. $1 event id, $2 slot ids.
SELECT hs.slot_id, h.id, h.token, h.event_id, h.holder, h.slots, h.status,
       h.created_at, h.expires_at, h.confirmed_at, h.cancelled_at, h.client_key_id, now() AS db_now
FROM hold_slots AS hs
JOIN holds AS h ON h.id = hs.hold_id
WHERE hs.event_id = $1
  AND hs.slot_id = ANY($2::text[])
  AND hs.status IN ('held', 'confirmed')
  AND NOT (hs.status = 'held' AND hs.expires_at <= now());

-- get_hold --
-- One hold by id. $1 hold id.
SELECT id, token, event_id, holder, slots, status, created_at, expires_at, confirmed_at, cancelled_at,
       client_key_id, now() AS db_now
FROM holds
WHERE id = $1;

-- get_idempotency_record --
-- The recorded outcome of an Idempotency-Key. $1 client key id, $2 holder, $3 key.
SELECT request_hash, hold_id, status_code
FROM idempotency_keys
WHERE client_key_id = $1 AND holder = $2 AND key = $3;

-- confirm_hold --
-- Confirm a live held hold of this holder, in one statement. Locks the hold row, then its slot rows in
-- slot order (the sweeper's order), and confirms only if the hold still owns every slot: a claim may have
-- taken over a slot the instant the hold lapsed, so "held and not past expires_at" alone is not enough.
-- Liveness is judged by the clock once every lock is held (clock_timestamp(), not now(): now() is when the
-- statement started, and a confirm that waited for a lock past expires_at must not confirm a lapsed hold).
-- $1 hold id, $2 holder, $3 the caller's client key id (a hold of another client key reads as unknown).
-- Returns no row for an unknown id; `changed` says whether this call confirmed it.
WITH target AS (
    SELECT id, token, event_id, holder, slots, status, created_at, expires_at, confirmed_at, cancelled_at,
           client_key_id
    FROM holds
    WHERE id = $1 AND client_key_id = $3
    FOR UPDATE
), owned AS (
    -- Every slot row of the hold, by the primary key's prefix; the status is tested on the locked rows.
    -- (A status test in this scan lets a planner without statistics, as in a new database, read the whole
    -- of hold_slots_one_active_hold for each confirm.)
    SELECT hs.hold_id, hs.slot_id, hs.status
    FROM hold_slots AS hs
    WHERE hs.hold_id = (SELECT id FROM target)
    ORDER BY hs.event_id, hs.slot_id
    FOR UPDATE
), locked AS (
    -- An aggregate over the locked slot rows: its clock reading comes after the last lock was granted.
    SELECT count(*) FILTER (WHERE status = 'held') AS held_slots, clock_timestamp() AS at
    FROM owned
), allowed AS (
    SELECT t.id FROM target AS t, locked
    WHERE t.holder = $2 AND t.status = 'held' AND t.expires_at > locked.at
      AND cardinality(t.slots) = locked.held_slots
), confirmed_slots AS (
    UPDATE hold_slots AS hs SET status = 'confirmed'
    FROM owned
    WHERE hs.hold_id = owned.hold_id AND hs.slot_id = owned.slot_id
      AND owned.status = 'held' AND owned.hold_id IN (SELECT id FROM allowed)
), confirmed AS (
    UPDATE holds SET status = 'confirmed', confirmed_at = (SELECT at FROM locked)
    WHERE id IN (SELECT id FROM allowed)
    RETURNING id, status, confirmed_at
)
-- `target` is the row as locked (its latest version); the statement's snapshot may be older.
SELECT t.id, t.token, t.event_id, t.holder, t.slots,
       coalesce(confirmed.status, t.status) AS status,
       t.created_at, t.expires_at,
       coalesce(confirmed.confirmed_at, t.confirmed_at) AS confirmed_at,
       t.cancelled_at, t.client_key_id, (SELECT at FROM locked) AS db_now,
       confirmed.id IS NOT NULL AS changed
FROM target AS t
LEFT JOIN confirmed ON confirmed.id = t.id;

-- cancel_hold --
-- Cancel a confirmed or live held hold of this holder and release its slots, in one statement.
-- Locks the hold row, then its slot rows in slot order. Liveness is judged once the hold row is locked
-- (clock_timestamp(), as in confirm_hold). $1 hold id, $2 holder, $3 whether its lease must be dropped in
-- Redis (the release outbox; false without Redis), $4 the caller's client key id (a hold of another client
-- key reads as unknown). Returns no row for an unknown id; `changed` says whether
-- this call cancelled it.
WITH target AS (
    SELECT id, token, event_id, holder, slots, status, created_at, expires_at, confirmed_at, cancelled_at,
           client_key_id
    FROM holds
    WHERE id = $1 AND client_key_id = $4
    FOR UPDATE
), judged AS (
    -- The clock read after target's row lock was granted.
    SELECT t.*, clock_timestamp() AS at FROM target AS t
), allowed AS (
    SELECT id, at FROM judged
    WHERE holder = $2 AND (status = 'confirmed' OR (status = 'held' AND expires_at > at))
), owned AS (
    -- By the primary key's prefix, status tested on the locked rows, as in confirm_hold.
    SELECT hs.hold_id, hs.slot_id, hs.status
    FROM hold_slots AS hs
    WHERE hs.hold_id IN (SELECT id FROM allowed)
    ORDER BY hs.event_id, hs.slot_id
    FOR UPDATE
), released AS (
    UPDATE hold_slots AS hs SET status = 'cancelled'
    FROM owned
    WHERE hs.hold_id = owned.hold_id AND hs.slot_id = owned.slot_id AND owned.status IN ('held', 'confirmed')
), cancelled AS (
    UPDATE holds AS h SET status = 'cancelled', cancelled_at = allowed.at, lease_release_due = $3
    FROM allowed
    WHERE h.id = allowed.id
    RETURNING h.id, h.status, h.cancelled_at
)
SELECT j.id, j.token, j.event_id, j.holder, j.slots,
       coalesce(cancelled.status, j.status) AS status,
       j.created_at, j.expires_at, j.confirmed_at,
       coalesce(cancelled.cancelled_at, j.cancelled_at) AS cancelled_at,
       j.client_key_id, j.at AS db_now,
       cancelled.id IS NOT NULL AS changed
FROM judged AS j
LEFT JOIN cancelled ON cancelled.id = j.id;

-- slot_state --
-- The live hold on one slot, if any. $1 event id, $2 slot id.
SELECT hs.hold_id, hs.status, hs.expires_at, now() AS db_now
FROM hold_slots AS hs
WHERE hs.event_id = $1
  AND hs.slot_id = $2
  AND hs.status IN ('held', 'confirmed')
  AND NOT (hs.status = 'held' AND hs.expires_at <= now());

-- expire_holds --
-- Mark up to $1 lapsed held holds and their slot rows as expired. Locks hold rows (skipping any a confirm
-- or cancel holds), then their slot rows in slot order, like confirm and cancel. Returns the lifetime in
-- seconds of each hold it expired.
WITH due AS (
    SELECT id
    FROM holds
    WHERE status = 'held' AND expires_at <= now()
    ORDER BY expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), owned AS (
    -- By the primary key's prefix, status tested on the locked rows, as in confirm_hold.
    SELECT hs.hold_id, hs.slot_id, hs.status
    FROM hold_slots AS hs
    WHERE hs.hold_id IN (SELECT id FROM due)
    ORDER BY hs.event_id, hs.slot_id
    FOR UPDATE
), expired_slots AS (
    UPDATE hold_slots AS hs SET status = 'expired'
    FROM owned
    WHERE hs.hold_id = owned.hold_id AND hs.slot_id = owned.slot_id AND owned.status = 'held'
), expired AS (
    UPDATE holds SET status = 'expired'
    WHERE id IN (SELECT id FROM due)
    RETURNING extract(epoch FROM expires_at - created_at)::float8 AS lifetime_s
)
SELECT coalesce(array_agg(lifetime_s), '{}') AS lifetimes_s FROM expired;

-- purge_idempotency_keys --
-- Delete up to $2 idempotency records older than $1 seconds, and retire the lease token of each one's hold in
-- the same statement. The token is derived from (holder, key, request), so a key used again once its record
-- is gone makes a new hold with the same token; the old hold must not keep it (holds_token_key) or that
-- claim could never create its hold. Safe because no lease still carries the old token: the settings keep
-- records longer than any lease lives (an adopted lease of a hold still confirmed, 30 s at most, aside).
-- Rows are matched by ctid, whatever the record's key is. Returns the count.
WITH old AS (
    SELECT ctid
    FROM idempotency_keys
    WHERE created_at < now() - $1 * interval '1 second'
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), purged AS (
    DELETE FROM idempotency_keys AS k
    WHERE k.ctid = ANY (ARRAY(SELECT ctid FROM old))
    RETURNING k.hold_id
), retired AS (
    -- The hold's id makes the retired token unique; no live token contains ':'.
    UPDATE holds AS h SET token = h.token || ':retired:' || h.id
    WHERE h.id IN (SELECT hold_id FROM purged)
)
SELECT count(*) AS purged FROM purged;

-- retire_holds --
-- Move up to $3 holds that ended long ago out of the hot tables, with their slot rows, in one statement:
-- cancelled and expired holds that ended more than $1 seconds ago, and holds confirmed more than $2 seconds
-- ago ($2 0: never). Into holds_archive and hold_slots_archive if $4, else deleted. A hold whose idempotency
-- record is still kept stays (the record references it; the purge retires its token first). Hold rows that
-- another statement has locked are skipped, and slot rows are locked in slot order (as in expire_holds).
-- Claims never wait on it for a cancelled or expired hold (its slot rows are not in
-- hold_slots_one_active_hold); a claim on a slot of a confirmed hold it moves waits for this statement.
-- Returns the rows moved from each table.
WITH candidates AS (
    -- Oldest first, by each kind's partial index.
    (SELECT h.id FROM holds AS h
     WHERE h.status = 'cancelled' AND h.cancelled_at < now() - $1 * interval '1 second'
       AND NOT EXISTS (SELECT 1 FROM idempotency_keys AS k WHERE k.hold_id = h.id)
     ORDER BY h.cancelled_at
     LIMIT $3)
    UNION ALL
    (SELECT h.id FROM holds AS h
     WHERE h.status = 'expired' AND h.expires_at < now() - $1 * interval '1 second'
       AND NOT EXISTS (SELECT 1 FROM idempotency_keys AS k WHERE k.hold_id = h.id)
     ORDER BY h.expires_at
     LIMIT $3)
    UNION ALL
    (SELECT h.id FROM holds AS h
     WHERE $2 > 0 AND h.status = 'confirmed' AND h.confirmed_at < now() - $2 * interval '1 second'
       AND NOT EXISTS (SELECT 1 FROM idempotency_keys AS k WHERE k.hold_id = h.id)
     ORDER BY h.confirmed_at
     LIMIT $3)
), due AS (
    SELECT h.id
    FROM holds AS h
    WHERE h.id IN (SELECT id FROM candidates)
      -- Tested again on the locked row: a confirmed hold may have been cancelled meanwhile. (A CASE, so
      -- that the planner finds these rows by id, not again through every due row of the three indexes.)
      AND CASE h.status
          WHEN 'cancelled' THEN h.cancelled_at < now() - $1 * interval '1 second'
          WHEN 'expired' THEN h.expires_at < now() - $1 * interval '1 second'
          WHEN 'confirmed' THEN $2 > 0 AND h.confirmed_at < now() - $2 * interval '1 second'
          ELSE false
      END
    LIMIT $3
    FOR UPDATE OF h SKIP LOCKED
), owned AS (
    -- By the primary key's prefix, as in expire_holds; then deleted by their row addresses.
    SELECT hs.ctid
    FROM hold_slots AS hs
    WHERE hs.hold_id IN (SELECT id FROM due)
    ORDER BY hs.event_id, hs.slot_id
    FOR UPDATE
), slots_moved AS (
    DELETE FROM hold_slots AS hs
    WHERE hs.ctid = ANY (ARRAY(SELECT ctid FROM owned))
    RETURNING hs.*
), slots_archived AS (
    INSERT INTO hold_slots_archive SELECT * FROM slots_moved WHERE $4::boolean
), holds_moved AS (
    DELETE FROM holds AS h
    WHERE h.id = ANY (ARRAY(SELECT id FROM due))
    RETURNING h.*
), holds_archived AS (
    INSERT INTO holds_archive SELECT * FROM holds_moved WHERE $4::boolean
)
SELECT (SELECT count(*) FROM holds_moved) AS holds, (SELECT count(*) FROM slots_moved) AS hold_slots;

-- list_holds --
-- Holds in expiry order after a keyset cursor, filtered. $1 event id, $2 holder, $3 status (as read: a lapsed
-- held hold is 'expired'), $4 expiring within ms (live held holds only), $5 and $6 the cursor's expires_at
-- and id, $7 limit. Every filter may be null.
SELECT id, token, event_id, holder, slots, status, created_at, expires_at, confirmed_at, cancelled_at,
       client_key_id, now() AS db_now
FROM holds
WHERE ($1::text IS NULL OR event_id = $1)
  AND ($2::text IS NULL OR holder = $2)
  AND ($3::text IS NULL
       OR ($3 = 'held' AND status = 'held' AND expires_at > now())
       OR ($3 = 'expired' AND (status = 'expired' OR (status = 'held' AND expires_at <= now())))
       OR ($3 IN ('confirmed', 'cancelled') AND status = $3))
  AND ($4::bigint IS NULL
       OR (status = 'held' AND expires_at > now() AND expires_at <= now() + $4 * interval '1 millisecond'))
  AND ($5::timestamptz IS NULL OR (expires_at, id) > ($5, $6::text))
ORDER BY expires_at, id
LIMIT $7;

-- event_slots --
-- The live slots of event $1 (held and not lapsed, or confirmed) in slot order after cursor $2, through
-- hold_slots_one_active_hold: what it reads grows with the event's live holds, never with its history. A slot
-- with no live hold is free and not listed. $3 state ('held' or 'confirmed'; 'free' lists nothing) or null,
-- $4 limit.
SELECT hs.slot_id, hs.hold_id, hs.status, hs.expires_at, now() AS db_now
FROM hold_slots AS hs
WHERE hs.event_id = $1
  AND hs.status IN ('held', 'confirmed')
  AND NOT (hs.status = 'held' AND hs.expires_at <= now())
  -- '' sorts before every slot id: the cursor stays an index condition when it is null.
  AND hs.slot_id > coalesce($2::text, '')
  AND ($3::text IS NULL OR hs.status = $3)
ORDER BY hs.slot_id
LIMIT $4;

-- hold_stats --
-- Counts for operations, over all events or event $1. Held holds are read through their partial index, and
-- the last minute through the expiry index; confirmed holds are counted by their rows.
WITH held AS (
    SELECT expires_at
    FROM holds
    WHERE status = 'held' AND ($1::text IS NULL OR event_id = $1)
)
SELECT
    (SELECT count(*) FROM held WHERE expires_at > now()) AS active_holds,
    (SELECT count(*) FROM held
     WHERE expires_at > now() AND expires_at <= now() + interval '10 seconds') AS expiring_within_10s,
    (SELECT count(*) FROM held
     WHERE expires_at > now() AND expires_at <= now() + interval '60 seconds') AS expiring_within_60s,
    (SELECT min(expires_at) FROM held WHERE expires_at <= now()) AS oldest_lapsed_expires_at,
    (SELECT count(*) FROM holds
     WHERE expires_at > now() - interval '1 minute' AND expires_at <= now()
       AND status IN ('held', 'expired') AND ($1::text IS NULL OR event_id = $1)) AS expired_last_minute,
    (SELECT count(*) FROM holds
     WHERE status = 'confirmed' AND ($1::text IS NULL OR event_id = $1)) AS confirmed_holds,
    (SELECT count(*) FROM hold_slots
     WHERE status = 'confirmed' AND ($1::text IS NULL OR event_id = $1)) AS confirmed_slots,
    now() AS db_now;

-- live_slot_tokens --
-- Up to $2 live slots (held and unexpired, or confirmed), over all events or event $1, with their hold's
-- lease token: what Redis should hold. For the Redis/Postgres agreement check.
SELECT hs.event_id, hs.slot_id, h.token
FROM hold_slots AS hs
JOIN holds AS h ON h.id = hs.hold_id
WHERE hs.status IN ('held', 'confirmed')
  AND NOT (hs.status = 'held' AND hs.expires_at <= now())
  AND ($1::text IS NULL OR hs.event_id = $1)
LIMIT $2;

-- take_due_lease_releases --
-- Up to $1 cancelled holds whose leases must still be dropped in Redis, flag cleared; run in a transaction
-- that commits only once Redis has dropped them (else the flags stay for the next pass). Rows another worker
-- is releasing are skipped.
WITH due AS (
    SELECT id FROM holds WHERE lease_release_due LIMIT $1 FOR UPDATE SKIP LOCKED
)
UPDATE holds AS h SET lease_release_due = false
FROM due
WHERE h.id = due.id
RETURNING h.event_id, h.slots, h.token, h.holder;

-- lease_events --
-- The events whose leases Redis may hold: with a live held hold, or a hold confirmed or cancelled in the last
-- $1 ms (a lease lives no longer). The bulk rebuild after a restart or flush synchronizes these.
SELECT event_id FROM holds WHERE status = 'held' AND expires_at > now()
UNION
SELECT event_id FROM holds WHERE status = 'confirmed' AND confirmed_at > now() - $1 * interval '1 millisecond'
UNION
SELECT event_id FROM holds WHERE status = 'cancelled' AND cancelled_at > now() - $1 * interval '1 millisecond';

-- recently_cancelled --
-- Holds of events $1 cancelled in the last $2 ms, whose leases a Redis restarted from an old snapshot may
-- still hold. Keyset pages: $3, $4 the last (cancelled_at, id) seen or nulls; $5 page size.
SELECT cancelled_at, id, event_id, slots, token, holder
FROM holds
WHERE event_id = ANY($1::text[])
  AND status = 'cancelled' AND cancelled_at > now() - $2 * interval '1 millisecond'
  AND ($3::timestamptz IS NULL OR (cancelled_at, id) > ($3, $4::text))
ORDER BY cancelled_at, id
LIMIT $5;

-- live_leases --
-- The leases Redis should hold for events $1: their live held holds (for their remaining life) and their
-- holds confirmed in the last $2 ms (a confirmed lease lives that long). At most $3 rows of each;
-- remaining_ms is null for confirmed holds.
(SELECT event_id, slots, token, holder,
        floor(extract(epoch FROM expires_at - now()) * 1000)::bigint AS remaining_ms
 FROM holds
 WHERE event_id = ANY($1::text[]) AND status = 'held' AND expires_at > now()
 ORDER BY expires_at DESC
 LIMIT $3)
UNION ALL
(SELECT event_id, slots, token, holder, NULL::bigint
 FROM holds
 WHERE event_id = ANY($1::text[])
   AND status = 'confirmed' AND confirmed_at > now() - $2 * interval '1 millisecond'
 ORDER BY confirmed_at DESC
 LIMIT $3);

-- client_key_digests --
-- Every live client key's id and sha256: each worker keeps them in memory to check a request's key.
SELECT id, key_sha256 FROM client_keys;

-- insert_client_key --
-- A new client key. $1 id, $2 name, $3 sha256 of the key.
INSERT INTO client_keys (id, name, key_sha256) VALUES ($1, $2, $3)
RETURNING id, name, created_at;

-- list_client_keys --
-- The client keys, oldest first (names and ids only: the keys themselves are not stored).
SELECT id, name, created_at FROM client_keys ORDER BY created_at, id;

-- delete_client_key --
-- Revoke a client key. $1 id. Returns its id if it existed.
DELETE FROM client_keys WHERE id = $1 RETURNING id;

-- ping --
-- A round trip to the database.
SELECT 1;
