"""Fixtures: real PostgreSQL and Redis servers, a migrated template database, a gateway per test.

GATEWAY_TEST_DATABASE_URL / GATEWAY_TEST_REDIS_URL point the suite at existing servers (the database URL must
allow CREATE DATABASE). Unset, the suite starts its own on free ports from local binaries or the embedded
wheels. Neither is ever skipped: a server that cannot be reached or started fails the tests.
"""

import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.chaos.proxy import FaultProxy
from gateway.config import Settings, settings_from_env
from gateway.embedded import LocalPostgres, LocalRedis
from gateway.migrations import migrate
from tests.support import Gateway, running_gateway

TEMPLATE_DB = "gateway_test_template"
_database_numbers = itertools.count()
_OWN_BASETEMP = "_gateway_own_basetemp"


def pytest_configure(config: pytest.Config) -> None:
    """A temporary directory of this session's own (unless --basetemp names one): pytest's shared numbered
    ones are pruned by every later session, and a second suite run beside this one would delete the data
    directory of its Postgres, which then shuts down."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="gateway-tests-")
        setattr(config, _OWN_BASETEMP, config.option.basetemp)


def pytest_unconfigure(config: pytest.Config) -> None:
    own = getattr(config, _OWN_BASETEMP, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


@pytest.fixture(scope="session", name="postgres_admin_url")
def fx_postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A superuser URL of a Postgres the suite may create databases in."""
    configured = os.environ.get("GATEWAY_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    with LocalPostgres(tmp_path_factory.mktemp("postgres"), durable=False) as server:
        yield server.dsn


@pytest.fixture(scope="session", name="redis_url")
def fx_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("GATEWAY_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    with LocalRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


def _database_url(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session", name="template_database")
async def fx_template_database(postgres_admin_url: str) -> str:
    """A database migrated once per session; each test gets a copy."""
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(_database_url(postgres_admin_url, TEMPLATE_DB))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return TEMPLATE_DB


@asynccontextmanager
async def fresh_database(postgres_admin_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database, dropped after the block."""
    name = f"gateway_test_{os.getpid()}_{next(_database_numbers)}"
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_database}")
    finally:
        await admin.close()
    try:
        yield _database_url(postgres_admin_url, name)
    finally:
        admin = await asyncpg.connect(postgres_admin_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.fixture(name="database_url")
async def fx_database_url(postgres_admin_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test, dropped after it."""
    async with fresh_database(postgres_admin_url, template_database) as url:
        yield url


@pytest.fixture(name="key_prefix")
def fx_key_prefix() -> str:
    """A Redis namespace of this test's own: tests share a Redis server and never flush it."""
    return "t" + uuid.uuid4().hex[:12]


# Which route serves POST /v1/holds in the gateways the current test starts: the raw hot route (as shipped)
# or Litestar's (GATEWAY_HOT_ROUTES=false). Tests marked `both_create_paths` run once with each.
CREATE_PATHS = {"hot": True, "litestar": False}
_create_path = ["hot"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_create_paths"):
        metafunc.parametrize("create_path", list(CREATE_PATHS), indirect=True)


@pytest.fixture(autouse=True, name="create_path")
def fx_create_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """The route that serves POST /v1/holds in this test: make_settings reads it."""
    path: str = getattr(request, "param", "hot")
    _create_path[0] = path
    try:
        yield path
    finally:
        _create_path[0] = "hot"


def make_settings(database_url: str, redis_url: str | None, key_prefix: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "redis_key_prefix": key_prefix,
        "min_ttl_s": 1,
        "redis_retry_interval_s": 0.5,
        "hot_routes": CREATE_PATHS[_create_path[0]],
    }
    values.update(overrides)
    return settings_from_env({}, **values)


@pytest.fixture(name="settings")
def fx_settings(database_url: str, redis_url: str, key_prefix: str) -> Settings:
    return make_settings(database_url, redis_url, key_prefix)


@pytest.fixture(name="gateway")
async def fx_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    """A gateway with Redis in front."""
    async with running_gateway(settings) as gateway:
        yield gateway


@pytest.fixture(name="db_only_gateway")
async def fx_db_only_gateway(database_url: str, key_prefix: str) -> AsyncIterator[Gateway]:
    """A gateway with no Redis configured at all."""
    async with running_gateway(make_settings(database_url, None, key_prefix)) as gateway:
        yield gateway


@pytest.fixture(name="own_redis")
def fx_own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """A Redis for this test alone, to kill, freeze or restart."""
    with LocalRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture(name="redis_proxy")
async def fx_redis_proxy(own_redis: LocalRedis) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the test's own Redis."""
    async with FaultProxy.in_front_of(own_redis.url, protocol="redis") as proxy:
        yield proxy


@pytest.fixture(name="proxied_gateway")
async def fx_proxied_gateway(
    database_url: str, redis_proxy: FaultProxy, own_redis: LocalRedis, key_prefix: str
) -> AsyncIterator[Gateway]:
    """A gateway whose Redis is reached through a fault proxy."""
    settings = make_settings(
        database_url, redis_proxy.redis_url(own_redis.url), key_prefix, sweep_interval_s=0.2
    )
    async with running_gateway(settings) as gateway:
        yield gateway


@pytest.fixture(name="own_gateway")
async def fx_own_gateway(database_url: str, own_redis: LocalRedis, key_prefix: str) -> AsyncIterator[Gateway]:
    """A gateway on a Redis of this test's own, to kill or restart."""
    settings = make_settings(database_url, own_redis.url, key_prefix, sweep_interval_s=0.2)
    async with running_gateway(settings) as gateway:
        yield gateway


@pytest.fixture(name="direct")
async def fx_direct(own_redis: LocalRedis) -> AsyncIterator[redis.Redis]:
    """A client straight to the test's own Redis, past any proxy; it reconnects once after a restart."""
    client = redis.Redis.from_url(
        own_redis.url,
        decode_responses=True,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[redis.ConnectionError],
    )
    yield client
    await client.aclose()
