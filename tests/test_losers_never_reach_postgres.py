"""While Redis is up, a rejected request costs Redis work only: counted from Postgres's own statement log."""

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.embedded import LocalPostgres
from tests.conftest import make_settings
from tests.support import (
    QUIET_BACKGROUND,
    Gateway,
    LoggedStatement,
    migrated_database,
    released_together,
    running_gateway,
    statement_logging_postgres,
    statements_logged_since,
    statuses,
)

CONTENDERS = 300


@pytest.fixture(scope="module", name="logging_postgres")
def fx_logging_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    """A Postgres of this module's own that logs every statement."""
    with statement_logging_postgres(tmp_path_factory.mktemp("logging-postgres")) as server:
        yield server


@pytest.fixture(name="logged_database")
async def fx_logged_database(logging_postgres: LocalPostgres, request: pytest.FixtureRequest) -> str:
    name = "counted_" + re.sub(r"\W", "_", request.node.name).lower()[:40]
    return await migrated_database(logging_postgres, name)


async def storm(
    gateway: Gateway, log_path: Path, database: str
) -> tuple[dict[int, int], list[LoggedStatement]]:
    """CONTENDERS holds on one free slot at once; the statuses, and the statements Postgres ran meanwhile."""
    await asyncio.sleep(0.3)  # let start-up statements (the first sweep) land in the log first
    offset = log_path.stat().st_size  # noqa: ASYNC240 - one stat, before the storm
    responses = await released_together(CONTENDERS, lambda i: gateway.hold("show-1", ["A-1"], holder=f"u{i}"))
    await asyncio.sleep(0.3)  # the log is written as statements run; leave a moment for the last lines
    return dict(statuses(responses)), statements_logged_since(log_path, offset, database)


async def test_losers_cost_no_postgres_statement_with_redis_in_front(
    logging_postgres: LocalPostgres, logged_database: str, redis_url: str, key_prefix: str
) -> None:
    # The background readers (the sweeper, the client keys' reload) are kept out of the storm's window, and
    # Redis gets a budget no busy machine's event-loop lag reaches: a timeout would send the storm to
    # Postgres by design (db-only mode), which is not what this test measures.
    settings = make_settings(
        logged_database,
        redis_url,
        key_prefix,
        **QUIET_BACKGROUND,
        redis_timeout_s=3.0,
    )
    async with running_gateway(settings) as gateway:
        counts, statements = await storm(
            gateway, logging_postgres.log_path, logged_database.rpartition("/")[2]
        )

    assert counts == {201: 1, 409: CONTENDERS - 1}
    # The winner's claim: one INSERT ... ON CONFLICT that claims the slot and inserts the hold (the group
    # commit's claim_holds_batch, a batch of one here: its first line is claim_hold's too). Before it, the
    # event's one synchronization on this Redis (its live holds' leases, its inventory's pools and blocked
    # seats, then its recently cancelled holds'), whoever asked first. None of the 299 losers reached
    # Postgres.
    first_lines = [statement.first_line for statement in statements]
    assert first_lines == [
        "(SELECT event_id, slots, token, holder, items,",
        "SELECT 'pool' AS kind, p.event_id, p.pool_id AS item_id, p.capacity, p.confirmed_units,",
        "SELECT cancelled_at, id, event_id, slots, token, holder, items",
        "WITH requested AS (",
    ], statements


async def test_the_counter_sees_every_loser_in_db_only_mode(
    logging_postgres: LocalPostgres, logged_database: str, key_prefix: str
) -> None:
    """The control for the test above: without Redis the same storm runs statements for every request."""
    settings = make_settings(
        logged_database, None, key_prefix, sweep_interval_s=3600.0, client_keys_refresh_s=60.0
    )
    async with running_gateway(settings) as gateway:
        counts, statements = await storm(
            gateway, logging_postgres.log_path, logged_database.rpartition("/")[2]
        )

    assert counts == {201: 1, 409: CONTENDERS - 1}
    assert len(statements) >= CONTENDERS


async def storm_of(
    gateway: Gateway, log_path: Path, database: str, request: Callable[[int], Awaitable[httpx.Response]]
) -> tuple[dict[int, int], list[LoggedStatement]]:
    """CONTENDERS `request`s at once; the statuses, and the statements Postgres ran meanwhile."""
    await asyncio.sleep(0.3)  # let earlier statements land in the log first
    offset = log_path.stat().st_size  # noqa: ASYNC240 - one stat, before the storm
    responses = await released_together(CONTENDERS, request)
    await asyncio.sleep(0.3)
    return dict(statuses(responses)), statements_logged_since(log_path, offset, database)


async def test_sold_out_and_blocked_losers_cost_no_postgres_statement(
    logging_postgres: LocalPostgres, logged_database: str, redis_url: str, key_prefix: str
) -> None:
    """Once a pool is sold out, a storm of requests for it is refused by Redis alone; so is a storm for a
    blocked seat."""
    settings = make_settings(
        logged_database,
        redis_url,
        key_prefix,
        **QUIET_BACKGROUND,
        redis_timeout_s=3.0,
    )
    database = logged_database.rpartition("/")[2]
    async with running_gateway(settings) as gateway:
        body = {"seats": ["A-1", "A-2"], "pools": [{"pool_id": "floor", "capacity": 3}]}
        assert (await gateway.client.put("/v1/events/ga/inventory", json=body)).status_code == 200
        await gateway.client.post("/v1/events/ga/seats/block", json={"seats": ["A-1"], "reason": "press"})
        sold = await gateway.post(
            "/v1/holds", {"holder": "first", "items": [{"event_id": "ga", "pool_id": "floor", "quantity": 3}]}
        )
        assert sold.status_code == 201, sold.text

        sold_out, sold_out_statements = await storm_of(
            gateway,
            logging_postgres.log_path,
            database,
            lambda i: gateway.post(
                "/v1/holds",
                {"holder": f"u{i}", "items": [{"event_id": "ga", "pool_id": "floor", "quantity": 1 + i % 2}]},
            ),
        )
        blocked, blocked_statements = await storm_of(
            gateway,
            logging_postgres.log_path,
            database,
            lambda i: gateway.hold("ga", ["A-1"], holder=f"v{i}"),
        )

    assert sold_out == {409: CONTENDERS}
    assert sold_out_statements == []
    assert blocked == {409: CONTENDERS}
    assert blocked_statements == []
