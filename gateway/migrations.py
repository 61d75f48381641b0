"""Applies db/migrations/NNNN_snake_description.sql in order, each in a transaction, under an advisory lock.

A small runner of our own: the migration tools that fit plain SQL files (yoyo, alembic) bring a second,
synchronous driver; this needs ~60 lines of asyncpg.
"""

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


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Every migration file, in order; a misnamed file or a gap in the numbering is an error."""
    directory = directory or resource_dir("migrations")
    migrations = []
    for path in sorted(directory.iterdir()):
        match = MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_description.sql")
        migrations.append(Migration(int(match.group(1)), path.stem, path.read_text()))
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise MigrationError(f"{migration.name}: expected version {expected:04d}")
    return migrations


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply pending migrations; return the names applied. Refuses a database newer than this code."""
    migrations = load_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_ID)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
        if current > len(migrations):
            raise MigrationError(
                f"the database is at migration {current}, this code knows only {len(migrations)}: "
                "run a newer gateway"
            )
        applied = []
        for migration in migrations[current:]:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("applied migration %s", migration.name)
            applied.append(migration.name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_ID)


async def migrate_url(database_url: str) -> list[str]:
    """Connect, migrate, disconnect."""
    conn = await asyncpg.connect(database_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
