-- claim_hold --
-- Claim every seat for a new hold (taking over lapsed holds) and insert the hold only if all were claimed.
-- $1 hold id, $2 token, $3 the hold's event id (null: it spans several), $4 holder, $5 its slots column (the
-- seats of its one event), $6 ttl ms, $7 idempotency key or null, $8 request hash or null, $9 the client key id
-- the hold belongs to (and its idempotency record is scoped to), $10 and $11 the (event id, seat id) pairs to
-- claim, sorted (none for a pool-only hold), $12 its items (null: the items are ($3, $5)), $13 its seat count
-- (null: cardinality($5)), $14 true to claim only events without an inventory (`inventory_defined` then says
-- the claim must take the inventory path instead; it claimed nothing).
-- A created hold writes `hold.created`, after `hold.expired` of each lapsed hold whose seats it took over (the
-- sweeper may write that too: the sequencer numbers only the first committed).
-- Run alone for one seat without a key (atomic); otherwise inside a transaction that the caller rolls back
-- unless `created` and, with a key, `idempotency_recorded` (and, on the inventory path, the pools were taken).
-- One row, or one per live hold owning a seat the claim did not get (`owner_*`): a lost claim is answered
-- (200 to its own holder's retry, else 409) and taught to Redis without another statement. A claim that lost
-- with a key also reports the key's record (`prior_*`). Both are as the statement's snapshot saw them: a
-- rival that committed after it started is missing there, and the caller asks again.
WITH requested AS (
    SELECT r.event_id, r.slot_id FROM unnest($10::text[], $11::text[]) AS r (event_id, slot_id)
), guard AS (
    -- A probe of event_inventories' key per requested seat (LATERAL, LIMIT: never a scan of every event's).
    SELECT $14::boolean AND EXISTS (
        SELECT 1 FROM requested
        CROSS JOIN LATERAL (
            SELECT 1 FROM event_inventories AS i WHERE i.event_id = requested.event_id LIMIT 1
        ) AS defined
    ) AS inventory_defined
), claimed AS (
    INSERT INTO hold_slots AS hs (hold_id, event_id, slot_id, status, expires_at)
    SELECT $1, requested.event_id, requested.slot_id, 'held', now() + $6 * interval '1 millisecond'
    FROM requested
    WHERE NOT (SELECT inventory_defined FROM guard)
    ORDER BY requested.event_id, requested.slot_id  -- one lock order for every claim: opposite orders deadlock
    ON CONFLICT (event_id, slot_id) WHERE status IN ('held', 'confirmed')
    DO UPDATE SET hold_id = excluded.hold_id, status = 'held', expires_at = excluded.expires_at
    WHERE hs.status = 'held' AND hs.expires_at <= now()
    RETURNING hs.event_id, hs.slot_id
), new_hold AS (
    INSERT INTO holds (id, token, event_id, holder, slots, status, expires_at, client_key_id, items, seat_count)
    SELECT $1, $2, $3, $4, $5, 'held', now() + $6 * interval '1 millisecond', $9, $12, $13
    WHERE (SELECT count(*) FROM claimed) = (SELECT count(*) FROM requested)
      AND NOT (SELECT inventory_defined FROM guard)
    ON CONFLICT (token) DO NOTHING
    RETURNING *
), lapsed_owners AS (
    -- The holds whose lapsed seat rows `claimed` took over, as the snapshot saw each seat's live row: a row the
    -- claim could take over had lapsed by now(), and a lapsed hold cannot be extended, confirmed or cancelled,
    -- so no other hold can have been on it since. One probe per seat, as in `owners`.
    SELECT DISTINCT old.hold_id
    FROM claimed
    CROSS JOIN LATERAL (
        SELECT live.hold_id FROM hold_slots AS live
        WHERE live.event_id = claimed.event_id AND live.slot_id = claimed.slot_id
          AND live.status IN ('held', 'confirmed') AND live.status = 'held' AND live.expires_at <= now()
        LIMIT 1
    ) AS old
    WHERE EXISTS (SELECT 1 FROM new_hold)
), events AS (
    -- One statement, so that the entries are drawn in this order.
    INSERT INTO hold_events (type, hold_id, occurred_at, hold)
    SELECT e.type, e.hold_id, e.occurred_at, e.hold
    FROM (
        SELECT 1 AS rank, 'hold.expired' AS type, h.id AS hold_id, clock_timestamp() AS occurred_at,
               jsonb_set(to_jsonb(h) - 'token', '{status}', '"expired"') AS hold
        FROM holds AS h WHERE h.id IN (SELECT hold_id FROM lapsed_owners)
        UNION ALL
        SELECT 2, 'hold.created', n.id, n.created_at, to_jsonb(n) - 'token' FROM new_hold AS n
    ) AS e
    ORDER BY e.rank, e.hold_id
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
    -- LATERAL: one probe of hold_slots_one_active_hold per requested seat, never a scan of the event's live
    -- rows (a join lets the planner hash them all).
    SELECT hs.event_id AS seat_event_id, hs.slot_id, h.id, h.token, h.event_id, h.holder, h.slots, h.status,
           h.created_at, h.expires_at, h.confirmed_at, h.cancelled_at, h.client_key_id, h.items, h.seat_count,
           h.extensions
    FROM requested
    CROSS JOIN LATERAL (
        SELECT live.event_id, live.slot_id, live.hold_id
        FROM hold_slots AS live
        WHERE live.event_id = requested.event_id AND live.slot_id = requested.slot_id
          AND live.status IN ('held', 'confirmed')
          AND NOT (live.status = 'held' AND live.expires_at <= now())
        LIMIT 1  -- one live row per seat at most; and a LIMIT keeps the planner from flattening it to a join
    ) AS hs
    JOIN holds AS h ON h.id = hs.hold_id
    WHERE NOT EXISTS (SELECT 1 FROM new_hold)
)
SELECT
    new_hold.id IS NOT NULL AS created,
    (SELECT inventory_defined FROM guard) AS inventory_defined,
    EXISTS (SELECT 1 FROM idempotency) AS idempotency_recorded,
    coalesce((SELECT array_agg(event_id) FROM claimed), '{}') AS claimed_events,
    coalesce((SELECT array_agg(slot_id) FROM claimed), '{}') AS claimed_slots,
    new_hold.created_at,
    new_hold.expires_at,
    now() AS db_now,
    prior.request_hash AS prior_request_hash, prior.hold_id AS prior_hold_id,
    prior.status_code AS prior_status_code,
    o.seat_event_id AS owner_seat_event_id,
    o.slot_id AS owner_slot_id, o.id AS owner_id, o.token AS owner_token, o.event_id AS owner_event_id,
    o.holder AS owner_holder, o.slots AS owner_slots, o.status AS owner_status,
    o.created_at AS owner_created_at, o.expires_at AS owner_expires_at,
    o.confirmed_at AS owner_confirmed_at, o.cancelled_at AS owner_cancelled_at,
    o.client_key_id AS owner_client_key_id, o.items AS owner_items, o.seat_count AS owner_seat_count,
    o.extensions AS owner_extensions
FROM (SELECT) AS one
LEFT JOIN new_hold ON true
LEFT JOIN prior_record AS prior ON true
LEFT JOIN owners AS o ON true;

-- claim_holds_batch --
-- Group commit: claim_hold for a batch of one worker's concurrent one-seat claims without an Idempotency-Key,
-- in one autocommit statement (each member is what claim_hold would run alone, with $14 true). Members take
-- distinct seats (the caller keeps a second claim of a seat for a later batch: ON CONFLICT cannot touch a
-- row twice in one statement) and their seat rows are locked in (event, seat) order, as every claim's, so
-- two workers' batches cannot deadlock each other. All or nothing: an error (a deadlock with another kind
-- of statement, a unique violation) rolls every member back, and the caller runs each alone with its id.
-- $1 hold ids, $2 tokens, $3 event ids, $4 holders, $5 seat ids, $6 ttl ms (as text: asyncpg knows text[]
-- without asking the server, an int[] costs each new connection a type lookup), $7 client key ids, one element
-- per member. One row per member (`member`, its 1-based position), with claim_hold's columns; a member that
-- lost has its seat's live owner as the statement's snapshot saw it (missing if a rival committed after).
WITH requested AS (
    SELECT r.member, r.hold_id, r.token, r.event_id, r.holder, r.slot_id, r.ttl_ms::integer AS ttl_ms,
           r.client_key_id,
           -- A probe of event_inventories' key per member (LIMIT: never a scan of every event's).
           EXISTS (
               SELECT 1 FROM event_inventories AS i WHERE i.event_id = r.event_id LIMIT 1
           ) AS inventory_defined
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
        WITH ORDINALITY AS r (hold_id, token, event_id, holder, slot_id, ttl_ms, client_key_id, member)
), claimed AS (
    INSERT INTO hold_slots AS hs (hold_id, event_id, slot_id, status, expires_at)
    SELECT requested.hold_id, requested.event_id, requested.slot_id, 'held',
           now() + requested.ttl_ms * interval '1 millisecond'
    FROM requested
    WHERE NOT requested.inventory_defined
    ORDER BY requested.event_id, requested.slot_id  -- one lock order for every claim: opposite orders deadlock
    ON CONFLICT (event_id, slot_id) WHERE status IN ('held', 'confirmed')
    DO UPDATE SET hold_id = excluded.hold_id, status = 'held', expires_at = excluded.expires_at
    WHERE hs.status = 'held' AND hs.expires_at <= now()
    RETURNING hs.hold_id, hs.event_id, hs.slot_id
), new_holds AS (
    INSERT INTO holds (id, token, event_id, holder, slots, status, expires_at, client_key_id, items, seat_count)
    SELECT r.hold_id, r.token, r.event_id, r.holder, ARRAY[r.slot_id], 'held',
           now() + r.ttl_ms * interval '1 millisecond', r.client_key_id, NULL, NULL
    FROM requested AS r
    WHERE r.hold_id IN (SELECT hold_id FROM claimed)
    ON CONFLICT (token) DO NOTHING
    RETURNING *
), lapsed_owners AS (
    -- As in claim_hold: the holds whose lapsed seat rows `claimed` took over, as the snapshot saw them; once
    -- per lapsed hold, however many members took its seats.
    SELECT DISTINCT old.hold_id
    FROM claimed
    CROSS JOIN LATERAL (
        SELECT live.hold_id FROM hold_slots AS live
        WHERE live.event_id = claimed.event_id AND live.slot_id = claimed.slot_id
          AND live.status IN ('held', 'confirmed') AND live.status = 'held' AND live.expires_at <= now()
        LIMIT 1
    ) AS old
    WHERE claimed.hold_id IN (SELECT id FROM new_holds)
), events AS (
    -- One statement, so that every `hold.expired` is drawn before the `hold.created` of the member that
    -- took the seat over.
    INSERT INTO hold_events (type, hold_id, occurred_at, hold)
    SELECT e.type, e.hold_id, e.occurred_at, e.hold
    FROM (
        SELECT 1 AS rank, 'hold.expired' AS type, h.id AS hold_id, clock_timestamp() AS occurred_at,
               jsonb_set(to_jsonb(h) - 'token', '{status}', '"expired"') AS hold
        FROM holds AS h WHERE h.id IN (SELECT hold_id FROM lapsed_owners)
        UNION ALL
        SELECT 2, 'hold.created', n.id, n.created_at, to_jsonb(n) - 'token' FROM new_holds AS n
    ) AS e
    ORDER BY e.rank, e.hold_id
), owners AS (
    -- The live owner of each lost member's seat (one probe of hold_slots_one_active_hold per member).
    SELECT requested.member, hs.event_id AS seat_event_id, hs.slot_id, h.id, h.token, h.event_id, h.holder,
           h.slots, h.status, h.created_at, h.expires_at, h.confirmed_at, h.cancelled_at, h.client_key_id,
           h.items, h.seat_count, h.extensions
    FROM requested
    CROSS JOIN LATERAL (
        SELECT live.event_id, live.slot_id, live.hold_id
        FROM hold_slots AS live
        WHERE live.event_id = requested.event_id AND live.slot_id = requested.slot_id
          AND live.status IN ('held', 'confirmed')
          AND NOT (live.status = 'held' AND live.expires_at <= now())
        LIMIT 1
    ) AS hs
    JOIN holds AS h ON h.id = hs.hold_id
    WHERE requested.hold_id NOT IN (SELECT id FROM new_holds)
)
SELECT
    r.member,
    n.id IS NOT NULL AS created,
    r.inventory_defined,
    false AS idempotency_recorded,
    CASE WHEN c.hold_id IS NULL THEN '{}'::text[] ELSE ARRAY[c.event_id] END AS claimed_events,
    CASE WHEN c.hold_id IS NULL THEN '{}'::text[] ELSE ARRAY[c.slot_id] END AS claimed_slots,
    n.created_at,
    n.expires_at,
    now() AS db_now,
    NULL::text AS prior_request_hash, NULL::text AS prior_hold_id, NULL::integer AS prior_status_code,
    o.seat_event_id AS owner_seat_event_id,
    o.slot_id AS owner_slot_id, o.id AS owner_id, o.token AS owner_token, o.event_id AS owner_event_id,
    o.holder AS owner_holder, o.slots AS owner_slots, o.status AS owner_status,
    o.created_at AS owner_created_at, o.expires_at AS owner_expires_at,
    o.confirmed_at AS owner_confirmed_at, o.cancelled_at AS owner_cancelled_at,
    o.client_key_id AS owner_client_key_id, o.items AS owner_items, o.seat_count AS owner_seat_count,
    o.extensions AS owner_extensions
FROM requested AS r
LEFT JOIN claimed AS c ON c.hold_id = r.hold_id
LEFT JOIN new_holds AS n ON n.id = r.hold_id
LEFT JOIN owners AS o ON o.member = r.member
ORDER BY r.member;

-- lock_inventories --
-- The inventories of events $1, locked against replacement until the claim's transaction ends (FOR KEY SHARE:
-- claims do not wait for each other), in event order; for each with a per-holder limit, the holder's lock on
-- it, so that two claims of one holder ($2 client key id, $3 holder) in one event take turns. Run first in
-- the claim's transaction: the statements after it see what the holder's previous claim committed.
SELECT i.event_id, i.per_holder, i.per_hold,
       CASE WHEN i.per_holder IS NOT NULL THEN (
           SELECT true FROM pg_advisory_xact_lock(hashtextextended(i.event_id || chr(1) || $2 || chr(1) || $3, 0))
       ) END AS holder_locked
FROM event_inventories AS i
WHERE i.event_id = ANY($1::text[])
ORDER BY i.event_id
FOR KEY SHARE;

-- check_inventory --
-- What the inventories of a claim's events say about it, one row per finding: `unknown_seat` and `blocked_seat`
-- (of events with an inventory; seat rows locked against blocking until the claim ends), `unknown_pool`, and
-- `holder_units` (the holder's live units in each event of $5: held and not lapsed, or confirmed). $1, $2 the
-- (event id, seat id) pairs, $3, $4 the (event id, pool id) pairs, $5 events with a per-holder limit, $6 client
-- key id, $7 holder.
WITH seats AS (
    SELECT r.event_id, r.seat_id FROM unnest($1::text[], $2::text[]) AS r (event_id, seat_id)
), known AS (
    -- One probe of the primary key per requested seat (LATERAL), each row locked as it is found, in seat
    -- order: never a scan of an inventory of 100,000 seats.
    SELECT k.event_id, k.seat_id, k.blocked_reason
    FROM (SELECT * FROM seats ORDER BY event_id, seat_id) AS ordered
    CROSS JOIN LATERAL (
        SELECT s.event_id, s.seat_id, s.blocked_reason
        FROM inventory_seats AS s
        WHERE s.event_id = ordered.event_id AND s.seat_id = ordered.seat_id
        LIMIT 1
        FOR KEY SHARE
    ) AS k
), live_holds AS (
    SELECT h.id FROM holds AS h
    WHERE cardinality($5::text[]) > 0 AND h.client_key_id = $6 AND h.holder = $7
      AND h.status IN ('held', 'confirmed')
)
SELECT 'unknown_seat' AS kind, seats.event_id, seats.seat_id AS item_id, NULL::integer AS units
FROM seats
WHERE EXISTS (SELECT 1 FROM event_inventories AS i WHERE i.event_id = seats.event_id)
  AND NOT EXISTS (SELECT 1 FROM known WHERE known.event_id = seats.event_id AND known.seat_id = seats.seat_id)
UNION ALL
SELECT 'blocked_seat', known.event_id, known.seat_id, NULL FROM known WHERE known.blocked_reason IS NOT NULL
UNION ALL
SELECT 'unknown_pool', r.event_id, r.pool_id, NULL
FROM unnest($3::text[], $4::text[]) AS r (event_id, pool_id)
WHERE NOT EXISTS (SELECT 1 FROM inventory_pools AS p WHERE p.event_id = r.event_id AND p.pool_id = r.pool_id)
UNION ALL
SELECT 'holder_units', e.event_id, NULL,
       ((SELECT count(*) FROM hold_slots AS hs
         WHERE hs.hold_id IN (SELECT id FROM live_holds) AND hs.event_id = e.event_id
           AND hs.status IN ('held', 'confirmed') AND NOT (hs.status = 'held' AND hs.expires_at <= now()))
        + (SELECT coalesce(sum(hp.quantity), 0) FROM hold_pools AS hp
           WHERE hp.hold_id IN (SELECT id FROM live_holds) AND hp.event_id = e.event_id
             AND hp.status IN ('held', 'confirmed') AND NOT (hp.status = 'held' AND hp.expires_at <= now()))
       )::integer
FROM unnest($5::text[]) AS e (event_id);

-- claim_pools --
-- Take the quantities of a new hold from its pools, under each pool row's lock (in event, pool order), or
-- report how many units each had left. The pool's lapsed units go back first (their rows marked expired, and
-- their holds' `hold.expired` written): a lapsed hold's units are free at expires_at, sweeper or not. Run in the claim's transaction after claim_hold,
-- which the caller rolls back unless every pool had enough. $1 hold id, $2, $3, $4 the (event id, pool id,
-- quantity) triples, sorted, $5 ttl ms. One row per pool: its units available before this claim, and
-- whether it had enough.
WITH requested AS (
    SELECT r.event_id, r.pool_id, r.quantity
    FROM unnest($2::text[], $3::text[], $4::integer[]) AS r (event_id, pool_id, quantity)
), locked AS (
    -- A locking read returns each row's latest version, whatever the statement's snapshot.
    SELECT p.event_id, p.pool_id, p.capacity, p.held_units, p.confirmed_units
    FROM inventory_pools AS p
    JOIN requested ON requested.event_id = p.event_id AND requested.pool_id = p.pool_id
    ORDER BY p.event_id, p.pool_id
    FOR UPDATE OF p
), lapsed AS (
    UPDATE hold_pools AS hp SET status = 'expired'
    FROM locked
    WHERE hp.event_id = locked.event_id AND hp.pool_id = locked.pool_id
      AND hp.status = 'held' AND hp.expires_at <= now()
    RETURNING hp.hold_id, hp.event_id, hp.pool_id, hp.quantity
), lapsed_events AS (
    -- The holds whose units went back: their `hold.expired` (the sequencer keeps the first committed).
    INSERT INTO hold_events (type, hold_id, hold)
    SELECT 'hold.expired', h.id, jsonb_set(to_jsonb(h) - 'token', '{status}', '"expired"')
    FROM holds AS h WHERE h.id IN (SELECT hold_id FROM lapsed)
    ORDER BY h.id
), lapsed_units AS (
    SELECT event_id, pool_id, sum(quantity)::integer AS units FROM lapsed GROUP BY event_id, pool_id
), judged AS (
    -- The pool rows as locked, less what just lapsed.
    SELECT k.event_id, k.pool_id, r.quantity, k.held_units - coalesce(l.units, 0) AS held_units,
           k.capacity - k.confirmed_units - (k.held_units - coalesce(l.units, 0)) AS available
    FROM locked AS k
    JOIN requested AS r ON r.event_id = k.event_id AND r.pool_id = k.pool_id
    LEFT JOIN lapsed_units AS l ON l.event_id = k.event_id AND l.pool_id = k.pool_id
), taken AS (
    UPDATE inventory_pools AS p
    SET held_units = j.held_units + CASE WHEN j.available >= j.quantity THEN j.quantity ELSE 0 END
    FROM judged AS j
    WHERE p.event_id = j.event_id AND p.pool_id = j.pool_id
), inserted AS (
    INSERT INTO hold_pools (hold_id, event_id, pool_id, quantity, status, expires_at)
    SELECT $1, requested.event_id, requested.pool_id, requested.quantity, 'held',
           now() + $5 * interval '1 millisecond'
    FROM requested
    WHERE (SELECT count(*) FROM judged WHERE available >= quantity) = (SELECT count(*) FROM requested)
)
SELECT r.event_id, r.pool_id, r.quantity, j.available, coalesce(j.available >= r.quantity, false) AS granted
FROM requested AS r
LEFT JOIN judged AS j ON j.event_id = r.event_id AND j.pool_id = r.pool_id
ORDER BY r.event_id, r.pool_id;

-- hold_by_token --
-- The hold with this lease token, if any: after a lost reply to a claim, finding it means the claim won.
-- $1 token.
SELECT id, token, event_id, holder, slots, status, created_at, expires_at, confirmed_at, cancelled_at,
       client_key_id, items, seat_count, extensions, now() AS db_now
FROM holds
WHERE token = $1;

-- slot_owners --
-- The live holds that own any of the given seats. $1, $2 the (event id, seat id) pairs.
SELECT hs.event_id AS seat_event_id, hs.slot_id, h.id, h.token, h.event_id, h.holder, h.slots, h.status,
       h.created_at, h.expires_at, h.confirmed_at, h.cancelled_at, h.client_key_id, h.items, h.seat_count,
       h.extensions, now() AS db_now
FROM unnest($1::text[], $2::text[]) AS requested (event_id, slot_id)
CROSS JOIN LATERAL (  -- one index probe per seat, as in claim_hold
    SELECT live.event_id, live.slot_id, live.hold_id
    FROM hold_slots AS live
    WHERE live.event_id = requested.event_id AND live.slot_id = requested.slot_id
      AND live.status IN ('held', 'confirmed') AND NOT (live.status = 'held' AND live.expires_at <= now())
    LIMIT 1
) AS hs
JOIN holds AS h ON h.id = hs.hold_id;

-- get_hold --
-- One hold by id. $1 hold id.
SELECT id, token, event_id, holder, slots, status, created_at, expires_at, confirmed_at, cancelled_at,
       client_key_id, items, seat_count, extensions, now() AS db_now
FROM holds
WHERE id = $1;

-- get_idempotency_record --
-- The recorded outcome of an Idempotency-Key. $1 client key id, $2 holder, $3 key.
SELECT request_hash, hold_id, status_code
FROM idempotency_keys
WHERE client_key_id = $1 AND holder = $2 AND key = $3;

-- confirm_hold --
-- Confirm a live held hold of this holder, in one statement. Locks the hold row, then its seat rows in seat
-- order (the sweeper's order), then its pools' rows, then its pool rows; confirms only if the hold still owns
-- every seat and its units: a claim may have taken over a seat, or given its units back, the instant the hold
-- lapsed, so "held and not past expires_at" alone is not enough. Liveness is judged by the clock once every
-- lock is held (clock_timestamp(), not now(): now() is when the statement started, and a confirm that waited
-- for a lock past expires_at must not confirm a lapsed hold).
-- $1 hold id, $2 holder, $3 the caller's client key id (a hold of another client key reads as unknown).
-- Returns no row for an unknown id; `changed` says whether this call confirmed it.
WITH target AS (
    SELECT id, token, event_id, holder, slots, status, created_at, expires_at, confirmed_at, cancelled_at,
           client_key_id, items, seat_count, extensions
    FROM holds
    WHERE id = $1 AND client_key_id = $3
    FOR UPDATE
), owned AS (
    -- Every seat row of the hold, by the primary key's prefix; the status is tested on the locked rows.
    -- (A status test in this scan lets a planner without statistics, as in a new database, read the whole
    -- of hold_slots_one_active_hold for each confirm.)
    SELECT hs.hold_id, hs.event_id, hs.slot_id, hs.status
    FROM hold_slots AS hs
    WHERE hs.hold_id = (SELECT id FROM target)
    ORDER BY hs.event_id, hs.slot_id
    FOR UPDATE
), pools AS (
    SELECT p.event_id, p.pool_id
    FROM inventory_pools AS p
    -- After the seat rows (`owned`): every statement locks seats, then pools, then pool rows.
    WHERE (SELECT count(*) FROM owned) >= 0 AND (p.event_id, p.pool_id) IN (
        SELECT hp.event_id, hp.pool_id FROM hold_pools AS hp WHERE hp.hold_id = (SELECT id FROM target)
    )
    ORDER BY p.event_id, p.pool_id
    FOR UPDATE OF p
), owned_units AS (
    SELECT hp.hold_id, hp.event_id, hp.pool_id, hp.quantity, hp.status
    FROM hold_pools AS hp
    WHERE hp.hold_id = (SELECT id FROM target) AND (SELECT count(*) FROM pools) >= 0
    ORDER BY hp.event_id, hp.pool_id
    FOR UPDATE
), locked AS (
    -- Aggregates over the locked rows: the clock reading comes after the last lock was granted.
    SELECT (SELECT count(*) FILTER (WHERE status = 'held') FROM owned) AS held_slots,
           (SELECT count(*) FILTER (WHERE status <> 'held') FROM owned_units) AS units_gone,
           clock_timestamp() AS at
), allowed AS (
    SELECT t.id FROM target AS t, locked
    WHERE t.holder = $2 AND t.status = 'held' AND t.expires_at > locked.at
      AND coalesce(t.seat_count, cardinality(t.slots)) = locked.held_slots AND locked.units_gone = 0
), confirmed_slots AS (
    UPDATE hold_slots AS hs SET status = 'confirmed'
    FROM owned
    WHERE hs.hold_id = owned.hold_id AND hs.event_id = owned.event_id AND hs.slot_id = owned.slot_id
      AND owned.status = 'held' AND owned.hold_id IN (SELECT id FROM allowed)
), confirmed_units AS (
    UPDATE hold_pools AS hp SET status = 'confirmed'
    FROM owned_units AS u
    WHERE hp.hold_id = u.hold_id AND hp.event_id = u.event_id AND hp.pool_id = u.pool_id
      AND u.hold_id IN (SELECT id FROM allowed)
), pool_counts AS (
    UPDATE inventory_pools AS p
    SET held_units = p.held_units - u.quantity, confirmed_units = p.confirmed_units + u.quantity
    FROM owned_units AS u
    WHERE p.event_id = u.event_id AND p.pool_id = u.pool_id AND u.hold_id IN (SELECT id FROM allowed)
), confirmed AS (
    UPDATE holds SET status = 'confirmed', confirmed_at = (SELECT at FROM locked)
    WHERE id IN (SELECT id FROM allowed)
    RETURNING *
), event AS (
    INSERT INTO hold_events (type, hold_id, occurred_at, hold)
    SELECT 'hold.confirmed', c.id, c.confirmed_at, to_jsonb(c) - 'token' FROM confirmed AS c
)
-- `target` is the row as locked (its latest version); the statement's snapshot may be older.
SELECT t.id, t.token, t.event_id, t.holder, t.slots,
       coalesce(confirmed.status, t.status) AS status,
       t.created_at, t.expires_at,
       coalesce(confirmed.confirmed_at, t.confirmed_at) AS confirmed_at,
       t.cancelled_at, t.client_key_id, t.items, t.seat_count, t.extensions,
       (SELECT at FROM locked) AS db_now,
       confirmed.id IS NOT NULL AS changed
FROM target AS t
LEFT JOIN confirmed ON confirmed.id = t.id;

-- cancel_hold --
-- Cancel a confirmed or live held hold of this holder and release its seats and units, in one statement.
-- Locks the hold row, then its seat rows in seat order, then its pools' rows, then its pool rows. Liveness is
-- judged once the hold row is locked (clock_timestamp(), as in confirm_hold). $1 hold id, $2 holder, $3
-- whether its lease must be dropped in Redis (the release outbox; false without Redis), $4 the caller's
-- client key id (a hold of another client key reads as unknown). Returns no row for an unknown id; `changed`
-- says whether this call cancelled it.
WITH target AS (
    SELECT id, token, event_id, holder, slots, status, created_at, expires_at, confirmed_at, cancelled_at,
           client_key_id, items, seat_count, extensions
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
    SELECT hs.hold_id, hs.event_id, hs.slot_id, hs.status
    FROM hold_slots AS hs
    WHERE hs.hold_id IN (SELECT id FROM allowed)
    ORDER BY hs.event_id, hs.slot_id
    FOR UPDATE
), pools AS (
    SELECT p.event_id, p.pool_id
    FROM inventory_pools AS p
    -- After the seat rows (`owned`): every statement locks seats, then pools, then pool rows.
    WHERE (SELECT count(*) FROM owned) >= 0 AND (p.event_id, p.pool_id) IN (
        SELECT hp.event_id, hp.pool_id FROM hold_pools AS hp WHERE hp.hold_id IN (SELECT id FROM allowed)
    )
    ORDER BY p.event_id, p.pool_id
    FOR UPDATE OF p
), owned_units AS (
    SELECT hp.hold_id, hp.event_id, hp.pool_id, hp.quantity, hp.status
    FROM hold_pools AS hp
    WHERE hp.hold_id IN (SELECT id FROM allowed) AND (SELECT count(*) FROM pools) >= 0
    ORDER BY hp.event_id, hp.pool_id
    FOR UPDATE
), released AS (
    UPDATE hold_slots AS hs SET status = 'cancelled'
    FROM owned
    WHERE hs.hold_id = owned.hold_id AND hs.event_id = owned.event_id AND hs.slot_id = owned.slot_id
      AND owned.status IN ('held', 'confirmed')
), released_units AS (
    UPDATE hold_pools AS hp SET status = 'cancelled'
    FROM owned_units AS u
    WHERE hp.hold_id = u.hold_id AND hp.event_id = u.event_id AND hp.pool_id = u.pool_id
      AND u.status IN ('held', 'confirmed')
), pool_counts AS (
    UPDATE inventory_pools AS p
    SET held_units = p.held_units - CASE WHEN u.status = 'held' THEN u.quantity ELSE 0 END,
        confirmed_units = p.confirmed_units - CASE WHEN u.status = 'confirmed' THEN u.quantity ELSE 0 END
    FROM owned_units AS u
    WHERE p.event_id = u.event_id AND p.pool_id = u.pool_id AND u.status IN ('held', 'confirmed')
), cancelled AS (
    UPDATE holds AS h SET status = 'cancelled', cancelled_at = allowed.at, lease_release_due = $3
    FROM allowed
    WHERE h.id = allowed.id
    RETURNING h.*
), event AS (
    INSERT INTO hold_events (type, hold_id, occurred_at, hold)
    SELECT 'hold.cancelled', c.id, c.cancelled_at, to_jsonb(c) - 'token' FROM cancelled AS c
)
SELECT j.id, j.token, j.event_id, j.holder, j.slots,
       coalesce(cancelled.status, j.status) AS status,
       j.created_at, j.expires_at, j.confirmed_at,
       coalesce(cancelled.cancelled_at, j.cancelled_at) AS cancelled_at,
       j.client_key_id, j.items, j.seat_count, j.extensions, j.at AS db_now,
       cancelled.id IS NOT NULL AS changed
FROM judged AS j
LEFT JOIN cancelled ON cancelled.id = j.id;

-- extend_hold --
-- Move a live held hold's expiry to now + $4 ms (earlier or later than it was), in one statement, unless that
-- passes its created_at + $5 ms (the lifetime cap). Locks as confirm_hold does: the hold row, then its seat
-- rows in seat order, then its pools' rows, then its pool rows; and, as confirm_hold, extends only if the hold
-- still owns every seat and its units once every lock is held, judged by the clock read then (a claim may have
-- taken over a seat, or given its units back, the instant the hold lapsed). Sets expires_at on the hold, its
-- live seat rows and its pool rows (claims and the sweeper read theirs), counts the extension, and writes
-- `hold.extended`. $1 hold id, $2 holder, $3 the caller's client key id (a hold of another client key reads
-- as unknown), $4 ttl ms, $5 the longest life of a hold, ms.
-- Returns no row for an unknown id; `changed` says whether this call extended it; if not, `live` says whether
-- the hold was live and its seats' and units' owner (then the cap refused it; `max_expires_at` is the cap).
WITH target AS (
    SELECT id, token, event_id, holder, slots, status, created_at, expires_at, confirmed_at, cancelled_at,
           client_key_id, items, seat_count, extensions
    FROM holds
    WHERE id = $1 AND client_key_id = $3
    FOR UPDATE
), owned AS (
    -- By the primary key's prefix, status tested on the locked rows, as in confirm_hold.
    SELECT hs.hold_id, hs.event_id, hs.slot_id, hs.status
    FROM hold_slots AS hs
    WHERE hs.hold_id = (SELECT id FROM target)
    ORDER BY hs.event_id, hs.slot_id
    FOR UPDATE
), pools AS (
    SELECT p.event_id, p.pool_id
    FROM inventory_pools AS p
    -- After the seat rows (`owned`): every statement locks seats, then pools, then pool rows. A claim gives a
    -- lapsed hold's units back under the pool row's lock, so it and this extension take turns there.
    WHERE (SELECT count(*) FROM owned) >= 0 AND (p.event_id, p.pool_id) IN (
        SELECT hp.event_id, hp.pool_id FROM hold_pools AS hp WHERE hp.hold_id = (SELECT id FROM target)
    )
    ORDER BY p.event_id, p.pool_id
    FOR UPDATE OF p
), owned_units AS (
    SELECT hp.hold_id, hp.event_id, hp.pool_id, hp.status
    FROM hold_pools AS hp
    WHERE hp.hold_id = (SELECT id FROM target) AND (SELECT count(*) FROM pools) >= 0
    ORDER BY hp.event_id, hp.pool_id
    FOR UPDATE
), locked AS (
    -- Aggregates over the locked rows: the clock reading comes after the last lock was granted.
    SELECT (SELECT count(*) FILTER (WHERE status = 'held') FROM owned) AS held_slots,
           (SELECT count(*) FILTER (WHERE status <> 'held') FROM owned_units) AS units_gone,
           clock_timestamp() AS at
), judged AS (
    SELECT t.id, t.holder = $2 AS by_holder,
           t.status = 'held' AND t.expires_at > locked.at
             AND coalesce(t.seat_count, cardinality(t.slots)) = locked.held_slots AND locked.units_gone = 0
             AS live,
           locked.at + $4 * interval '1 millisecond' AS new_expires_at,
           t.created_at + $5 * interval '1 millisecond' AS max_expires_at
    FROM target AS t, locked
), allowed AS (
    SELECT id, new_expires_at FROM judged WHERE by_holder AND live AND new_expires_at <= max_expires_at
), extended_slots AS (
    UPDATE hold_slots AS hs SET expires_at = allowed.new_expires_at
    FROM owned, allowed
    WHERE hs.hold_id = owned.hold_id AND hs.event_id = owned.event_id AND hs.slot_id = owned.slot_id
      AND owned.status = 'held' AND owned.hold_id = allowed.id
), extended_units AS (
    UPDATE hold_pools AS hp SET expires_at = allowed.new_expires_at
    FROM owned_units AS u, allowed
    WHERE hp.hold_id = u.hold_id AND hp.event_id = u.event_id AND hp.pool_id = u.pool_id
      AND u.hold_id = allowed.id
), extended AS (
    UPDATE holds AS h SET expires_at = allowed.new_expires_at, extensions = h.extensions + 1
    FROM allowed
    WHERE h.id = allowed.id
    RETURNING h.*
), event AS (
    INSERT INTO hold_events (type, hold_id, occurred_at, hold)
    SELECT 'hold.extended', e.id, (SELECT at FROM locked), to_jsonb(e) - 'token' FROM extended AS e
)
-- `target` is the row as locked (its latest version); the statement's snapshot may be older.
SELECT t.id, t.token, t.event_id, t.holder, t.slots, t.status, t.created_at,
       coalesce(extended.expires_at, t.expires_at) AS expires_at,
       t.confirmed_at, t.cancelled_at, t.client_key_id, t.items, t.seat_count,
       coalesce(extended.extensions, t.extensions) AS extensions,
       (SELECT at FROM locked) AS db_now,
       extended.id IS NOT NULL AS changed,
       j.live, j.max_expires_at
FROM target AS t
JOIN judged AS j ON j.id = t.id
LEFT JOIN extended ON extended.id = t.id;

-- slot_state --
-- One seat: the live hold on it, if any, and what the event's inventory says of it (whether the event has
-- one, and whether it lists and blocks the seat). Always one row. $1 event id, $2 seat id.
SELECT hs.hold_id, hs.status, hs.expires_at, now() AS db_now,
       i.event_id IS NOT NULL AS has_inventory, s.seat_id IS NOT NULL AS listed,
       s.blocked_reason IS NOT NULL AS blocked
FROM (SELECT) AS one
LEFT JOIN hold_slots AS hs
    ON hs.event_id = $1 AND hs.slot_id = $2
   AND hs.status IN ('held', 'confirmed') AND NOT (hs.status = 'held' AND hs.expires_at <= now())
LEFT JOIN event_inventories AS i ON i.event_id = $1
LEFT JOIN inventory_seats AS s ON s.event_id = $1 AND s.seat_id = $2;

-- expire_holds --
-- Mark up to $1 lapsed held holds and their seat and pool rows as expired, giving their units back. Locks hold
-- rows (skipping any a confirm or cancel holds), then their seat rows in seat order, then their pools' rows,
-- then their pool rows, like confirm and cancel. A pool row a claim already gave back is left alone. Writes
-- each hold's `hold.expired`. Returns the lifetime in seconds of each hold it expired.
WITH due AS (
    SELECT id
    FROM holds
    WHERE status = 'held' AND expires_at <= now()
    ORDER BY expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), owned AS (
    -- By the primary key's prefix, status tested on the locked rows, as in confirm_hold.
    SELECT hs.hold_id, hs.event_id, hs.slot_id, hs.status
    FROM hold_slots AS hs
    WHERE hs.hold_id IN (SELECT id FROM due)
    ORDER BY hs.event_id, hs.slot_id
    FOR UPDATE
), pools AS (
    SELECT p.event_id, p.pool_id
    FROM inventory_pools AS p
    -- After the seat rows (`owned`): every statement locks seats, then pools, then pool rows.
    WHERE (SELECT count(*) FROM owned) >= 0 AND (p.event_id, p.pool_id) IN (
        SELECT hp.event_id, hp.pool_id FROM hold_pools AS hp WHERE hp.hold_id IN (SELECT id FROM due)
    )
    ORDER BY p.event_id, p.pool_id
    FOR UPDATE OF p
), owned_units AS (
    SELECT hp.hold_id, hp.event_id, hp.pool_id, hp.quantity, hp.status
    FROM hold_pools AS hp
    WHERE hp.hold_id IN (SELECT id FROM due) AND (SELECT count(*) FROM pools) >= 0
    ORDER BY hp.event_id, hp.pool_id
    FOR UPDATE
), expired_slots AS (
    UPDATE hold_slots AS hs SET status = 'expired'
    FROM owned
    WHERE hs.hold_id = owned.hold_id AND hs.event_id = owned.event_id AND hs.slot_id = owned.slot_id
      AND owned.status = 'held'
), expired_units AS (
    UPDATE hold_pools AS hp SET status = 'expired'
    FROM owned_units AS u
    WHERE hp.hold_id = u.hold_id AND hp.event_id = u.event_id AND hp.pool_id = u.pool_id AND u.status = 'held'
), pool_counts AS (
    UPDATE inventory_pools AS p SET held_units = p.held_units - given_back.units
    FROM (SELECT event_id, pool_id, sum(quantity)::integer AS units FROM owned_units WHERE status = 'held'
          GROUP BY event_id, pool_id) AS given_back
    WHERE p.event_id = given_back.event_id AND p.pool_id = given_back.pool_id
), expired AS (
    UPDATE holds SET status = 'expired'
    WHERE id IN (SELECT id FROM due)
    RETURNING *
), events AS (
    -- A claim that took over the hold's seats or units may have written it too (the sequencer keeps one).
    INSERT INTO hold_events (type, hold_id, hold)
    SELECT 'hold.expired', e.id, to_jsonb(e) - 'token' FROM expired AS e ORDER BY e.expires_at, e.id
)
SELECT coalesce(array_agg(extract(epoch FROM expires_at - created_at)::float8), '{}') AS lifetimes_s
FROM expired;

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
), units_owned AS (
    -- Their pool rows (no pool counts change: a retired hold's units were given back, or stay sold).
    SELECT hp.ctid
    FROM hold_pools AS hp
    WHERE hp.hold_id IN (SELECT id FROM due) AND (SELECT count(*) FROM owned) >= 0
    ORDER BY hp.event_id, hp.pool_id
    FOR UPDATE
), units_moved AS (
    DELETE FROM hold_pools AS hp
    WHERE hp.ctid = ANY (ARRAY(SELECT ctid FROM units_owned))
    RETURNING hp.*
), units_archived AS (
    INSERT INTO hold_pools_archive SELECT * FROM units_moved WHERE $4::boolean
), holds_moved AS (
    DELETE FROM holds AS h
    WHERE h.id = ANY (ARRAY(SELECT id FROM due)) AND (SELECT count(*) FROM units_moved) >= 0
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
       client_key_id, items, seat_count, extensions, now() AS db_now
FROM holds
WHERE ($1::text IS NULL OR event_id = $1
       OR (event_id IS NULL AND items @> jsonb_build_array(jsonb_build_object('event_id', $1::text))))
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
RETURNING h.event_id, h.slots, h.token, h.holder, h.items;

-- lease_events --
-- The events whose leases Redis may hold: with a live held hold, or a hold confirmed or cancelled in the last
-- $1 ms (a lease lives no longer), and every event with an inventory (its pools and blocked seats). The bulk
-- rebuild after a restart or flush synchronizes these.
WITH recent AS (
    SELECT event_id, items FROM holds WHERE status = 'held' AND expires_at > now()
    UNION ALL
    SELECT event_id, items FROM holds
    WHERE status = 'confirmed' AND confirmed_at > now() - $1 * interval '1 millisecond'
    UNION ALL
    SELECT event_id, items FROM holds
    WHERE status = 'cancelled' AND cancelled_at > now() - $1 * interval '1 millisecond'
)
SELECT event_id FROM recent WHERE event_id IS NOT NULL
UNION
SELECT item ->> 'event_id' FROM recent, jsonb_array_elements(recent.items) AS item WHERE recent.event_id IS NULL
UNION
SELECT event_id FROM event_inventories;

-- recently_cancelled --
-- Holds spanning events $1 cancelled in the last $2 ms, whose leases a Redis restarted from an old snapshot
-- may still hold. Keyset pages: $3, $4 the last (cancelled_at, id) seen or nulls; $5 page size.
SELECT cancelled_at, id, event_id, slots, token, holder, items
FROM holds
WHERE (event_id = ANY($1::text[]) OR (event_id IS NULL AND EXISTS (
       SELECT 1 FROM jsonb_array_elements(items) AS item WHERE item ->> 'event_id' = ANY($1::text[]))))
  AND status = 'cancelled' AND cancelled_at > now() - $2 * interval '1 millisecond'
  AND ($3::timestamptz IS NULL OR (cancelled_at, id) > ($3, $4::text))
ORDER BY cancelled_at, id
LIMIT $5;

-- live_leases --
-- The seat leases Redis should hold for events $1: of the holds spanning them, the live held ones (for their
-- remaining life) and those confirmed in the last $2 ms (a confirmed lease lives that long). At most $3 rows
-- of each; remaining_ms is null for confirmed holds. (Pool units: inventory_state.)
(SELECT event_id, slots, token, holder, items,
        floor(extract(epoch FROM expires_at - now()) * 1000)::bigint AS remaining_ms
 FROM holds
 WHERE (event_id = ANY($1::text[]) OR (event_id IS NULL AND EXISTS (
       SELECT 1 FROM jsonb_array_elements(items) AS item WHERE item ->> 'event_id' = ANY($1::text[]))))
   AND status = 'held' AND expires_at > now()
 ORDER BY expires_at DESC
 LIMIT $3)
UNION ALL
(SELECT event_id, slots, token, holder, items, NULL::bigint
 FROM holds
 WHERE (event_id = ANY($1::text[]) OR (event_id IS NULL AND EXISTS (
       SELECT 1 FROM jsonb_array_elements(items) AS item WHERE item ->> 'event_id' = ANY($1::text[]))))
   AND status = 'confirmed' AND confirmed_at > now() - $2 * interval '1 millisecond'
 ORDER BY confirmed_at DESC
 LIMIT $3);

-- inventory_state --
-- What Redis should hold of the inventories of events $1, in one read: per pool its capacity and confirmed
-- units (kind `pool`; confirmed units of holds retention moved out have no row of their own), the units of
-- every live hold in it (kind `units`: held and not lapsed, with remaining_ms, or confirmed, with null), and
-- every blocked seat (kind `blocked`, its id as item_id).
SELECT 'pool' AS kind, p.event_id, p.pool_id AS item_id, p.capacity, p.confirmed_units,
       NULL::integer AS quantity, NULL::text AS token, NULL::text AS holder, NULL::bigint AS remaining_ms
FROM inventory_pools AS p
WHERE p.event_id = ANY($1::text[])
UNION ALL
SELECT 'units', hp.event_id, hp.pool_id, NULL, NULL, hp.quantity, h.token, h.holder,
       CASE WHEN hp.status = 'held' THEN floor(extract(epoch FROM hp.expires_at - now()) * 1000)::bigint END
FROM hold_pools AS hp
JOIN holds AS h ON h.id = hp.hold_id
WHERE hp.event_id = ANY($1::text[])
  AND hp.status IN ('held', 'confirmed') AND NOT (hp.status = 'held' AND hp.expires_at <= now())
UNION ALL
SELECT 'blocked', s.event_id, s.seat_id, NULL, NULL, NULL, NULL, NULL, NULL
FROM inventory_seats AS s
WHERE s.event_id = ANY($1::text[]) AND s.blocked_reason IS NOT NULL;

-- create_inventory --
-- The event's inventory row, made empty if the event has none (the replacement then fills it). $1 event id.
INSERT INTO event_inventories (event_id, seats_total) VALUES ($1, 0) ON CONFLICT (event_id) DO NOTHING;

-- lock_inventory --
-- The event's inventory, locked for a change: a change waits for the claims under way (they hold it FOR KEY
-- SHARE), and claims after it wait for the change. $1 event id.
SELECT event_id, per_holder, per_hold, seats_total FROM event_inventories WHERE event_id = $1 FOR UPDATE;

-- give_back_lapsed_units --
-- Under the event's pool rows' locks, mark its lapsed pool rows expired and give their units back, so that a
-- change judges the pools by their live units. $1 event id.
WITH locked AS (
    SELECT p.event_id, p.pool_id FROM inventory_pools AS p WHERE p.event_id = $1 ORDER BY p.pool_id FOR UPDATE
), lapsed AS (
    UPDATE hold_pools AS hp SET status = 'expired'
    FROM locked
    WHERE hp.event_id = locked.event_id AND hp.pool_id = locked.pool_id
      AND hp.status = 'held' AND hp.expires_at <= now()
    RETURNING hp.pool_id, hp.quantity
)
UPDATE inventory_pools AS p SET held_units = p.held_units - given_back.units
FROM (SELECT pool_id, sum(quantity)::integer AS units FROM lapsed GROUP BY pool_id) AS given_back
WHERE p.event_id = $1 AND p.pool_id = given_back.pool_id;

-- inventory_in_use --
-- What a replacement of event $1's inventory would take from live holds: seats with a live hold missing from
-- the new seats $2, and pools whose held + confirmed units exceed their new capacity (pools $3, capacities $4;
-- a pool left out has none). Run after give_back_lapsed_units, under the inventory's lock.
SELECT 'seat' AS kind, hs.slot_id AS item_id, NULL::integer AS units
FROM hold_slots AS hs
WHERE hs.event_id = $1
  AND hs.status IN ('held', 'confirmed') AND NOT (hs.status = 'held' AND hs.expires_at <= now())
  AND NOT EXISTS (SELECT 1 FROM unnest($2::text[]) AS kept (seat_id) WHERE kept.seat_id = hs.slot_id)
UNION ALL
SELECT 'pool', p.pool_id, p.held_units + p.confirmed_units
FROM inventory_pools AS p
LEFT JOIN unnest($3::text[], $4::integer[]) AS kept (pool_id, capacity) ON kept.pool_id = p.pool_id
WHERE p.event_id = $1 AND p.held_units + p.confirmed_units > coalesce(kept.capacity, 0)
ORDER BY 1, 2;

-- replace_inventory --
-- Make event $1's inventory seats $2, pools $3 with capacities $4 (in that order), limits $5 per holder and $6
-- per hold; kept seats keep their blocks, kept pools their counts. Flags the event for Redis to synchronize
-- again. Run under the inventory's lock, after inventory_in_use found nothing.
WITH settings AS (
    UPDATE event_inventories
    SET per_holder = $5, per_hold = $6, seats_total = cardinality($2::text[]), redis_sync_due = true,
        updated_at = now()
    WHERE event_id = $1
), dropped_seats AS (
    DELETE FROM inventory_seats AS s
    WHERE s.event_id = $1 AND NOT EXISTS (SELECT 1 FROM unnest($2::text[]) AS kept (seat_id) WHERE kept.seat_id = s.seat_id)
), added_seats AS (
    INSERT INTO inventory_seats (event_id, seat_id)
    SELECT $1, kept.seat_id FROM unnest($2::text[]) AS kept (seat_id)
    ON CONFLICT (event_id, seat_id) DO NOTHING
), dropped_pools AS (
    DELETE FROM inventory_pools AS p WHERE p.event_id = $1 AND NOT (p.pool_id = ANY($3::text[]))
)
INSERT INTO inventory_pools (event_id, pool_id, capacity, position)
SELECT $1, kept.pool_id, kept.capacity, kept.position
FROM unnest($3::text[], $4::integer[]) WITH ORDINALITY AS kept (pool_id, capacity, position)
ON CONFLICT (event_id, pool_id) DO UPDATE SET capacity = excluded.capacity, position = excluded.position;

-- get_inventory --
-- Event $1's inventory settings, or no row.
SELECT event_id, per_holder, per_hold, seats_total FROM event_inventories WHERE event_id = $1;

-- inventory_pools_of --
-- Event $1's pools, in the inventory's order.
SELECT pool_id, capacity FROM inventory_pools WHERE event_id = $1 ORDER BY position;

-- inventory_seats_of --
-- Event $1's seats in seat order, with their blocks.
SELECT seat_id, blocked_reason, blocked_at FROM inventory_seats WHERE event_id = $1 ORDER BY seat_id;

-- lock_seats --
-- Seats $2 of event $1 that are in its inventory, locked for a block or unblock (claims hold them FOR KEY
-- SHARE until they end), in seat order.
SELECT seat_id FROM inventory_seats WHERE event_id = $1 AND seat_id = ANY($2::text[]) ORDER BY seat_id FOR UPDATE;

-- live_seats --
-- Seats $2 of event $1 with a live hold (held and not lapsed, or confirmed), in seat order.
SELECT slot_id FROM hold_slots
WHERE event_id = $1 AND slot_id = ANY($2::text[])
  AND status IN ('held', 'confirmed') AND NOT (status = 'held' AND expires_at <= now())
ORDER BY slot_id;

-- set_blocked --
-- Block seats $2 of event $1 for reason $3, or unblock them ($3 null); a seat already so is left as it is (a
-- repeated block keeps the first reason). Flags the event for Redis to synchronize again if any changed.
-- Returns how many changed, and how many of the event's seats are blocked now.
WITH changed AS (
    UPDATE inventory_seats
    SET blocked_reason = $3, blocked_at = CASE WHEN $3::text IS NULL THEN NULL ELSE now() END
    WHERE event_id = $1 AND seat_id = ANY($2::text[]) AND (blocked_reason IS NULL) = ($3::text IS NOT NULL)
    RETURNING seat_id, blocked_reason
), flagged AS (
    UPDATE event_inventories SET redis_sync_due = true, updated_at = now()
    WHERE event_id = $1 AND EXISTS (SELECT 1 FROM changed)
)
SELECT (SELECT count(*) FROM changed)::integer AS changed,
       ((SELECT count(*) FROM inventory_seats WHERE event_id = $1 AND blocked_reason IS NOT NULL)
        + (SELECT count(*) FROM changed WHERE blocked_reason IS NOT NULL)
        - (SELECT count(*) FROM changed WHERE blocked_reason IS NULL))::integer AS blocked_total;

-- take_due_inventory_syncs --
-- Up to $1 events whose inventory changed since Redis last synchronized them, flag cleared; run in a
-- transaction that commits only once Redis has been told (else the flags stay for the next pass). FOR NO KEY
-- UPDATE: claims (FOR KEY SHARE) do not wait for it.
WITH due AS (
    SELECT event_id FROM event_inventories WHERE redis_sync_due LIMIT $1 FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE event_inventories AS e SET redis_sync_due = false
FROM due
WHERE e.event_id = due.event_id
RETURNING e.event_id;

-- event_availability --
-- What is left of event $1: one row per pool in the inventory's order (pool columns null when it has none),
-- each with the event's seat counts; no row when the event has no inventory. A lapsed unit counts as free
-- whether or not it was given back yet.
WITH inventory AS (
    SELECT event_id, per_holder, per_hold, seats_total FROM event_inventories WHERE event_id = $1
), seats AS (
    SELECT count(*) FILTER (WHERE status = 'held') AS held, count(*) FILTER (WHERE status = 'confirmed') AS confirmed
    FROM hold_slots
    WHERE event_id = $1 AND status IN ('held', 'confirmed') AND NOT (status = 'held' AND expires_at <= now())
), blocked AS (
    SELECT count(*) AS blocked FROM inventory_seats WHERE event_id = $1 AND blocked_reason IS NOT NULL
), pools AS (
    SELECT p.pool_id, p.capacity, p.position, p.confirmed_units,
           p.held_units - coalesce((
               SELECT sum(hp.quantity) FROM hold_pools AS hp
               WHERE hp.event_id = p.event_id AND hp.pool_id = p.pool_id
                 AND hp.status = 'held' AND hp.expires_at <= now()
           ), 0) AS held_units,
           (SELECT min(hp.expires_at) FROM hold_pools AS hp
            WHERE hp.event_id = p.event_id AND hp.pool_id = p.pool_id
              AND hp.status = 'held' AND hp.expires_at > now()) AS next_release_at
    FROM inventory_pools AS p
    WHERE p.event_id = $1
)
SELECT i.event_id, i.per_holder, i.per_hold, i.seats_total, seats.held AS seats_held,
       seats.confirmed AS seats_confirmed, blocked.blocked AS seats_blocked, now() AS db_now,
       pools.pool_id, pools.capacity, pools.held_units, pools.confirmed_units, pools.next_release_at
FROM inventory AS i
CROSS JOIN seats
CROSS JOIN blocked
LEFT JOIN pools ON true
ORDER BY pools.position;

-- client_key_digests --
-- Every live client key's id and sha256: each worker keeps them in memory to check a request's key.
SELECT id, key_sha256 FROM client_keys;

-- insert_client_key --
-- A new client key, and every worker told on channel $4 once it commits (they reload the keys). $1 id, $2 name,
-- $3 sha256 of the key.
WITH inserted AS (
    INSERT INTO client_keys (id, name, key_sha256) VALUES ($1, $2, $3)
    RETURNING id, name, created_at
)
SELECT id, name, created_at, pg_notify($4, '') AS notified FROM inserted;

-- client_keys_to_copy --
-- Every client key as stored (`gateway pods keys` copies them to the other pods' databases).
SELECT id, name, key_sha256 FROM client_keys ORDER BY id;

-- list_client_keys --
-- The client keys, oldest first (names and ids only: the keys themselves are not stored).
SELECT id, name, created_at FROM client_keys ORDER BY created_at, id;

-- delete_client_key --
-- Revoke a client key, and every worker told on channel $2 once it commits. $1 id. Returns its id if it existed.
WITH deleted AS (
    DELETE FROM client_keys WHERE id = $1 RETURNING id
)
SELECT id, pg_notify($2, '') AS notified FROM deleted;

-- ping --
-- A round trip to the database.
SELECT 1;

-- try_sequencer_lock --
-- Whether this transaction may number hold events: one sequencer at a time per database, whichever worker or
-- replica gets there first (held until the transaction ends). Its own statement, before number_hold_events, so
-- that statement's snapshot sees what the previous sequencer committed. $1 the lock's key.
SELECT pg_try_advisory_xact_lock($1) AS locked;

-- number_hold_events --
-- Give up to $1 committed events not yet numbered their feed ids, in the order they were written, after the
-- highest id given so far. A hold's `hold.expired` may have been written twice (by the sweeper and by a claim
-- that took over its seats or units; neither waits for the other): the first committed is numbered, a later
-- copy deleted. Only under the sequencer's lock (try_sequencer_lock). Returns the feed's head afterwards (0:
-- no event yet) and how many were numbered.
WITH head AS (
    SELECT coalesce(max(id), 0) AS id FROM hold_events WHERE id IS NOT NULL
), batch AS (
    SELECT entry_id, type, hold_id FROM hold_events WHERE id IS NULL ORDER BY entry_id LIMIT $1
), copies AS (
    DELETE FROM hold_events AS e
    USING batch AS b
    WHERE e.entry_id = b.entry_id AND b.type = 'hold.expired'
      AND (EXISTS (SELECT 1 FROM hold_events AS first
                   WHERE first.hold_id = b.hold_id AND first.type = 'hold.expired' AND first.id IS NOT NULL)
           OR EXISTS (SELECT 1 FROM batch AS first
                      WHERE first.hold_id = b.hold_id AND first.type = 'hold.expired'
                        AND first.entry_id < b.entry_id))
    RETURNING e.entry_id
), next AS (
    SELECT entry_id, row_number() OVER (ORDER BY entry_id) AS n
    FROM batch WHERE entry_id NOT IN (SELECT entry_id FROM copies)
), numbered AS (
    UPDATE hold_events AS e SET id = head.id + next.n
    FROM head, next
    WHERE e.entry_id = next.entry_id
    RETURNING e.id
)
SELECT (SELECT id FROM head) + (SELECT count(*) FROM numbered) AS head, (SELECT count(*) FROM numbered) AS numbered;

-- notify --
-- Tell every worker listening on channel $1 (gateway.listener), with payload $2, once the transaction commits.
SELECT pg_notify($1, $2);

-- hold_events_pending --
-- Whether committed events wait to be numbered, and the feed's head: the sequencer's pass when idle, one
-- statement outside any transaction (both read through their partial indexes).
SELECT EXISTS (SELECT 1 FROM hold_events WHERE id IS NULL) AS pending,
       (SELECT coalesce(max(id), 0) FROM hold_events WHERE id IS NOT NULL) AS head;

-- hold_events_head --
-- The feed's head: the highest id numbered (0: no event yet).
SELECT coalesce(max(id), 0) AS head FROM hold_events WHERE id IS NOT NULL;

-- hold_events_after --
-- Up to $2 numbered events after feed id $1, in feed order.
SELECT id, type, hold_id, occurred_at, hold
FROM hold_events
WHERE id IS NOT NULL AND id > $1
ORDER BY id
LIMIT $2;

-- purge_hold_events --
-- Delete up to $2 numbered events older than $1 seconds, oldest first. Returns the count.
WITH oldest AS (
    SELECT entry_id, occurred_at FROM hold_events WHERE id IS NOT NULL ORDER BY id LIMIT $2
), purged AS (
    DELETE FROM hold_events
    WHERE entry_id IN (SELECT entry_id FROM oldest WHERE occurred_at < now() - $1 * interval '1 second')
    RETURNING 1
)
SELECT count(*) FROM purged;

-- event_seat_states --
-- The seats of event $1 that are not free, for anyone's seat map (the live stream's snapshot): seat ids and
-- states only, never a hold id or a holder. Live seats (held and not lapsed, or confirmed) through
-- hold_slots_one_active_hold, as event_slots reads them, then the inventory's blocked seats through
-- inventory_seats_blocked_idx. A seat not listed is free.
SELECT hs.slot_id AS seat_id, hs.status AS state
FROM hold_slots AS hs
WHERE hs.event_id = $1
  AND hs.status IN ('held', 'confirmed')
  AND NOT (hs.status = 'held' AND hs.expires_at <= now())
UNION ALL
SELECT s.seat_id, 'blocked' AS state
FROM inventory_seats AS s
WHERE s.event_id = $1 AND s.blocked_reason IS NOT NULL;

-- inventory_versions --
-- When each of events $1's inventories last changed (seats, pools, limits, blocks); events without one are
-- left out. The live streams compare it to learn of changes the hold event feed does not carry.
SELECT event_id, updated_at FROM event_inventories WHERE event_id = ANY($1::text[]);

-- lock_sequencer --
-- Wait for the hold-event sequencer's lock and hold it until the transaction ends: a webhook endpoint is
-- created under it, so that no numbering pass runs between its created_at and its commit (an event that
-- occurred in between would be numbered without a delivery to it). $1 the lock's key.
SELECT pg_advisory_xact_lock($1);

-- insert_webhook_endpoint --
-- A new webhook endpoint, created now by the clock (not the transaction's start: the sequencer's lock may have
-- been waited for). Run after lock_sequencer, in its transaction. $1 id, $2 url, $3 secret.
INSERT INTO webhook_endpoints (id, url, secret, created_at) VALUES ($1, $2, $3, clock_timestamp())
RETURNING id, url, secret, created_at;

-- list_webhook_endpoints --
-- The webhook endpoints, oldest first, with their deliveries pending and failed, the delivered count and the
-- latest failure (never the secret).
SELECT w.id, w.url, w.created_at, w.delivered, w.last_delivered_at, w.last_error, w.last_error_at,
       count(d.event_id) FILTER (WHERE d.status = 'pending') AS pending,
       count(d.event_id) FILTER (WHERE d.status = 'failed') AS failed
FROM webhook_endpoints AS w
LEFT JOIN webhook_deliveries AS d ON d.endpoint_id = w.id
GROUP BY w.id
ORDER BY w.created_at, w.id;

-- delete_webhook_endpoint --
-- Delete a webhook endpoint and, with it, every delivery still owed to it. $1 id. Returns its id if it existed.
DELETE FROM webhook_endpoints WHERE id = $1 RETURNING id;

-- redeliver_webhooks --
-- Owe endpoint $1 its deliveries again, attempts from zero and a retry window from now. $2 null: its failed deliveries go back to pending.
-- $2 a feed id: every kept event after it that the endpoint gets (occurred at or after its creation) is owed
-- again: failed ones back to pending, missing ones (delivered, their rows gone) added, pending ones left as
-- they are (one may be in flight: it must not be sent twice at once). Returns whether the endpoint exists and
-- how many deliveries this made pending.
WITH endpoint AS (
    SELECT id, created_at FROM webhook_endpoints WHERE id = $1
), reset AS (
    UPDATE webhook_deliveries AS d
    SET status = 'pending', attempts = 0, next_attempt_at = now(), retry_from = now(), locked_until = NULL
    FROM endpoint
    WHERE d.endpoint_id = endpoint.id AND d.status = 'failed' AND ($2::bigint IS NULL OR d.event_id > $2)
    RETURNING 1
), added AS (
    INSERT INTO webhook_deliveries (endpoint_id, event_id, hold_id, occurred_at, retry_from)
    SELECT endpoint.id, e.id, e.hold_id, e.occurred_at, now()
    FROM endpoint
    JOIN hold_events AS e ON e.occurred_at >= endpoint.created_at
    WHERE $2::bigint IS NOT NULL AND e.id IS NOT NULL AND e.id > $2
    ON CONFLICT (endpoint_id, event_id) DO NOTHING
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM endpoint) AS found,
       ((SELECT count(*) FROM reset) + (SELECT count(*) FROM added))::integer AS redelivered;

-- fan_out_webhook_deliveries --
-- A pending delivery of each event numbered in feed ids ($1, $2] to every webhook endpoint created at or before
-- the event occurred. Run by the sequencer in the transaction that numbered them. Returns how many it made.
WITH made AS (
    INSERT INTO webhook_deliveries (endpoint_id, event_id, hold_id, occurred_at, retry_from)
    SELECT w.id, e.id, e.hold_id, e.occurred_at, e.occurred_at
    FROM hold_events AS e
    JOIN webhook_endpoints AS w ON e.occurred_at >= w.created_at
    WHERE e.id > $1 AND e.id <= $2
    ON CONFLICT (endpoint_id, event_id) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM made;

-- claim_webhook_deliveries --
-- Lease up to $1 due deliveries for sending: pending, due for $6 seconds at least (0: due; more: a busy worker
-- sends only those its load has kept waiting that long), not leased by a live worker, and each the earliest
-- still owed of its hold to its endpoint (a hold's events go out in feed order, one at a time). At most $4 per
-- endpoint less what this worker has in flight to it ($2 endpoint ids, $3 their counts), so that a hung
-- endpoint cannot take every slot. Each lease runs $5 seconds, and the attempt is counted (`attempts` is the
-- lease's token: an outcome is recorded for the attempt that claimed it). Rows another worker is claiming are
-- skipped. Each endpoint's rows are read in its pending index's order, up to its share; the leased rows are
-- updated by their addresses and their events fetched one probe each (OFFSET 0 keeps that subquery a
-- per-row probe): a generic plan, which cannot know how few rows $1 asks for, must not hash the whole table.
-- The order check is a probe per candidate row too (its OFFSET 0 keeps it from becoming an anti join, which,
-- planned with the statistics of an empty queue, read the endpoint's whole backlog for every row).
-- Returns each with its endpoint's url and secret and its event (null type: no longer kept).
WITH in_flight AS (
    SELECT * FROM unnest($2::text[], $3::integer[]) AS f (endpoint_id, sending)
), due AS (
    SELECT d.row_id, d.endpoint_id, d.event_id, w.url, w.secret
    FROM webhook_endpoints AS w
    LEFT JOIN in_flight AS f ON f.endpoint_id = w.id
    CROSS JOIN LATERAL (
        SELECT d.ctid AS row_id, d.endpoint_id, d.event_id, d.next_attempt_at
        FROM webhook_deliveries AS d
        WHERE d.endpoint_id = w.id AND d.status = 'pending'
          AND d.next_attempt_at <= now() - $6 * interval '1 second'
          AND (d.locked_until IS NULL OR d.locked_until <= now())
          AND NOT EXISTS (
              SELECT 1 FROM webhook_deliveries AS earlier
              WHERE earlier.endpoint_id = d.endpoint_id AND earlier.hold_id = d.hold_id
                AND earlier.status = 'pending' AND earlier.event_id < d.event_id
              OFFSET 0
          )
        ORDER BY d.next_attempt_at, d.event_id
        LIMIT greatest($4 - coalesce(f.sending, 0), 0)
        FOR UPDATE OF d SKIP LOCKED
    ) AS d
    ORDER BY d.next_attempt_at, d.event_id
    LIMIT $1
), claimed AS (
    UPDATE webhook_deliveries AS d
    SET locked_until = now() + $5 * interval '1 second', attempts = d.attempts + 1
    WHERE d.ctid = ANY (ARRAY(SELECT row_id FROM due))
    RETURNING d.endpoint_id, d.event_id, d.attempts, d.occurred_at
)
SELECT c.endpoint_id, c.event_id, c.attempts, c.occurred_at, due.url, due.secret, e.type, e.hold_id, e.hold
FROM claimed AS c
JOIN due ON due.endpoint_id = c.endpoint_id AND due.event_id = c.event_id
LEFT JOIN LATERAL (
    SELECT type, hold_id, hold FROM hold_events WHERE id = c.event_id OFFSET 0
) AS e ON true
ORDER BY c.event_id;

-- webhook_delivered --
-- A delivery answered 2xx: its row goes and its endpoint counts it. $1 endpoint id, $2 event id. Returns the
-- seconds from the event to now by the database's clock; no row if the row was gone already (its endpoint
-- deleted, or delivered by a worker that took over a lapsed lease).
WITH gone AS (
    DELETE FROM webhook_deliveries WHERE endpoint_id = $1 AND event_id = $2
    RETURNING endpoint_id, occurred_at
), counted AS (
    UPDATE webhook_endpoints AS w SET delivered = w.delivered + 1, last_delivered_at = clock_timestamp()
    FROM gone
    WHERE w.id = gone.endpoint_id
)
SELECT extract(epoch FROM clock_timestamp() - occurred_at)::float8 AS latency_s FROM gone;

-- webhook_attempt_failed --
-- An attempt with no 2xx answer: the delivery is due again in $4 seconds, or failed if that is past $5 seconds
-- from its retry window's start (its event, or the operator's redeliver); the lease ends. Recorded only for the attempt that holds the lease ($3 its `attempts`): a
-- worker that outlived its lease must not overwrite the next one's. $1 endpoint id, $2 event id, $6 the HTTP
-- status (null: no answer), $7 what went wrong, also kept on the endpoint. Returns the status set; no row if
-- the lease was no longer this attempt's.
WITH attempt AS (
    UPDATE webhook_deliveries AS d
    SET status = CASE WHEN now() + $4 * interval '1 second' > d.retry_from + $5 * interval '1 second'
                      THEN 'failed' ELSE 'pending' END,
        next_attempt_at = now() + $4 * interval '1 second',
        locked_until = NULL,
        last_status = $6,
        last_error = $7,
        last_attempt_at = now()
    WHERE d.endpoint_id = $1 AND d.event_id = $2 AND d.attempts = $3
    RETURNING d.endpoint_id, d.status
), noted AS (
    UPDATE webhook_endpoints AS w SET last_error = $7, last_error_at = now()
    FROM attempt
    WHERE w.id = attempt.endpoint_id
)
SELECT status FROM attempt;

-- webhook_stats --
-- Webhook numbers for operations: endpoints, deliveries pending and failed, deliveries made, and when the
-- event of the oldest pending delivery occurred.
SELECT (SELECT count(*) FROM webhook_endpoints)::integer AS endpoints,
       (SELECT coalesce(sum(delivered), 0) FROM webhook_endpoints)::bigint AS delivered,
       (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending')::bigint AS pending,
       (SELECT count(*) FROM webhook_deliveries WHERE status = 'failed')::bigint AS failed,
       (SELECT min(occurred_at) FROM webhook_deliveries WHERE status = 'pending') AS oldest_pending_at,
       now() AS db_now;

-- purge_webhook_deliveries --
-- Delete up to $2 failed deliveries whose events occurred more than $1 seconds ago (the events' retention: by
-- then the events are gone and could not be sent again). Returns the count.
WITH old AS (
    SELECT endpoint_id, event_id FROM webhook_deliveries
    WHERE status = 'failed' AND occurred_at < now() - $1 * interval '1 second'
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), purged AS (
    DELETE FROM webhook_deliveries AS d
    USING old
    WHERE d.endpoint_id = old.endpoint_id AND d.event_id = old.event_id
    RETURNING 1
)
SELECT count(*) FROM purged;

-- claim_background_leader --
-- Take the background leadership (gateway.leader), or keep it. $1 the worker's id, $2 the lease in seconds, $3
-- whether the worker reaches Redis. Taken when nobody holds it, when its lease ran out by the database's clock,
-- or from a leader that did not reach Redis by one that does; kept (renewed) by its holder. A new holder starts
-- a new term. Returns the row as it stands afterwards, whoever holds it, with its lease's seconds left.
WITH claimed AS (
    INSERT INTO background_leader AS l (holder, term, redis_ok, acquired_at, expires_at)
    VALUES ($1, 1, $3, now(), now() + $2::float8 * interval '1 second')
    ON CONFLICT ON CONSTRAINT background_leader_pkey DO UPDATE
    SET holder = excluded.holder,
        term = CASE WHEN l.holder = excluded.holder THEN l.term ELSE l.term + 1 END,
        redis_ok = excluded.redis_ok,
        acquired_at = CASE WHEN l.holder = excluded.holder THEN l.acquired_at ELSE now() END,
        expires_at = excluded.expires_at
    WHERE l.holder = excluded.holder OR l.expires_at <= now() OR (excluded.redis_ok AND NOT l.redis_ok)
    RETURNING l.holder, l.term, l.expires_at
)
SELECT holder, term, extract(epoch FROM expires_at - now())::float8 AS expires_in_s FROM claimed
UNION ALL
SELECT holder, term, extract(epoch FROM expires_at - now())::float8 FROM background_leader
WHERE NOT EXISTS (SELECT 1 FROM claimed);

-- release_background_leader --
-- A leader that stops cleanly ends its lease now and tells the other workers on channel $2, so that one takes
-- over at once. $1 the worker's id; nothing happens if it no longer holds the leadership.
WITH released AS (
    UPDATE background_leader SET expires_at = now() WHERE holder = $1 RETURNING holder
)
SELECT pg_notify($2, holder) AS notified FROM released;

-- pod_identity --
-- This database's pod and the shard map's bucket count (`gateway pods`); no row: not a pod's database.
SELECT pod, buckets FROM pod_identity;

-- set_pod_identity --
-- Record this database as pod $1 of a map with $2 buckets.
INSERT INTO pod_identity (pod, buckets) VALUES ($1, $2)
ON CONFLICT ON CONSTRAINT pod_identity_pkey DO UPDATE SET pod = excluded.pod, buckets = excluded.buckets;

-- pod_buckets --
-- The buckets this pod owns, with the map version that gave each.
SELECT bucket, map_version FROM pod_buckets ORDER BY bucket;

-- own_pod_bucket --
-- This pod owns bucket $1 from map version $2 on.
INSERT INTO pod_buckets (bucket, map_version) VALUES ($1, $2)
ON CONFLICT ON CONSTRAINT pod_buckets_pkey DO UPDATE SET map_version = excluded.map_version;

-- release_pod_bucket --
-- This pod gives up bucket $1 (in the mover's transaction: it waits for the claims in flight in the bucket,
-- whose fence holds the row, and the caller then counts what they left). One row if it was owned.
DELETE FROM pod_buckets WHERE bucket = $1 RETURNING bucket;

-- bucket_contents --
-- What would be stranded if bucket $1 (of $2) left this pod: its live seat and pool rows (held and not lapsed,
-- or confirmed: a sold seat stays sold only where its row is) and its inventories.
SELECT
    (SELECT count(*) FROM hold_slots
     WHERE gateway_bucket(event_id, $2) = $1
       AND (status = 'confirmed' OR (status = 'held' AND expires_at > now())))
  + (SELECT count(*) FROM hold_pools
     WHERE gateway_bucket(event_id, $2) = $1
       AND (status = 'confirmed' OR (status = 'held' AND expires_at > now()))) AS live_rows,
    (SELECT count(*) FROM event_inventories WHERE gateway_bucket(event_id, $2) = $1) AS inventories;

-- attach_pod_fence --
-- The fence triggers (migration 0010's gateway_pod_fence) on every table a claim writes an event's rows to.
CREATE OR REPLACE TRIGGER hold_slots_pod_fence BEFORE INSERT ON hold_slots
    FOR EACH ROW EXECUTE FUNCTION gateway_pod_fence();
CREATE OR REPLACE TRIGGER hold_pools_pod_fence BEFORE INSERT ON hold_pools
    FOR EACH ROW EXECUTE FUNCTION gateway_pod_fence();
