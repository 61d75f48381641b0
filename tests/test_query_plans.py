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

PLAN_CACHE_MODES = ["force_custom_plan", "force_generic_plan"]

# A claim as the gateway sends it: a 22-character hold id, a token, two seats, 5 minutes, an Idempotency-Key,
# a client key.
CLAIM_ARGS = (
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
    claims = [(f"h{i}", f"t{i}", "show-42", "x", [f"A-{i}"], 600_000, None, None, "") for i in range(count)]
    await conn.executemany(sql.CLAIM_HOLD, claims)


async def plan_of(conn: asyncpg.Connection, name: str, args: tuple[Any, ...], mode: str) -> dict[str, Any]:
    """The plan of query `name`, run as a prepared statement with these arguments under plan_cache_mode."""
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
        explained = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE plan_check({', '.join(literals)})")
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
        owners = await plan_of(conn, "slot_owners", ("show-42", ["A-12", "A-13"]), mode)
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


async def test_confirm_cancel_and_expire_find_slot_rows_by_primary_key(database_url: str) -> None:
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
                ("expire_holds", (100,)),
            )
        }
    finally:
        await conn.close()
    for name, plan in plans.items():
        assert accesses(plan, "hold_slots") == {"hold_slots_pkey"}, f"{name}:\n{json.dumps(plan, indent=1)}"
