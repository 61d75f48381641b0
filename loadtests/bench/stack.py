"""The servers a benchmark run starts: its own PostgreSQL and Redis, and the targets, each a process group.

Nothing here touches the machine's own Postgres (:5432) or Redis (:6379): every server listens on a free
port and keeps its data in the run's temporary directory.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import asyncpg
import httpx
import msgspec

from gateway.embedded import LocalPostgres, LocalRedis, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]  # where `python -m loadtests.bench.naive` resolves
CLK_TCK = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat counts CPU time in clock ticks
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 10


class BenchError(RuntimeError):
    """The benchmark cannot go on: a server did not start, a precondition failed."""


# --- CPU time of process trees ----------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks) of a live process: utime + stime of its own, plus cutime + cstime, the CPU of
    the children it has reaped. A backend that exits mid-run is gone from /proc, but its CPU lives on in
    its parent's cutime: without those two fields a sum over live processes would lose it."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 2 (comm) is in parentheses and may hold spaces; fields 3.. follow the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    parent, utime, stime, cutime, cstime = fields[1], fields[11], fields[12], fields[13], fields[14]
    return int(parent), int(utime) + int(stime) + int(cutime) + int(cstime)


def process_tree_cpu_s(root_pid: int) -> float:
    """CPU seconds (user + system) used so far by root_pid and all its descendants, dead ones included."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                parents[int(entry.name)], ticks[int(entry.name)] = stat
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += children.get(pid, [])
    return total / CLK_TCK


def machine_cpu_s() -> float:
    """CPU seconds all processes of the machine spent in user and system mode so far (/proc/stat's user,
    nice and system: interrupts are left out, as our own loopback traffic is much of them)."""
    with Path("/proc/stat").open() as stat:
        fields = stat.readline().split()  # cpu user nice system idle iowait irq softirq steal ...
    return (int(fields[1]) + int(fields[2]) + int(fields[3])) / CLK_TCK


# --- PostgreSQL and Redis -----------------------------------------------------------------------------------


class Flushed(msgspec.Struct, frozen=True, kw_only=True):
    """A database's transaction count once Postgres's lazily flushed statistics stopped changing."""

    transactions: int  # xact_commit + xact_rollback
    waited_s: float
    settled: bool  # False: still changing when the wait ran out


class Stack:
    """The run's own PostgreSQL (fsync off: a benchmark's data is throwaway) and Redis."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.postgres = LocalPostgres(root / "postgres", durable=False)
        self.redis = LocalRedis(root / "redis")

    def __enter__(self) -> Self:
        self.postgres.start()
        try:
            self.redis.start()
        except BaseException:
            self.postgres.stop("immediate")
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.redis.stop(timeout_s=5)
        finally:
            self.postgres.stop("immediate", timeout_s=10)

    @property
    def admin_dsn(self) -> str:
        return self.postgres.dsn

    def database_url(self, name: str) -> str:
        return f"{self.admin_dsn.rpartition('/')[0]}/{name}"

    async def create_database(self, name: str) -> str:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.database_url(name)

    async def drop_database(self, name: str) -> None:
        """Dropped once measured, so that no autovacuum of its leftovers runs during a later measurement."""
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def analyze(self, name: str) -> None:
        """Fresh planner statistics for a database, as autovacuum keeps them in a deployment that has been up
        for a while. Without them a table that was empty a minute ago can get plans that scan what it has
        grown to since (e.g. a whole index per request), and a run's result would depend on whether
        autovacuum (every 60 s) happened to analyze it before or during the run."""
        conn = await asyncpg.connect(self.database_url(name))
        try:
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    async def transactions(self, name: str, conn: asyncpg.Connection | None = None) -> int:
        """xact_commit + xact_rollback of a database, as flushed so far. Read from the admin database, so the
        reading itself is counted there, not in `name`."""
        own = conn is None
        conn = conn or await asyncpg.connect(self.admin_dsn)
        try:
            count = await conn.fetchval(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", name
            )
        finally:
            if own:
                await conn.close()
        return int(count or 0)

    async def flushed_transactions(
        self, name: str, *, quiet_s: float = 2.0, max_wait_s: float = 15.0, poll_s: float = 0.25
    ) -> Flushed:
        """Poll until the count has not changed for quiet_s (at most max_wait_s).

        Backends flush their counts at most once a second, an idle one only ~10 s after its last transaction,
        and every one when it exits. Stop the database's clients first: while one is connected the count can
        sit still for seconds and still be short.
        """
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            started = time.monotonic()
            last, last_change = await self.transactions(name, conn), started
            while (now := time.monotonic()) - started < max_wait_s:
                if now - last_change >= quiet_s:
                    return Flushed(transactions=last, waited_s=now - started, settled=True)
                await asyncio.sleep(poll_s)
                count = await self.transactions(name, conn)
                if count != last:
                    last, last_change = count, time.monotonic()
            return Flushed(transactions=last, waited_s=time.monotonic() - started, settled=False)
        finally:
            await conn.close()

    def postgres_cpu_s(self) -> float:
        """CPU seconds of the postmaster and every process it started (backends, walwriter, ...)."""
        assert self.postgres.pid is not None
        return process_tree_cpu_s(self.postgres.pid)

    def redis_cpu_s(self) -> float:
        assert self.redis.pid is not None
        return process_tree_cpu_s(self.redis.pid)

    async def versions(self) -> tuple[str, str]:
        """(PostgreSQL version, Redis version) as the servers report them."""
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            postgres = str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.redis.port)
        try:
            writer.write(b"INFO server\r\n")
            info = (await reader.readuntil(b"\r\n\r\n")).decode()
        finally:
            writer.close()
            await writer.wait_closed()
        redis = next(
            (line.split(":", 1)[1] for line in info.splitlines() if line.startswith("redis_version:")), "?"
        )
        return postgres, redis


# --- targets ------------------------------------------------------------------------------------------------


def _clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment without GATEWAY_* (the gateway refuses unknown ones; inherited ones would skew it)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    env.update(extra)
    return env


class Server:
    """A target: one server process (uvicorn's supervisor and its workers) in a process group of its own.

    Output goes to a file: a pipe nobody reads would fill up and stall the server's logging.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules, no shell
                self.argv,
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_ready(self, path: str, *, timeout_s: float = READY_TIMEOUT_S) -> bytes:
        """Poll GET path until 200; returns its body. A worker accepts connections only once its lifespan
        (pools, scripts) is up, so a 200 means at least one worker can serve."""
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise BenchError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(path)
                    if response.status_code == 200:
                        return response.content
                await asyncio.sleep(0.1)
        raise BenchError(f"{self.name} was not ready within {timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the group (uvicorn stops its workers), then SIGKILL to whatever is left after 10 s."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # workers that outlived their supervisor
        self.process.wait()
        self.process = None

    def cpu_s(self) -> float:
        """CPU seconds of the supervisor and its workers so far."""
        return process_tree_cpu_s(self.process.pid) if self.process is not None else 0.0

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def gateway_server(
    name: str,
    log_dir: Path,
    *,
    database_url: str,
    redis_url: str,
    key_prefix: str,
    workers: int,
    db_only: bool = False,
    access_log: bool = True,
) -> Server:
    """`gateway serve` as an operator runs it, with only the settings the benchmark means to set: every other
    one, the access log and the log level included, as shipped (`access_log=False` turns the log off)."""
    port = free_port()
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", str(workers)]
    if db_only:
        argv.append("--db-only")
    env = gateway_env(database_url, redis_url, key_prefix, access_log=access_log)
    return Server(name, argv, env, port, log_dir / f"{name}.log")


def gateway_env(
    database_url: str, redis_url: str, key_prefix: str, *, access_log: bool = True
) -> dict[str, str]:
    """The environment of a gateway process: every setting as shipped but these."""
    return _clean_env(
        {
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_REDIS_KEY_PREFIX": key_prefix,
            **({} if access_log else {"GATEWAY_ACCESS_LOG": "false"}),
            **_settings_under_trial(),
        }
    )


def _settings_under_trial() -> dict[str, str]:
    """BENCH_GATEWAY_SETTINGS="GATEWAY_X=1,GATEWAY_Y=2": settings every gateway target runs with, to try one
    against the defaults (a report made with it does not show the gateway as shipped)."""
    raw = os.environ.get("BENCH_GATEWAY_SETTINGS", "")
    return dict(pair.split("=", 1) for pair in raw.split(",") if pair)


def naive_server(name: str, log_dir: Path, *, database_url: str, workers: int) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "loadtests.bench.naive", "--port", str(port), "--workers", str(workers)]
    return Server(name, argv, _clean_env({"NAIVE_DATABASE_URL": database_url}), port, log_dir / f"{name}.log")


def bare_server(name: str, log_dir: Path, *, workers: int) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "loadtests.bench.bare", "--port", str(port), "--workers", str(workers)]
    return Server(name, argv, _clean_env({}), port, log_dir / f"{name}.log")


def receiver_server(name: str, log_dir: Path) -> Server:
    """The webhook receiver (receiver.py), a process of its own on the same cores as the target."""
    port = free_port()
    argv = [sys.executable, "-m", "loadtests.bench.receiver", "--port", str(port)]
    return Server(name, argv, _clean_env({}), port, log_dir / f"{name}.log")
