"""Query plans of the real statements of gateway/queries.sql, pinned to the indexes they are written for.

Each statement is PREPAREd from queries.sql as the gateway's prepared statements are, then EXPLAINed with
realistic parameters under both of Postgres's plan choices (a custom plan for the first runs of a prepared
statement, a generic one after), and the plan tree is walked for the indexes each table is reached by.
"""

import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from gateway import sql
from tests.support import claim_args

PLAN_CACHE_MODES = ["force_custom_plan", "force_generic_plan"]


# A claim as the gateway sends it: a 22-character hold id, a token, two seats, 5 minutes, an Idempotency-Key,
# a client key.
CLAIM_ARGS = claim_args(
    "0GxkSe6s3N8HNPR7qVMQAw",
    "5d41402abc4b2a76b9719d911017c592",
    "show-42",
    "user-123",
    ["A-12", "A-13"],
    300_000,
    "order-7f3a",
    "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    "ck-frontend",
)


async def claim_holds(conn: asyncpg.Connection, count: int) -> None:
    """Holds as the gateway makes them, one claim at a time, and no ANALYZE since (as on a new database)."""
    claims = [
        claim_args(f"h{i}", f"t{i}", "show-42", "x", [f"A-{i}"], 600_000, None, None, "")
        for i in range(count)
    ]
    await conn.executemany(sql.CLAIM_HOLD, claims)


async def plan_of(
    conn: asyncpg.Connection, name: str, args: tuple[Any, ...], mode: str, *, analyze: bool = False
) -> dict[str, Any]:
    """The plan of query `name`, run as a prepared statement with these arguments under plan_cache_mode;
    with `analyze`, run for real: EXPLAIN (ANALYZE, BUFFERS), with actual rows and the pages each node
    touched."""
    await conn.execute(f"SET plan_cache_mode = {mode}")
    await conn.execute(f"PREPARE plan_check AS {sql.QUERIES[name]}")
    try:
        types = await conn.fetchval(
            "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = 'plan_check'"
        )
        # EXECUTE takes no bind parameters: Postgres itself renders each argument as a literal of its type.
        literals = [
            await conn.fetchval(f"SELECT quote_nullable($1::{type_name}::text)", arg)
            for type_name, arg in zip(types, args, strict=True)
        ]
        options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
        explained = await conn.fetchval(f"EXPLAIN ({options}) EXECUTE plan_check({', '.join(literals)})")
    finally:
        await conn.execute("DEALLOCATE plan_check")
    plan: dict[str, Any] = json.loads(explained)[0]["Plan"]
    return plan


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of the tree, CTEs and subplans included."""
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def accesses(plan: dict[str, Any], relation: str) -> set[str]:
    """How the plan reaches `relation`: the indexes it scans or resolves ON CONFLICT with, and the node type
    of any scan that uses no index (`Seq Scan`)."""
    found: set[str] = set()
    for node in nodes(plan):
        if node.get("Relation Name") != relation:
            continue
        if node["Node Type"] == "ModifyTable":
            # The rows an UPDATE or DELETE changes are found by the scans below it, visited on their own.
            found.update(node.get("Conflict Arbiter Indexes", []))
        elif node["Node Type"] == "Bitmap Heap Scan":
            found.update(child["Index Name"] for child in nodes(node) if "Index Name" in child)
        else:
            found.add(node.get("Index Name", node["Node Type"]))
    return found


@pytest.mark.parametrize("mode", PLAN_CACHE_MODES)
async def test_claim_and_the_loser_path_go_through_the_partial_unique_index(
    database_url: str, mode: str
) -> None:
    """A claim decides its winner by ON CONFLICT on hold_slots_one_active_hold, and the loser's lookups of the
    slot's owner are index probes on it, never a scan of hold_slots."""
    conn = await asyncpg.connect(database_url)
    try:
        await claim_holds(conn, 3000)
        claim = await plan_of(conn, "claim_hold", CLAIM_ARGS, mode)
        owners = await plan_of(conn, "slot_owners", (["show-42", "show-42"], ["A-12", "A-13"]), mode)
        state = await plan_of(conn, "slot_state", ("show-42", "A-12"), mode)
    finally:
        await conn.close()

    assert accesses(claim, "hold_slots") == {sql.ONE_ACTIVE_HOLD_PER_SLOT}, json.dumps(claim, indent=1)
    # The hold is inserted once per token (a lost reply is resolved by it); nothing scans holds.
    assert "holds_token_key" in accesses(claim, "holds"), json.dumps(claim, indent=1)
    assert accesses(claim, "holds") <= {"holds_token_key", "holds_pkey"}, json.dumps(claim, indent=1)
    assert accesses(owners, "hold_slots") == {sql.ONE_ACTIVE_HOLD_PER_SLOT}, json.dumps(owners, indent=1)
    assert accesses(owners, "holds") == {"holds_pkey"}, json.dumps(owners, indent=1)
    assert accesses(state, "hold_slots") == {sql.ONE_ACTIVE_HOLD_PER_SLOT}, json.dumps(state, indent=1)


@pytest.mark.parametrize("mode", PLAN_CACHE_MODES)
async def test_a_claim_reads_its_own_seats_only_however_many_are_live(database_url: str, mode: str) -> None:
    """Regression: the claim's owners lookup (and the open-event guard) joined the requested seats to the
    event's live rows, and a generic plan hashed them all: every claim read every live seat of its event
    (5,000 rows, 2 ms, half the commit rate with 5,000 holds live). Each requested seat is now one probe, for
    a winner and for a loser alike."""
    conn = await asyncpg.connect(database_url)
    try:
        await claim_holds(conn, 3000)
        # Other events' inventories, so that a scan of them would cost something; no ANALYZE (a new database).
        await conn.execute(
            "INSERT INTO event_inventories (event_id, seats_total)"
            " SELECT 'other-' || i, 0 FROM generate_series(1, 2000) AS i"
        )
        winner = await plan_of(
            conn,
            "claim_hold",
            claim_args(f"w-{mode}", f"tw-{mode}", "show-42", "y", [f"B-{mode}"], 600_000, None, None, ""),
            mode,
            analyze=True,
        )
        loser = await plan_of(
            conn,
            "claim_hold",
            claim_args(f"l-{mode}", f"tl-{mode}", "show-42", "y", ["A-7"], 600_000, None, None, ""),
            mode,
            analyze=True,
        )
        owners = await plan_of(
            conn, "slot_owners", (["show-42", "show-42"], ["A-12", "A-13"]), mode, analyze=True
        )
    finally:
        await conn.close()

    for name, plan in (("winner", winner), ("loser", loser), ("owners", owners)):
        for node in nodes(plan):
            if node.get("Relation Name") in ("hold_slots", "event_inventories", "holds"):
                assert node["Node Type"] != "Seq Scan", f"{name}:\n{json.dumps(plan, indent=1)}"
                assert node.get("Actual Rows", 0) <= 2, f"{name}:\n{json.dumps(plan, indent=1)}"


async def test_confirm_cancel_extend_and_expire_find_slot_rows_by_primary_key(database_url: str) -> None:
    """Regression: on a new database (no statistics yet), confirm read the whole of the partial unique
    index for every call, so confirms slowed down as live holds piled up."""
    conn = await asyncpg.connect(database_url)
    try:
        await claim_holds(conn, 3000)
        plans = {
            # As a prepared statement runs once it has gone generic.
            name: await plan_of(conn, name, args, "force_generic_plan")
            for name, args in (
                ("confirm_hold", ("h7", "x", "")),
                ("cancel_hold", ("h7", "x", True, "")),
                ("extend_hold", ("h7", "x", "", 60_000, 7_200_000)),
                ("expire_holds", (100,)),
            )
        }
    finally:
        await conn.close()
    for name, plan in plans.items():
        assert accesses(plan, "hold_slots") == {"hold_slots_pkey"}, f"{name}:\n{json.dumps(plan, indent=1)}"


HISTORY_ROWS = 50_000
HISTORY_SLOTS = 500  # each re-held and let go 100 times


@pytest.mark.parametrize("mode", PLAN_CACHE_MODES)
async def test_seat_map_reads_live_rows_only_whatever_the_history(database_url: str, mode: str) -> None:
    """Regression: the seat map walked every slot row the event ever had (hold_slots_event_id_slot_id_idx),
    so a public read cost more with each hold ever cancelled or expired. With 50,000 history rows on the
    event it reads its live rows through hold_slots_one_active_hold, and nothing else."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """
            INSERT INTO holds (id, token, event_id, holder, slots, status, created_at, expires_at,
                               cancelled_at)
            SELECT 'old-' || i, 'old-token-' || i, 'show-42', 'h', ARRAY['A-' || (i % $2)],
                   CASE WHEN i % 2 = 0 THEN 'cancelled' ELSE 'expired' END, now() - interval '1 day',
                   now() - interval '1 day' + interval '5 minutes',
                   CASE WHEN i % 2 = 0 THEN now() - interval '1 day' + interval '1 minute' END
            FROM generate_series(1, $1) AS i
            """,
            HISTORY_ROWS,
            HISTORY_SLOTS,
        )
        await conn.execute(
            "INSERT INTO hold_slots (hold_id, event_id, slot_id, status, expires_at)"
            " SELECT id, event_id, slots[1], status, expires_at FROM holds"
        )
        # Live now: five held seats and two confirmed, among the seats with history and beyond them.
        live = ["A-1", "A-2", "A-250", "A-499", "B-1"]
        await conn.executemany(
            sql.CLAIM_HOLD,
            [
                claim_args(f"h{i}", f"t{i}", "show-42", "x", [s], 600_000, None, None, "")
                for i, s in enumerate(live)
            ],
        )
        await conn.executemany(sql.CONFIRM_HOLD, [("h3", "x", ""), ("h4", "x", "")])
        await conn.execute("ANALYZE")
        plan = await plan_of(conn, "event_slots", ("show-42", None, None, 1000), mode, analyze=True)
        listed = await conn.fetch(sql.EVENT_SLOTS, "show-42", None, None, 1000)
        after = await conn.fetch(sql.EVENT_SLOTS, "show-42", "A-250", "confirmed", 1000)
        free = await conn.fetch(sql.EVENT_SLOTS, "show-42", None, "free", 1000)
    finally:
        await conn.close()

    assert accesses(plan, "hold_slots") == {sql.ONE_ACTIVE_HOLD_PER_SLOT}, json.dumps(plan, indent=1)
    scan = next(node for node in nodes(plan) if node.get("Relation Name") == "hold_slots")
    assert scan["Actual Rows"] == len(live), json.dumps(plan, indent=1)
    assert scan.get("Rows Removed by Filter", 0) == 0, json.dumps(plan, indent=1)
    # A few index and heap pages, not the thousand-odd that hold the event's history.
    touched = scan["Shared Hit Blocks"] + scan["Shared Read Blocks"]
    assert touched <= 12, json.dumps(plan, indent=1)
    assert [(r["slot_id"], r["status"]) for r in listed] == [
        ("A-1", "held"),
        ("A-2", "held"),
        ("A-250", "held"),
        ("A-499", "confirmed"),
        ("B-1", "confirmed"),
    ]
    assert [r["slot_id"] for r in after] == ["A-499", "B-1"]
    assert free == []


@pytest.mark.parametrize("mode", PLAN_CACHE_MODES)
async def test_retention_and_purge_reach_rows_by_index(database_url: str, mode: str) -> None:
    """The retention finds each kind of old hold by its partial index, oldest first, and its records by
    idempotency_keys_hold_id_idx; the purge finds old records by their creation time. No scan of a hot
    table, so a pass costs its batch, not the history."""
    conn = await asyncpg.connect(database_url)
    try:
        await claim_holds(conn, 20_000)
        await conn.execute(
            "INSERT INTO idempotency_keys (holder, key, request_hash, hold_id, status_code)"
            " SELECT holder, 'key-' || id, 'hash', id, 201 FROM holds"
        )
        # Analyzed: history worth retiring is large, and autovacuum has analyzed it by then (on a new database
        # a scan of the small tables is as good as any).
        await conn.execute("ANALYZE")
        retire = await plan_of(conn, "retire_holds", (604_800, 7_776_000, 1000, True), mode)
        purge = await plan_of(conn, "purge_idempotency_keys", (86_400, 1000), mode)
    finally:
        await conn.close()

    assert accesses(retire, "holds") == {
        "holds_cancelled_at_idx",
        "holds_expired_expires_at_idx",
        "holds_confirmed_at_idx",
        "holds_pkey",
    }, json.dumps(retire, indent=1)
    assert accesses(retire, "idempotency_keys") == {"idempotency_keys_hold_id_idx"}, json.dumps(
        retire, indent=1
    )
    # Slot rows are locked by the primary key's prefix, then deleted by their addresses.
    assert accesses(retire, "hold_slots") == {"hold_slots_pkey", "Tid Scan"}, json.dumps(retire, indent=1)
    assert accesses(purge, "idempotency_keys") <= {"idempotency_keys_created_at_idx", "Tid Scan"}, accesses(
        purge, "idempotency_keys"
    )
    assert accesses(purge, "holds") == {"holds_pkey"}, json.dumps(purge, indent=1)


@pytest.mark.parametrize("mode", PLAN_CACHE_MODES)
async def test_a_stream_snapshot_reads_live_and_blocked_seats_only(database_url: str, mode: str) -> None:
    """The live stream's snapshot (event_seat_states) reads the event's live seats through
    hold_slots_one_active_hold, as the seat map does, and its blocked seats through
    inventory_seats_blocked_idx: neither the event's history nor its sellable seats."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """
            INSERT INTO holds (id, token, event_id, holder, slots, status, created_at, expires_at)
            SELECT 'old-' || i, 'old-token-' || i, 'show-42', 'h', ARRAY['A-' || (i % 500)], 'expired',
                   now() - interval '1 day', now() - interval '1 day' + interval '5 minutes'
            FROM generate_series(1, 20000) AS i
            """
        )
        await conn.execute(
            "INSERT INTO hold_slots (hold_id, event_id, slot_id, status, expires_at)"
            " SELECT id, event_id, slots[1], status, expires_at FROM holds"
        )
        await conn.executemany(
            sql.CLAIM_HOLD,
            [
                claim_args(f"h{i}", f"t{i}", "show-42", "x", [s], 600_000, None, None, "")
                for i, s in enumerate(["A-5", "A-6", "A-7"])
            ],
        )
        await conn.execute(sql.CONFIRM_HOLD, "h2", "x", "")
        # The inventory after the claims: the claims here are the open event's plain ones.
        await conn.execute("INSERT INTO event_inventories (event_id, seats_total) VALUES ('show-42', 20000)")
        await conn.execute(
            "INSERT INTO inventory_seats (event_id, seat_id, blocked_reason, blocked_at)"
            " SELECT 'show-42', 'A-' || i, CASE WHEN i < 3 THEN 'desk' END, CASE WHEN i < 3 THEN now() END"
            " FROM generate_series(0, 19999) AS i"
        )
        await conn.execute("ANALYZE")
        plan = await plan_of(conn, "event_seat_states", ("show-42",), mode, analyze=True)
        states = await conn.fetch(sql.EVENT_SEAT_STATES, "show-42")
    finally:
        await conn.close()

    assert accesses(plan, "hold_slots") == {sql.ONE_ACTIVE_HOLD_PER_SLOT}, json.dumps(plan, indent=1)
    assert accesses(plan, "inventory_seats") == {"inventory_seats_blocked_idx"}, json.dumps(plan, indent=1)
    for node in nodes(plan):
        if node.get("Relation Name") in ("hold_slots", "inventory_seats"):
            assert node["Actual Rows"] == 3, json.dumps(plan, indent=1)
    assert {(r["seat_id"], r["state"]) for r in states} == {
        ("A-0", "blocked"),
        ("A-1", "blocked"),
        ("A-2", "blocked"),
        ("A-5", "held"),
        ("A-6", "held"),
        ("A-7", "confirmed"),
    }


@pytest.mark.parametrize("mode", PLAN_CACHE_MODES)
async def test_webhook_claim_reaches_due_deliveries_by_index_whatever_the_backlog(
    database_url: str, mode: str
) -> None:
    """A receiver down for a while leaves a backlog: 20,000 deliveries owed, two events of each of 10,000
    holds. The dispatcher's claim (run whenever the feed moves) finds the due ones through the endpoint's
    pending index, in its order (a sort of the whole backlog cost 26 ms a claim), and checks each hold's order
    by its own index; the outcome's statements find their row by primary key. No scan of the deliveries."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO webhook_endpoints (id, url, secret, created_at)"
            " VALUES ('ep-1', 'http://127.0.0.1:9/h', 'whsec_x', now() - interval '1 hour')"
        )
        await conn.execute(
            "INSERT INTO hold_events (id, type, hold_id, hold)"
            " SELECT i, CASE WHEN i <= 10000 THEN 'hold.created' ELSE 'hold.confirmed' END,"
            "        'h' || (i % 10000), '{}'::jsonb"
            " FROM generate_series(1, 20000) AS i"
        )
        assert await conn.fetchval(sql.FAN_OUT_WEBHOOK_DELIVERIES, 0, 20_000) == 20_000
        await conn.execute("ANALYZE")
        claim = await plan_of(conn, "claim_webhook_deliveries", (16, ["ep-1"], [3], 8, 15.0, 0.0), mode)
        delivered = await plan_of(conn, "webhook_delivered", ("ep-1", 7), mode)
        failed = await plan_of(conn, "webhook_attempt_failed", ("ep-1", 7, 1, 1.5, 86_400, 500, "x"), mode)
    finally:
        await conn.close()

    assert accesses(claim, "webhook_deliveries") == {
        "webhook_deliveries_due_idx",
        "webhook_deliveries_hold_idx",
        "Tid Scan",  # the leased rows, updated by their addresses
    }, json.dumps(claim, indent=1)
    assert accesses(claim, "hold_events") == {"hold_events_id_key"}, json.dumps(claim, indent=1)
    # (The endpoints are a handful of rows: read whole.)
    for plan in (delivered, failed):
        assert accesses(plan, "webhook_deliveries") == {"webhook_deliveries_pkey"}, json.dumps(plan, indent=1)


@pytest.mark.parametrize("mode", PLAN_CACHE_MODES)
async def test_webhook_claim_probes_each_holds_order_even_with_statistics_of_an_empty_queue(
    database_url: str, mode: str
) -> None:
    """Regression: the deliveries table is a queue, empty most of the time, and so are its statistics when a
    flash sale piles up a backlog. Planned with those, the claim's check of each hold's order (is an earlier
    event of this hold still owed?) became an anti join that read the endpoint's whole pending index for every
    candidate row: 13 ms a claim (28,000 buffers) at 3,600 owed, more Postgres CPU than the holds
    themselves. The check is a probe by endpoint, hold and event id, whatever the statistics say."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO webhook_endpoints (id, url, secret, created_at)"
            " VALUES ('ep-1', 'http://127.0.0.1:9/h', 'whsec_x', now() - interval '1 hour')"
        )
        await conn.execute("ANALYZE")  # while nothing is owed, as autovacuum last saw it
        await conn.execute(
            "INSERT INTO hold_events (id, type, hold_id, hold)"
            " SELECT i, CASE WHEN i <= 5000 THEN 'hold.created' ELSE 'hold.confirmed' END,"
            "        'h' || (i % 5000), '{}'::jsonb"
            " FROM generate_series(1, 10000) AS i"
        )
        assert await conn.fetchval(sql.FAN_OUT_WEBHOOK_DELIVERIES, 0, 10_000) == 10_000
        claim = await plan_of(
            conn, "claim_webhook_deliveries", (16, [], [], 8, 15.0, 0.0), mode, analyze=True
        )
    finally:
        await conn.close()

    probes = [node for node in nodes(claim) if node.get("Index Name") == "webhook_deliveries_hold_idx"]
    assert probes, json.dumps(claim, indent=1)
    for probe in probes:
        assert "hold_id" in probe["Index Cond"], json.dumps(probe, indent=1)
        assert probe["Actual Rows"] <= 1, json.dumps(probe, indent=1)  # per loop
    assert claim["Shared Hit Blocks"] < 1_000, json.dumps(claim, indent=1)
