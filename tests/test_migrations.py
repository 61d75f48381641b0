"""Migrations: named by rule, applied in order once, immutable once applied, producing the expected schema."""

import hashlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway import sql
from gateway.migrations import MIGRATION_NAME, MigrationError, load_migrations, migrate
from gateway.resources import resource_dir
from tests.support import claim_args

# The bookkeeping table as runners before checksums created it.
OLD_BOOKKEEPING_TABLE = (
    "CREATE TABLE schema_migrations ("
    " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
)


@pytest.fixture(name="empty_database")
async def fx_empty_database(postgres_admin_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a new database with nothing in it, dropped after the test."""
    admin = await asyncpg.connect(postgres_admin_url)
    await admin.execute("DROP DATABASE IF EXISTS migration_check WITH (FORCE)")
    await admin.execute("CREATE DATABASE migration_check")
    conn = await asyncpg.connect(postgres_admin_url.rpartition("/")[0] + "/migration_check")
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute("DROP DATABASE migration_check WITH (FORCE)")
        await admin.close()


@pytest.fixture(name="migrations_dir")
def fx_migrations_dir(tmp_path: Path) -> Path:
    """A copy of the migration files, for a test to edit."""
    return Path(shutil.copytree(resource_dir("migrations"), tmp_path / "migrations"))


def file_sha256s(directory: Path) -> dict[int, str]:
    """version -> sha256 of the file's bytes, computed here rather than by the runner under test."""
    return {
        int(path.name[:4]): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


EDIT = b"\n-- an edit after the fact\n"


def edit_migration(directory: Path, index: int) -> tuple[Path, str, str]:
    """Append a comment to the index-th migration file: (its path, sha256 before, sha256 after)."""
    path = sorted(directory.iterdir())[index]
    before = path.read_bytes()
    path.write_bytes(before + EDIT)
    return path, hashlib.sha256(before).hexdigest(), hashlib.sha256(before + EDIT).hexdigest()


def restore_migration(path: Path) -> None:
    path.write_bytes(path.read_bytes().removesuffix(EDIT))


async def bookkeeping(conn: asyncpg.Connection) -> list[tuple[object, ...]]:
    return [tuple(row) for row in await conn.fetch("SELECT * FROM schema_migrations ORDER BY version")]


async def columns_of(conn: asyncpg.Connection, table: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = $1",
        table,
    )
    return {row["column_name"] for row in rows}


def test_migration_files_are_named_and_numbered_in_order() -> None:
    names = sorted(path.name for path in resource_dir("migrations").iterdir())
    assert names
    assert all(MIGRATION_NAME.match(name) for name in names), names
    assert [m.version for m in load_migrations()] == list(range(1, len(names) + 1))


async def test_migrating_from_empty_gives_the_expected_schema(empty_database: asyncpg.Connection) -> None:
    conn = empty_database
    applied = await migrate(conn)
    again = await migrate(conn)
    tables = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
    )
    indexes = {
        r["indexname"]: r["indexdef"]
        for r in await conn.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    }
    constraints = {
        r["conname"]
        for r in await conn.fetch(
            "SELECT conname FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
        )
    }
    recorded = dict(await conn.fetch("SELECT version, sha256 FROM schema_migrations"))

    assert applied == [m.name for m in load_migrations()]
    assert again == []
    assert recorded == file_sha256s(resource_dir("migrations"))
    columns: dict[str, set[str]] = {}
    for row in tables:
        columns.setdefault(row["table_name"], set()).add(row["column_name"])
    # The archive tables have the hot tables' columns, whatever a migration adds to those.
    archives = {
        table: columns.pop(table) for table in ("holds_archive", "hold_slots_archive", "hold_pools_archive")
    }
    assert archives == {
        "holds_archive": columns["holds"],
        "hold_slots_archive": columns["hold_slots"],
        "hold_pools_archive": columns["hold_pools"],
    }
    assert "hold_slots_archive_one_active_hold" not in indexes
    assert {"holds_archive_pkey", "hold_slots_archive_pkey", "hold_pools_archive_pkey"} <= constraints
    assert columns == {
        "schema_migrations": {"version", "name", "applied_at", "sha256"},
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
            "client_key_id",
            "items",
            "seat_count",
            "extensions",
        },
        "hold_slots": {"hold_id", "event_id", "slot_id", "status", "expires_at"},
        "idempotency_keys": {
            "client_key_id",
            "holder",
            "key",
            "request_hash",
            "hold_id",
            "status_code",
            "created_at",
        },
        "client_keys": {"id", "name", "key_sha256", "created_at"},
        "event_inventories": {
            "event_id",
            "per_holder",
            "per_hold",
            "seats_total",
            "redis_sync_due",
            "updated_at",
        },
        "inventory_seats": {"event_id", "seat_id", "blocked_reason", "blocked_at"},
        "inventory_pools": {"event_id", "pool_id", "capacity", "position", "held_units", "confirmed_units"},
        "hold_pools": {"hold_id", "event_id", "pool_id", "quantity", "status", "expires_at"},
        "hold_events": {"entry_id", "id", "type", "hold_id", "occurred_at", "hold"},
        "background_leader": {"id", "holder", "term", "redis_ok", "acquired_at", "expires_at"},
        "pod_identity": {"id", "pod", "buckets"},
        "pod_buckets": {"bucket", "map_version"},
        "webhook_endpoints": {
            "id",
            "url",
            "secret",
            "created_at",
            "delivered",
            "last_delivered_at",
            "last_error",
            "last_error_at",
        },
        "webhook_deliveries": {
            "endpoint_id",
            "event_id",
            "hold_id",
            "occurred_at",
            "retry_from",
            "status",
            "attempts",
            "next_attempt_at",
            "locked_until",
            "last_status",
            "last_error",
            "last_attempt_at",
        },
    }
    assert (
        "WHERE (status = ANY (ARRAY['held'::text, 'confirmed'::text]))"
        in indexes["hold_slots_one_active_hold"]
    )
    assert "UNIQUE" in indexes["hold_slots_one_active_hold"]
    assert {"holds_token_key", "hold_slots_hold_id_fkey", "hold_slots_one_active_hold"} - constraints == {
        "hold_slots_one_active_hold"  # a unique index, not a constraint
    }
    # How the sequencer finds a second copy of a hold's hold.expired.
    assert "WHERE (type = 'hold.expired'::text)" in indexes["hold_events_expired_hold_idx"]
    # What keeps a pool from being oversold whatever a statement does.
    assert "inventory_pools_not_oversold" in constraints
    # Webhook deliveries: one per event and endpoint, gone with their endpoint; the claim's and the per-hold
    # order's indexes cover pending rows only (failed ones wait for the operator).
    assert {"webhook_deliveries_pkey", "webhook_deliveries_endpoint_id_fkey"} <= constraints
    assert "WHERE (status = 'pending'::text)" in indexes["webhook_deliveries_due_idx"]
    assert "(endpoint_id, hold_id, event_id)" in indexes["webhook_deliveries_hold_idx"]
    assert {"background_leader_pkey", "background_leader_one_row"} <= constraints
    assert {"pod_identity_pkey", "pod_identity_one_row", "pod_buckets_pkey"} <= constraints


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


async def test_a_migration_changed_after_it_was_applied_is_refused_and_nothing_changes(
    empty_database: asyncpg.Connection, migrations_dir: Path
) -> None:
    conn = empty_database
    first_two = load_migrations(migrations_dir)[:2]
    await migrate(conn, first_two)
    before = await bookkeeping(conn)
    holds_columns_before = await columns_of(conn, "holds")
    edited, recorded_sha256, edited_sha256 = edit_migration(migrations_dir, 1)

    with pytest.raises(MigrationError) as refused:
        await migrate(conn, load_migrations(migrations_dir))

    assert str(refused.value) == (
        f"migration {edited.name} was changed after it was applied: "
        f"recorded sha256 {recorded_sha256}, file has {edited_sha256} "
        "(restore the file; a change belongs in a new migration)"
    )
    # Neither the bookkeeping nor the schema moved: the pending migrations were not applied.
    assert await bookkeeping(conn) == before
    assert await columns_of(conn, "holds") == holds_columns_before
    assert "lease_release_due" not in holds_columns_before  # what 0003 would have added
    # Restored, the file is accepted and the rest applies.
    restore_migration(edited)
    applied = await migrate(conn, load_migrations(migrations_dir))
    assert applied == [m.name for m in load_migrations(migrations_dir)[2:]]


async def test_an_old_bookkeeping_table_gets_checksums_on_first_run_then_enforces_them(
    empty_database: asyncpg.Connection, migrations_dir: Path
) -> None:
    """A database migrated before checksums were recorded: its table is upgraded in place, the applied files
    are trusted as they are now, and the pending ones applied."""
    conn = empty_database
    migrations = load_migrations(migrations_dir)
    # Migrated by the old runner up to the next-to-last migration.
    await conn.execute(OLD_BOOKKEEPING_TABLE)
    for migration in migrations[:-1]:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
    applied_at_before = dict(await conn.fetch("SELECT version, applied_at FROM schema_migrations"))

    applied = await migrate(conn, migrations)

    assert applied == [migrations[-1].name]
    assert await columns_of(conn, "schema_migrations") == {"version", "name", "applied_at", "sha256"}
    assert dict(await conn.fetch("SELECT version, sha256 FROM schema_migrations")) == file_sha256s(
        migrations_dir
    )
    applied_at_after = dict(await conn.fetch("SELECT version, applied_at FROM schema_migrations"))
    assert {v: applied_at_after[v] for v in applied_at_before} == applied_at_before
    # From now on a change to an applied file is refused.
    first, _, _ = edit_migration(migrations_dir, 0)
    with pytest.raises(MigrationError, match=f"migration {first.name} was changed after it was applied"):
        await migrate(conn, load_migrations(migrations_dir))


async def test_a_refused_first_run_leaves_an_old_bookkeeping_table_as_it_was(
    empty_database: asyncpg.Connection,
) -> None:
    """The column is added in the runner's transaction: a refusal (here, a database ahead) rolls it back."""
    conn = empty_database
    await conn.execute(OLD_BOOKKEEPING_TABLE)
    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (999, '0999_from_the_future')")

    with pytest.raises(MigrationError, match="run a newer gateway"):
        await migrate(conn)

    assert await columns_of(conn, "schema_migrations") == {"version", "name", "applied_at"}


async def test_holds_made_before_inventories_migrate_forward_in_place(
    empty_database: asyncpg.Connection,
) -> None:
    """A database at 0005 with live holds (one held, one confirmed) moves to inventories in place: the holds
    keep their seats, read as their one event's items, and confirm and cancel as before."""
    conn = empty_database
    before_inventories = [m for m in load_migrations() if m.version <= 5]
    await migrate(conn, before_inventories)
    await conn.execute(
        """
        INSERT INTO holds (id, token, event_id, holder, slots, status, expires_at, client_key_id)
        VALUES ('old-held', 't1', 'show-1', 'alice', '{A-1,A-2}', 'held', now() + interval '1 hour', ''),
               ('old-confirmed', 't2', 'show-1', 'bob', '{B-1}', 'confirmed', now() + interval '1 hour', '');
        INSERT INTO hold_slots (hold_id, event_id, slot_id, status, expires_at)
        SELECT id, event_id, unnest(slots), status, expires_at FROM holds;
        """
    )

    applied = await migrate(conn)
    rows = await conn.fetch("SELECT id, event_id, slots, items, seat_count FROM holds ORDER BY id")
    confirmed = await conn.fetchrow(sql.CONFIRM_HOLD, "old-held", "alice", "")
    cancelled = await conn.fetchrow(sql.CANCEL_HOLD, "old-confirmed", "bob", False, "")
    rival = await conn.fetchrow(
        sql.CLAIM_HOLD, *claim_args("new", "t3", "show-1", "carol", ["B-1"], 60_000, None, None, "")
    )

    assert [m.name for m in load_migrations() if m.version > 5] == applied
    assert [(r["id"], r["event_id"], list(r["slots"]), r["items"], r["seat_count"]) for r in rows] == [
        ("old-confirmed", "show-1", ["B-1"], None, None),
        ("old-held", "show-1", ["A-1", "A-2"], None, None),
    ]
    assert confirmed is not None
    assert (confirmed["changed"], confirmed["status"]) == (True, "confirmed")
    assert cancelled is not None
    assert (cancelled["changed"], cancelled["status"]) == (True, "cancelled")
    assert rival is not None
    assert rival["created"]
