"""Migrations: named by rule, applied in order once, and producing the schema the code expects."""

import asyncpg
import pytest

from gateway.migrations import MIGRATION_NAME, MigrationError, load_migrations, migrate
from gateway.resources import resource_dir


def test_migration_files_are_named_and_numbered_in_order() -> None:
    names = sorted(path.name for path in resource_dir("migrations").iterdir())
    assert names
    assert all(MIGRATION_NAME.match(name) for name in names), names
    assert [m.version for m in load_migrations()] == list(range(1, len(names) + 1))


async def test_migrating_from_empty_gives_the_expected_schema(postgres_admin_url: str) -> None:
    admin = await asyncpg.connect(postgres_admin_url)
    await admin.execute("DROP DATABASE IF EXISTS migration_check WITH (FORCE)")
    await admin.execute("CREATE DATABASE migration_check")
    conn = await asyncpg.connect(postgres_admin_url.rpartition("/")[0] + "/migration_check")
    try:
        applied = await migrate(conn)
        again = await migrate(conn)
        tables = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
        )
        indexes = {
            r["indexname"]: r["indexdef"]
            for r in await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            )
        }
        constraints = {
            r["conname"]
            for r in await conn.fetch(
                "SELECT conname FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
            )
        }
    finally:
        await conn.close()
        await admin.execute("DROP DATABASE migration_check WITH (FORCE)")
        await admin.close()

    assert applied == [m.name for m in load_migrations()]
    assert again == []
    columns: dict[str, set[str]] = {}
    for row in tables:
        columns.setdefault(row["table_name"], set()).add(row["column_name"])
    assert columns == {
        "schema_migrations": {"version", "name", "applied_at"},
        "holds": {
            "id",
            "token",
            "event_id",
            "holder",
            "slots",
            "status",
            "created_at",
            "expires_at",
            "confirmed_at",
            "cancelled_at",
            "lease_release_due",
        },
        "hold_slots": {"hold_id", "event_id", "slot_id", "status", "expires_at"},
        "idempotency_keys": {"holder", "key", "request_hash", "hold_id", "status_code", "created_at"},
    }
    assert (
        "WHERE (status = ANY (ARRAY['held'::text, 'confirmed'::text]))"
        in indexes["hold_slots_one_active_hold"]
    )
    assert "UNIQUE" in indexes["hold_slots_one_active_hold"]
    assert {"holds_token_key", "hold_slots_hold_id_fkey", "hold_slots_one_active_hold"} - constraints == {
        "hold_slots_one_active_hold"  # a unique index, not a constraint
    }


async def test_a_database_ahead_of_the_code_is_refused(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (999, '0999_from_the_future')"
        )
        with pytest.raises(MigrationError, match="run a newer gateway"):
            await migrate(conn)
    finally:
        await conn.close()


async def test_claim_query_uses_the_partial_unique_index(database_url: str) -> None:
    """The rejection of a loser must be an index probe, not a scan: pin the slot lookup to its index."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET enable_seqscan = off")
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT 1 FROM hold_slots WHERE event_id = 'e' AND slot_id = 's' "
            "AND status IN ('held', 'confirmed')"
        )
    finally:
        await conn.close()
    assert "hold_slots_one_active_hold" in plan
