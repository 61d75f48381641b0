"""The fault proxy against real Redis and PostgreSQL servers: each fault does what the chaos tests rely on."""

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.chaos.proxy import FaultProxy

_databases = itertools.count()
# What asyncpg raises when the connection goes away under it, depending on the moment.
PG_CONNECTION_LOST = (ConnectionError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


def _redis(url: str, timeout_s: float = 2.0) -> "redis.Redis":
    """A client that never retries, so a fault reaches the test as it happened."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0), retry_on_timeout=False
    )


async def _eventually(check: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture(name="redis_proxy")
async def fx_redis_proxy(redis_url: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.in_front_of(redis_url, protocol="redis") as proxy:
        yield proxy


@pytest.fixture(name="scratch_dsn", scope="module")
async def fx_scratch_dsn(postgres_admin_url: str) -> AsyncIterator[str]:
    """A database of this module's own, with a table `notes`, dropped after."""
    name = f"fault_proxy_{os.getpid()}_{next(_databases)}"
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    dsn = f"{postgres_admin_url.rpartition('/')[0]}/{name}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
    finally:
        await conn.close()
    yield dsn
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture(name="pg_proxy")
async def fx_pg_proxy(scratch_dsn: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.in_front_of(scratch_dsn, protocol="postgres") as proxy:
        yield proxy


async def _note(dsn: str, note_id: int) -> str | None:
    """The body of note note_id, read straight from the server (not through the proxy)."""
    conn = await asyncpg.connect(dsn)
    try:
        body: str | None = await conn.fetchval("SELECT body FROM notes WHERE id = $1", note_id)
    finally:
        await conn.close()
    return body


async def test_redis_passes_through(redis_proxy: FaultProxy, redis_url: str) -> None:
    key = f"proxy:{uuid.uuid4().hex}"
    client = _redis(redis_proxy.redis_url(redis_url))
    try:
        assert await client.ping() is True
        assert await client.set(key, "v", px=10_000) is True
        assert await client.get(key) == b"v"
        assert redis_proxy.open_connections == 1
    finally:
        await client.aclose()
    assert (redis_proxy.connections_accepted, redis_proxy.commands_seen(b"set")) == (1, 1)
    await _eventually(lambda: redis_proxy.open_connections == 0)


async def test_postgres_passes_through(pg_proxy: FaultProxy, scratch_dsn: str) -> None:
    conn = await asyncpg.connect(pg_proxy.postgres_dsn(scratch_dsn))
    try:
        assert await conn.fetchval("SELECT 40 + $1::int", 2) == 42
        assert await conn.fetchval("SELECT 40 + $1::int", 3) == 43
        assert await conn.fetchval("SELECT current_database()") == urlsplit(scratch_dsn).path[1:]
    finally:
        await conn.close()
    assert pg_proxy.startup_messages == 1
    assert pg_proxy.commands_seen(b"select 40 +") == 2  # one Parse, two executions
    await _eventually(lambda: pg_proxy.open_connections == 0)


async def test_commands_seen_counts_redis_commands_by_name(redis_proxy: FaultProxy, redis_url: str) -> None:
    client = _redis(redis_proxy.redis_url(redis_url))
    try:
        for _ in range(3):
            await client.ping()
        async with client.pipeline(transaction=False) as pipe:
            pipe.ping().ping().echo("x")
            await pipe.execute()  # pipelined: three commands in one chunk
    finally:
        await client.aclose()
    assert (redis_proxy.commands_seen(b"PING"), redis_proxy.commands_seen(b"ECHO")) == (5, 1)


async def test_latency_delays_open_connections_both_ways(redis_proxy: FaultProxy, redis_url: str) -> None:
    client = _redis(redis_proxy.redis_url(redis_url))
    try:
        await client.ping()
        redis_proxy.latency(100)
        started = time.monotonic()
        await client.ping()
        elapsed_s = time.monotonic() - started
    finally:
        await client.aclose()
    assert elapsed_s >= 0.199  # 100 ms there and 100 ms back


async def test_blackhole_freezes_the_link_until_healed(redis_proxy: FaultProxy, redis_url: str) -> None:
    client = _redis(redis_proxy.redis_url(redis_url), timeout_s=0.2)
    fresh = _redis(redis_proxy.redis_url(redis_url), timeout_s=0.2)
    try:
        await client.ping()
        redis_proxy.blackhole()
        with pytest.raises(RedisTimeoutError):
            await client.ping()
        redis_proxy.heal()
        assert await fresh.ping() is True
    finally:
        await client.aclose()
        await fresh.aclose()


async def test_blackhole_discards_what_the_server_sends(redis_proxy: FaultProxy, redis_url: str) -> None:
    channel = f"proxy:{uuid.uuid4().hex}"
    client = _redis(redis_proxy.redis_url(redis_url))
    direct = _redis(redis_url)
    try:
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(channel)
            assert (await pubsub.get_message(timeout=1.0) or {}).get("type") == "subscribe"
            redis_proxy.blackhole()
            assert await direct.publish(channel, "frozen") == 1
            assert await pubsub.get_message(timeout=0.2) is None
    finally:
        await client.aclose()
        await direct.aclose()


async def test_reset_breaks_open_connections_and_keeps_accepting(
    redis_proxy: FaultProxy, redis_url: str, pg_proxy: FaultProxy, scratch_dsn: str
) -> None:
    client = _redis(redis_proxy.redis_url(redis_url))
    conn = await asyncpg.connect(pg_proxy.postgres_dsn(scratch_dsn))
    try:
        await client.ping()
        redis_proxy.reset()
        pg_proxy.reset()
        with pytest.raises(RedisConnectionError):
            await client.ping()
        with pytest.raises(PG_CONNECTION_LOST):
            await conn.fetchval("SELECT 1")
        await _eventually(lambda: (redis_proxy.open_connections, pg_proxy.open_connections) == (0, 0))
        assert await client.ping() is True  # a new connection
        assert redis_proxy.connections_accepted == 2
    finally:
        await client.aclose()
        await conn.close()


async def test_refuse_resets_new_connections_until_healed(
    redis_proxy: FaultProxy, redis_url: str, pg_proxy: FaultProxy, scratch_dsn: str
) -> None:
    open_client = _redis(redis_proxy.redis_url(redis_url))
    client = _redis(redis_proxy.redis_url(redis_url))
    try:
        await open_client.ping()
        redis_proxy.refuse()
        pg_proxy.refuse()
        with pytest.raises(RedisConnectionError):
            await open_client.ping()
        with pytest.raises(RedisConnectionError):
            await client.ping()
        with pytest.raises(PG_CONNECTION_LOST):
            await asyncpg.connect(pg_proxy.postgres_dsn(scratch_dsn))
        assert (redis_proxy.connections_accepted, pg_proxy.connections_accepted) == (2, 1)
        assert (redis_proxy.open_connections, pg_proxy.open_connections) == (0, 0)
        redis_proxy.heal()
        assert await client.ping() is True
    finally:
        await open_client.aclose()
        await client.aclose()


async def test_drop_reply_redis_runs_the_command_but_loses_its_reply(
    redis_proxy: FaultProxy, redis_url: str
) -> None:
    key = f"proxy:{uuid.uuid4().hex}"
    client = _redis(redis_proxy.redis_url(redis_url))
    direct = _redis(redis_url)
    try:
        await client.ping()
        redis_proxy.drop_reply(b"SET")
        with pytest.raises(RedisConnectionError):
            await client.set(key, "lost reply", px=10_000)
        assert await direct.get(key) == b"lost reply"
        assert await client.set(key, "second", px=10_000) is True  # once only
        assert redis_proxy.commands_seen(b"SET") == 2
    finally:
        await client.aclose()
        await direct.aclose()


async def test_drop_reply_redis_with_latency_still_runs_the_command(
    redis_proxy: FaultProxy, redis_url: str
) -> None:
    """The cut waits for the server's answer, so a delayed command still reaches the server first."""
    key = f"proxy:{uuid.uuid4().hex}"
    client = _redis(redis_proxy.redis_url(redis_url))
    direct = _redis(redis_url)
    try:
        await client.ping()
        redis_proxy.latency(50)
        redis_proxy.drop_reply(b"SET")
        with pytest.raises(RedisConnectionError):
            await client.set(key, "late", px=10_000)
        assert await direct.get(key) == b"late"
    finally:
        await client.aclose()
        await direct.aclose()


async def test_drop_reply_redis_pipeline_runs_everything_up_to_the_command(
    redis_proxy: FaultProxy, redis_url: str
) -> None:
    keys = [f"proxy:{uuid.uuid4().hex}" for _ in range(3)]
    client = _redis(redis_proxy.redis_url(redis_url))
    direct = _redis(redis_url)
    try:
        redis_proxy.drop_reply(b"APPEND")
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(keys[0], "before", px=10_000).append(keys[1], "1").set(keys[2], "after", px=10_000)
            with pytest.raises(RedisConnectionError):
                await pipe.execute()
        assert await direct.mget(keys) == [b"before", b"1", None]
    finally:
        await direct.delete(keys[1])
        await client.aclose()
        await direct.aclose()


async def test_drop_reply_postgres_commit_commits(pg_proxy: FaultProxy, scratch_dsn: str) -> None:
    conn = await asyncpg.connect(pg_proxy.postgres_dsn(scratch_dsn))
    try:
        pg_proxy.drop_reply(b"COMMIT")
        with pytest.raises(PG_CONNECTION_LOST):
            async with conn.transaction():
                await conn.execute("INSERT INTO notes (id, body) VALUES (1, 'kept')")  # no "COMMIT" in it
    finally:
        await conn.close()
    assert await _note(scratch_dsn, 1) == "kept"
    assert pg_proxy.commands_seen(b"COMMIT") == 1


@pytest.mark.parametrize("method", ["execute", "fetchrow"])
async def test_drop_reply_postgres_prepared_statement_runs_it(
    pg_proxy: FaultProxy, scratch_dsn: str, method: str
) -> None:
    note_id = 10 if method == "execute" else 11
    conn = await asyncpg.connect(pg_proxy.postgres_dsn(scratch_dsn))
    try:
        pg_proxy.drop_reply(b"INSERT INTO notes")
        run: Callable[..., Awaitable[object]] = getattr(conn, method)
        with pytest.raises(PG_CONNECTION_LOST):
            await run("INSERT INTO notes (id, body) VALUES ($1, $2) RETURNING id", note_id, method)
    finally:
        await conn.close()
    assert await _note(scratch_dsn, note_id) == method  # prepared in one round trip, cut on the execution


async def test_tcp_proxy_passes_through_and_cannot_drop_replies(redis_url: str) -> None:
    async with FaultProxy.in_front_of(redis_url) as proxy:
        with pytest.raises(ValueError, match="protocol"):
            proxy.drop_reply(b"SET")
        client = _redis(proxy.redis_url(redis_url))
        try:
            assert await client.ping() is True
        finally:
            await client.aclose()
        assert proxy.commands_seen(b"PING") == 0  # tcp reads nothing
