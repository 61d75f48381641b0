"""Query plans that must not depend on the planner's statistics."""

import asyncpg

from gateway import sql


async def test_confirm_cancel_and_expire_find_slot_rows_by_primary_key(database_url: str) -> None:
    """Regression: on a new database (no statistics yet), confirm read the whole of the partial unique
    index for every call, so confirms slowed down as live holds piled up."""
    conn = await asyncpg.connect(database_url)
    try:
        # Holds as the gateway makes them, one claim at a time, and no ANALYZE since.
        claims = [(f"h{i}", f"t{i}", "e", "x", [f"s{i}"], 600_000, None, None) for i in range(3000)]
        await conn.executemany(sql.CLAIM_HOLD, claims)
        await conn.execute("SET plan_cache_mode = force_generic_plan")  # as a prepared statement runs later
        plans = {
            name: "\n".join(
                row[0]
                for row in await conn.fetch(
                    "EXPLAIN "
                    + sql.QUERIES[name].replace("$1", arg).replace("$2", "'x'").replace("$3", "true")
                )
            )
            for name, arg in (("confirm_hold", "'h7'"), ("cancel_hold", "'h7'"), ("expire_holds", "100"))
        }
    finally:
        await conn.close()
    for name, plan in plans.items():
        assert "hold_slots_one_active_hold" not in plan, f"{name}:\n{plan}"
        assert "hold_slots_pkey" in plan, f"{name}:\n{plan}"
