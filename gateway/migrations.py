"""Applies db/migrations/NNNN_snake_description.sql in order, each in a transaction, under an advisory lock.

Each applied file's sha256 is recorded; a database whose applied files differ from these is refused, since
a landed migration is immutable (a change to it would never reach the databases that already ran it).

A small runner of our own: the migration tools that fit plain SQL files (yoyo, alembic) bring a second,
synchronous driver; this needs ~100 lines of asyncpg.
"""

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from gateway.resources import resource_dir

log = logging.getLogger(__name__)

MIGRATION_NAME = re.compile(r"\A(\d{4})_[a-z0-9]+(?:_[a-z0-9]+)*\.sql\Z")
# Any constant works; it only has to be the same for every gateway process.
_ADVISORY_LOCK_ID = 0x6761_7465  # "gate"


class MigrationError(Exception):
    """The database cannot be brought to the schema this code expects."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    sha256: str  # hex digest of the file's bytes, recorded when applied: a landed migration never changes

    @property
    def file_name(self) -> str:
        return f"{self.name}.sql"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Every migration file, in order; a misnamed file or a gap in the numbering is an error."""
    directory = directory or resource_dir("migrations")
    migrations = []
    for path in sorted(directory.iterdir()):
        match = MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_description.sql")
        raw = path.read_bytes()
        migrations.append(
            Migration(int(match.group(1)), path.stem, raw.decode(), hashlib.sha256(raw).hexdigest())
        )
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise MigrationError(f"{migration.name}: expected version {expected:04d}")
    return migrations


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply pending migrations; return the names applied. Refuses a database newer than this code, and one
    whose applied migrations differ from these files."""
    migrations = load_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_ID)
    try:
        async with conn.transaction():
            current = await _check_applied(conn, migrations)
        applied = []
        for migration in migrations[current:]:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, sha256) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.sha256,
                )
            log.info("applied migration %s", migration.name)
            applied.append(migration.name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_ID)


async def _check_applied(conn: asyncpg.Connection, migrations: list[Migration]) -> int:
    """Bring the bookkeeping table to this code's shape and check the applied files against it; return the
    version the database is at. Runs in one transaction: a refusal leaves the table as it was."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    # Databases migrated before checksums were recorded have no such column.
    await conn.execute("ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS sha256 text")
    current: int = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
    if current > len(migrations):
        raise MigrationError(
            f"the database is at migration {current}, this code knows only {len(migrations)}: "
            "run a newer gateway"
        )
    by_version = {migration.version: migration for migration in migrations}
    recorded = await conn.fetch("SELECT version, name, sha256 FROM schema_migrations ORDER BY version")
    changed = []
    for row in recorded:
        migration = by_version.get(row["version"])
        if migration is None:
            raise MigrationError(
                f"the database records migration {row['name']}, which this code does not know"
            )
        if row["sha256"] is None:
            # Trust on first use: a migration applied before checksums were recorded is taken to be the
            # file as it is now; from here on any change to it is refused.
            await conn.execute(
                "UPDATE schema_migrations SET sha256 = $2 WHERE version = $1",
                migration.version,
                migration.sha256,
            )
            log.info("recorded the checksum of migration %s, applied before checksums were", migration.name)
        elif row["sha256"] != migration.sha256:
            changed.append(
                f"migration {migration.file_name} was changed after it was applied: "
                f"recorded sha256 {row['sha256']}, file has {migration.sha256}"
            )
    if changed:
        raise MigrationError("; ".join(changed) + " (restore the file; a change belongs in a new migration)")
    return current


async def migrate_url(database_url: str) -> list[str]:
    """Connect, migrate, disconnect."""
    conn = await asyncpg.connect(database_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
