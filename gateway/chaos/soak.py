"""The chaos soak: a gateway under a mixed workload while a chaos loop injects one fault at a time.

It starts its own PostgreSQL and Redis (on free ports, in a temporary directory), fault proxies in front of
both, migrates, and runs `gateway serve` as a subprocess pointed at the
proxies. Clients then create holds on a few hot slots (with and without Idempotency-Key, some keys retried),
extend, confirm, cancel, read, and make deliberate mistakes, every request recorded in a History, while every
few seconds the chaos loop picks a fault and heals it after its duration. At the end everything is healed,
the gateway must become ready again, pending leases lapse, the sweeper marks the lapsed holds and the
sequencer numbers their events, and the history is checked against a snapshot of Postgres and Redis
(gateway.chaos.history). Seeded: the same seed makes the same choices (timing still varies from run to run).
"""

# The random choices are the workload's and the chaos loop's, seeded to be replayed: not security.
# ruff: noqa: S311

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncpg
import httpx
import redis.asyncio as redis

from gateway.chaos.history import (
    ConnectionCount,
    EventRecord,
    History,
    HoldRecord,
    IdempotencyRecord,
    LeaseRecord,
    Operation,
    OpKind,
    Report,
    Snapshot,
    Violation,
    check,
)
from gateway.chaos.proxy import FaultProxy
from gateway.embedded import LocalPostgres, LocalRedis, free_port
from gateway.migrations import migrate_url
from gateway.store import APPLICATION_NAME

KEY_PREFIX = "chaos"
# The gateway's settings the checker relies on; the rest are the defaults.
DB_POOL_MAX_SIZE = 20
REDIS_MAX_CONNECTIONS = 256
LEASE_PENDING_MS = 5_000
CONFIRMED_LEASE_MS = 3_600_000
REDIS_TIMEOUT_S = 0.3
# Holds live a few seconds, so expiry happens during the run; most extensions ask for as long again.
HOLD_TTL_S = (2, 6)
# The longest TTL, and the cap on a hold's life (no shorter, as the settings require): the recovery probe
# lives that long, past the snapshot; an extension asking for it would end past the cap (the hold is older
# than 0 s), so is refused with 409 lifetime-exceeded.
MAX_TTL_S = 30
DEFAULT_TTL_S = 5
MAX_HOLD_LIFETIME_S = MAX_TTL_S
# The share of extensions that ask for MAX_TTL_S.
PAST_THE_CAP = 0.2
# After the run, how long the sweeper and the sequencer get to mark every lapsed hold and number every event
# before the snapshot is read anyway (the checker then says what was left).
SETTLE_TIMEOUT_S = 60.0
# A client gives up on a request after this long: its outcome is then unknown.
CLIENT_TIMEOUT_S = 10.0
# Each epoch the workload moves to fresh events, so confirmed holds do not end the contention.
EPOCH_S = 8.0
SLOTS_PER_EVENT = 6
HOLDERS = tuple(f"holder-{i}" for i in range(6))


@dataclass(frozen=True)
class SoakOptions:
    minutes: float
    seed: int
    workers: int = 1
    clients: int = 8
    log: Callable[[str], None] = print


@dataclass
class SoakResult:
    report: Report
    seed: int
    gateway_log: str  # the lines of the gateway's output that say ERROR or Traceback
    snapshot: Snapshot  # what the history was checked against


@dataclass
class Servers:
    """The stores, the proxies in front of them, and what the faults need to reach them."""

    postgres: LocalPostgres
    redis_server: LocalRedis
    pg_proxy: FaultProxy
    redis_proxy: FaultProxy
    frozen: bool = False  # Redis is stopped by SIGSTOP right now

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_proxy.port}/postgres"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_proxy.port}/0"

    def proxies(self) -> list[FaultProxy]:
        return [self.pg_proxy, self.redis_proxy]


# --- faults -----------------------------------------------------------------------------------------------

Fault = Callable[[Servers, random.Random], Awaitable[str]]


async def _redis_kill(servers: Servers, rng: random.Random) -> str:
    down_s = rng.uniform(0.3, 1.5)
    servers.redis_server.kill(signal.SIGKILL)
    try:
        await asyncio.sleep(down_s)
    finally:
        await asyncio.to_thread(servers.redis_server.start)
    return f"down {down_s:.1f}s, restarted with its append-only file"


async def _redis_freeze(servers: Servers, rng: random.Random) -> str:
    frozen_s = rng.uniform(1.0, 3.0)
    servers.redis_server.kill(signal.SIGSTOP)
    servers.frozen = True
    try:
        await asyncio.sleep(frozen_s)
    finally:
        servers.redis_server.kill(signal.SIGCONT)
        servers.frozen = False
    return f"SIGSTOP for {frozen_s:.1f}s"


async def _redis_empty(servers: Servers, rng: random.Random) -> str:
    servers.redis_server.kill(signal.SIGKILL)
    try:
        data_dir = servers.redis_server.data_dir
        for name in ("appendonlydir", "appendonly.aof", "dump.rdb"):
            path = data_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        await asyncio.sleep(rng.uniform(0.2, 1.0))
    finally:
        await asyncio.to_thread(servers.redis_server.start)
    return "killed, data deleted, started empty"


async def _postgres_restart_fast(servers: Servers, rng: random.Random) -> str:
    await asyncio.to_thread(servers.postgres.restart, "fast")
    return "pg_ctl stop -m fast, start"


async def _postgres_restart_immediate(servers: Servers, rng: random.Random) -> str:
    await asyncio.to_thread(servers.postgres.restart, "immediate")
    return "pg_ctl stop -m immediate (crash recovery), start"


async def _postgres_terminate(servers: Servers, rng: random.Random) -> str:
    conn = await asyncpg.connect(servers.postgres.dsn)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE $1",
            APPLICATION_NAME + "%",  # the workers' pools and their listeners
        )
    finally:
        await conn.close()
    return f"pg_terminate_backend on {killed} backends"


def _proxy_fault(
    which: str, start: Callable[[FaultProxy, random.Random], str], duration_s: tuple[float, float]
) -> Fault:
    async def fault(servers: Servers, rng: random.Random) -> str:
        proxy = servers.redis_proxy if which == "redis" else servers.pg_proxy
        lasting_s = rng.uniform(*duration_s)
        detail = start(proxy, rng)
        try:
            await asyncio.sleep(lasting_s)
        finally:
            proxy.heal()
        return f"{detail} for {lasting_s:.1f}s"

    return fault


def _latency(proxy: FaultProxy, rng: random.Random) -> str:
    ms = int(REDIS_TIMEOUT_S * 1000) + rng.randint(100, 600)
    proxy.latency(ms, 100)
    return f"latency {ms}±100 ms"


def _blackhole(proxy: FaultProxy, rng: random.Random) -> str:
    proxy.blackhole()
    return "blackhole"


def _reset(proxy: FaultProxy, rng: random.Random) -> str:
    proxy.reset()
    return "reset connections"


def _drop(command: str) -> Callable[[FaultProxy, random.Random], str]:
    def start(proxy: FaultProxy, rng: random.Random) -> str:
        times = rng.randint(1, 3)
        proxy.drop_reply(command.encode(), times=times)
        return f"drop the next {times} replies to {command}"

    return start


PROCESS_FAULTS: dict[str, Fault] = {
    "redis-kill": _redis_kill,
    "redis-sigstop": _redis_freeze,
    "redis-restart-empty": _redis_empty,
    "postgres-restart-fast": _postgres_restart_fast,
    "postgres-restart-immediate": _postgres_restart_immediate,
    "postgres-terminate-backends": _postgres_terminate,
}
PROXY_FAULTS: dict[str, Fault] = {
    "redis-latency": _proxy_fault("redis", _latency, (1.0, 3.0)),
    "redis-blackhole": _proxy_fault("redis", _blackhole, (1.0, 2.0)),
    "postgres-blackhole": _proxy_fault("postgres", _blackhole, (1.0, 2.0)),
    "redis-reset": _proxy_fault("redis", _reset, (0.1, 0.5)),
    "postgres-reset": _proxy_fault("postgres", _reset, (0.1, 0.5)),
    "redis-drop-evalsha": _proxy_fault("redis", _drop("EVALSHA"), (1.0, 2.0)),
    "postgres-drop-commit": _proxy_fault("postgres", _drop("COMMIT"), (1.0, 2.0)),
}


async def chaos_loop(servers: Servers, history: History, rng: random.Random, until: float) -> None:
    """One fault at a time, a pause of a few seconds between them, until `until` (History time)."""
    faults = PROCESS_FAULTS | PROXY_FAULTS
    kinds = sorted(faults)
    while True:
        await asyncio.sleep(rng.uniform(1.5, 3.5))
        if history.now() >= until:
            return
        kind = rng.choice(kinds)
        started = history.now()
        try:
            detail = await faults[kind](servers, rng)
        except Exception as exc:  # a fault that could not be injected is noted, not fatal
            detail = f"injection failed: {type(exc).__name__}: {exc}"
        history.fault(kind, started, history.now(), detail)


async def heal_everything(servers: Servers) -> None:
    for proxy in servers.proxies():
        proxy.heal()
    if servers.frozen:
        servers.redis_server.kill(signal.SIGCONT)
        servers.frozen = False
    if servers.redis_server.pid is None:
        await asyncio.to_thread(servers.redis_server.start)
    if servers.postgres.pid is None:
        await asyncio.to_thread(servers.postgres.start)


# --- the workload -----------------------------------------------------------------------------------------


@dataclass
class Workload:
    client: httpx.AsyncClient
    history: History
    known: list[tuple[str, str]] = field(default_factory=list)  # (hold id, holder), newest last

    async def send(
        self,
        op: OpKind,
        method: str,
        path: str,
        *,
        body: object = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        **args: Any,
    ) -> Operation:
        entry = self.history.invoke(op, **args)
        try:
            if content is None and body is not None:
                response = await self.client.request(method, path, json=body, headers=headers)
            else:
                response = await self.client.request(method, path, content=content, headers=headers)
        except httpx.TransportError as exc:  # timeouts included: the request may have taken effect
            return self.history.unknown(entry, f"{type(exc).__name__}: {exc}")
        parsed: dict[str, Any] | None = None
        with contextlib.suppress(ValueError):
            decoded = response.json()
            parsed = decoded if isinstance(decoded, dict) else None
        self.history.complete(
            entry,
            response.status_code,
            parsed,
            replayed=response.headers.get("idempotent-replayed") == "true",
            retry_after="retry-after" in response.headers,
        )
        if entry.hold_id is not None and op == "create" and entry.status in (200, 201):
            self.known.append((entry.hold_id, args["holder"]))
            del self.known[:-100]
        return entry

    async def create(self, rng: random.Random) -> None:
        epoch = int(self.history.now() // EPOCH_S)
        event_id = f"e{epoch}-{rng.choice('ab')}"
        slots = rng.sample([f"s{i}" for i in range(SLOTS_PER_EVENT)], rng.choice((1, 1, 2)))
        holder = rng.choice(HOLDERS)
        body = {
            "event_id": event_id,
            "slots": slots,
            "holder": holder,
            "ttl_seconds": rng.randint(*HOLD_TTL_S),
        }
        args: dict[str, Any] = {
            "event_id": event_id,
            "slots": slots,
            "holder": holder,
            "ttl_seconds": body["ttl_seconds"],
        }
        if rng.random() < 0.5:
            await self.send("create", "POST", "/v1/holds", body=body, **args)
            return
        key = f"k-{rng.getrandbits(64):016x}"
        retries = 2 if rng.random() < 0.3 else 0  # a client that retries whatever the answer
        for attempt in range(4):
            entry = await self.send(
                "create",
                "POST",
                "/v1/holds",
                body=body,
                headers={"Idempotency-Key": key},
                idempotency_key=key,
                **args,
            )
            unsure = entry.outcome == "unknown" or (entry.status or 0) >= 500
            if not unsure and attempt >= retries:
                return
            await asyncio.sleep(rng.uniform(0.05, 0.5))

    async def transition(self, rng: random.Random, action: str) -> None:
        if not self.known:
            return
        hold_id, holder = rng.choice(self.known[-30:])
        await self.send(
            cast("OpKind", action),
            "POST",
            f"/v1/holds/{hold_id}/{action}",
            body={"holder": holder},
            hold_id=hold_id,
            holder=holder,
        )

    async def extend(self, rng: random.Random) -> None:
        if not self.known:
            return
        hold_id, holder = rng.choice(self.known[-30:])
        ttl_s = MAX_TTL_S if rng.random() < PAST_THE_CAP else rng.randint(*HOLD_TTL_S)
        await self.send(
            "extend",
            "POST",
            f"/v1/holds/{hold_id}/extend",
            body={"holder": holder, "ttl_seconds": ttl_s},
            hold_id=hold_id,
            holder=holder,
            ttl_seconds=ttl_s,
        )

    async def read(self, rng: random.Random) -> None:
        if not self.known:
            return
        hold_id, _ = rng.choice(self.known[-30:])
        await self.send("read", "GET", f"/v1/holds/{hold_id}", hold_id=hold_id)

    async def mistake(self, rng: random.Random) -> None:
        kind = rng.choice(
            [
                "bad-json",
                "bad-body",
                "bad-slots",
                "bad-ttl",
                "malformed-id",
                "bad-key",
                "bad-extend-ttl",
                "wrong-holder",
                "unknown-id",
            ]
        )
        good = {"event_id": "mistakes", "slots": ["m1"], "holder": "careless"}
        match kind:
            case "bad-json":
                await self.send("mistake", "POST", "/v1/holds", content=b'{"event_id": "x", ', mistake=kind)
            case "bad-body":
                await self.send(
                    "mistake", "POST", "/v1/holds", body={"event_id": "x", "slots": ["a"]}, mistake=kind
                )
            case "bad-slots":
                await self.send(
                    "mistake", "POST", "/v1/holds", body={**good, "slots": ["a", "a"]}, mistake=kind
                )
            case "bad-ttl":
                await self.send("mistake", "POST", "/v1/holds", body={**good, "ttl_seconds": 0}, mistake=kind)
            case "malformed-id":
                await self.send(
                    "mistake",
                    "POST",
                    "/v1/holds/not-an-id/confirm",
                    body={"holder": "careless"},
                    mistake=kind,
                )
            case "bad-key":
                await self.send(
                    "mistake",
                    "POST",
                    "/v1/holds",
                    body=good,
                    headers={"Idempotency-Key": "k" * 300},
                    mistake=kind,
                )
            case "bad-extend-ttl":
                if not self.known:
                    return
                hold_id, holder = rng.choice(self.known[-30:])
                await self.send(
                    "mistake",
                    "POST",
                    f"/v1/holds/{hold_id}/extend",
                    body={"holder": holder, "ttl_seconds": MAX_TTL_S + 1},
                    mistake=kind,
                    hold_id=hold_id,
                )
            case "wrong-holder":
                if not self.known:
                    return
                hold_id, _ = rng.choice(self.known[-30:])
                action = rng.choice(("confirm", "cancel", "extend"))
                await self.send(
                    "mistake",
                    "POST",
                    f"/v1/holds/{hold_id}/{action}",
                    body={"holder": "intruder"} | ({"ttl_seconds": 3} if action == "extend" else {}),
                    mistake=kind,
                    hold_id=hold_id,
                    action=action,
                )
            case _:
                hold_id = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(22))
                await self.send("mistake", "GET", f"/v1/holds/{hold_id}", mistake=kind, hold_id=hold_id)

    async def client_loop(self, rng: random.Random, until: float) -> None:
        actions: list[tuple[float, Callable[[random.Random], Awaitable[None]]]] = [
            (0.50, self.create),
            (0.14, lambda r: self.transition(r, "confirm")),
            (0.08, lambda r: self.transition(r, "cancel")),
            (0.10, self.extend),
            (0.08, self.read),
            (0.10, self.mistake),
        ]
        weights = [weight for weight, _ in actions]
        while self.history.now() < until:
            ((_, action),) = rng.choices(actions, weights)
            await action(rng)
            await asyncio.sleep(rng.uniform(0, 0.05))


# --- the gateway process ----------------------------------------------------------------------------------


def gateway_env(database_url: str, redis_url: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    env |= {
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_KEY_PREFIX": KEY_PREFIX,
        "GATEWAY_MIN_TTL_S": "1",
        "GATEWAY_MAX_TTL_S": str(MAX_TTL_S),
        "GATEWAY_DEFAULT_TTL_S": str(DEFAULT_TTL_S),
        "GATEWAY_MAX_HOLD_LIFETIME_S": str(MAX_HOLD_LIFETIME_S),
        "GATEWAY_REDIS_RETRY_INTERVAL_S": "0.5",
        "GATEWAY_LOG_FORMAT": "text",
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_ACCESS_LOG": "false",
    }
    return env


@contextlib.asynccontextmanager
async def gateway_process(
    servers: Servers, workers: int, log_path: Path
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with log_path.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603, ASYNC220 - this interpreter, no shell; returns at once
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", str(workers)],
            env=gateway_env(servers.database_url, servers.redis_url),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        if not await wait_ready(url, timeout_s=60, process=process):
            said = await asyncio.to_thread(log_path.read_text)
            raise RuntimeError(f"the gateway did not become ready; its output:\n{said}")
        yield url, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait)


async def wait_ready(
    url: str, timeout_s: float, process: subprocess.Popen[bytes], *, redis_front: bool = False
) -> bool:
    """Until /ready answers 200 (and, with redis_front, says Redis fronts Postgres again)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.TransportError, ValueError):
                response = await client.get("/ready")
                if response.status_code == 200 and (
                    not redis_front or response.json().get("mode") == "redis-front"
                ):
                    return True
            await asyncio.sleep(0.2)
    return False


# --- the snapshot -----------------------------------------------------------------------------------------


async def gateway_backends(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1", APPLICATION_NAME + "/%"
        )
        return count
    finally:
        await conn.close()


async def take_snapshot(servers: Servers, workers: int) -> Snapshot:
    """Connection counts sampled over a few idle seconds, then Redis's keys and Postgres's rows (both read
    directly, not through the proxies), read again until the feed has settled: no lapsed hold still held, no
    event unnumbered (or `SETTLE_TIMEOUT_S` has passed). Redis is read just before Postgres each time, so that
    a lease's PTTL and its hold's remaining life are compared at about the same instant."""
    backends: list[int] = []
    proxied: dict[str, list[int]] = {}
    for _ in range(3):
        backends.append(await gateway_backends(servers.postgres.dsn))
        proxied.setdefault("postgres proxy", []).append(servers.pg_proxy.open_connections)
        proxied.setdefault("redis proxy", []).append(servers.redis_proxy.open_connections)
        await asyncio.sleep(1)
    connections = [ConnectionCount("postgres backends", tuple(backends), DB_POOL_MAX_SIZE * workers)]
    bounds = {
        "postgres proxy": DB_POOL_MAX_SIZE * workers,
        "redis proxy": (REDIS_MAX_CONNECTIONS + 1) * workers,
    }
    connections += [ConnectionCount(name, tuple(samples), bounds[name]) for name, samples in proxied.items()]

    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        leases = await _read_leases(servers.redis_server.url)
        snapshot = await _read_postgres(servers.postgres.dsn, leases, tuple(connections))
        if snapshot.settled or time.monotonic() >= deadline:
            return snapshot
        await asyncio.sleep(0.2)


async def _read_leases(redis_url: str) -> tuple[LeaseRecord, ...]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        # Strings only: a pool's hash and sorted set, and the sets of pools and blocked seats, are no leases.
        scanned = client.scan_iter(match=f"{KEY_PREFIX}:*", count=1000, _type="string")
        names = [key async for key in scanned]
        async with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.get(name)
                pipe.pttl(name)
            replies = await pipe.execute()
    finally:
        await client.aclose()
    return tuple(
        LeaseRecord(name, value, pttl)
        for name, value, pttl in zip(names, replies[::2], replies[1::2], strict=True)
        if value is not None
    )


async def _read_postgres(
    dsn: str, leases: tuple[LeaseRecord, ...], connections: tuple[ConnectionCount, ...]
) -> Snapshot:
    """The holds, idempotency records and hold events, in one snapshot of the database: the feed and the
    holds it tells of are read as of one instant."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            holds = await conn.fetch(
                "SELECT id, token, event_id, holder, slots, status,"
                " (extract(epoch FROM expires_at - now()) * 1000)::bigint AS remaining_ms,"
                " expires_at, extensions, confirmed_at IS NOT NULL AS confirmed FROM holds"
            )
            records = await conn.fetch("SELECT holder, key, hold_id, status_code FROM idempotency_keys")
            events = await conn.fetch(
                "SELECT id, type, hold_id FROM hold_events WHERE id IS NOT NULL ORDER BY id"
            )
            unnumbered: int = await conn.fetchval("SELECT count(*) FROM hold_events WHERE id IS NULL")
    finally:
        await conn.close()
    return Snapshot(
        holds=tuple(
            HoldRecord(
                r["id"],
                r["token"],
                r["event_id"],
                r["holder"],
                tuple(r["slots"]),
                r["status"],
                r["remaining_ms"],
                r["expires_at"],
                r["extensions"],
                r["confirmed"],
            )
            for r in holds
        ),
        leases=leases,
        idempotency=tuple(
            IdempotencyRecord(r["holder"], r["key"], r["hold_id"], r["status_code"]) for r in records
        ),
        key_prefix=KEY_PREFIX,
        confirmed_lease_ms=CONFIRMED_LEASE_MS,
        events=tuple(EventRecord(r["id"], r["type"], r["hold_id"]) for r in events),
        unnumbered_events=unnumbered,
        connections=connections,
    )


# --- the run ----------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def started_servers(root: Path) -> AsyncIterator[Servers]:
    postgres = LocalPostgres(root / "postgres", durable=False)
    redis_server = LocalRedis(root / "redis", persistent=True)
    await asyncio.to_thread(postgres.start)
    try:
        await asyncio.to_thread(redis_server.start)
        try:
            async with (
                FaultProxy("127.0.0.1", postgres.port, protocol="postgres") as pg_proxy,
                FaultProxy("127.0.0.1", redis_server.port, protocol="redis") as redis_proxy,
            ):
                yield Servers(postgres, redis_server, pg_proxy, redis_proxy)
        finally:
            if redis_server.pid is not None:
                redis_server.kill(signal.SIGCONT)
            await asyncio.to_thread(redis_server.stop)
    finally:
        await asyncio.to_thread(postgres.stop, "immediate")


async def run_soak(options: SoakOptions) -> SoakResult:
    log = options.log
    history = History()
    rng = random.Random(options.seed)
    root = Path(tempfile.mkdtemp(prefix="gateway-chaos-"))
    gateway_log = root / "gateway.log"
    extra: list[Violation] = []
    try:
        async with started_servers(root) as servers:
            await migrate_url(servers.postgres.dsn)
            log(
                f"chaos soak: seed {options.seed}, {options.minutes} min, "
                f"{options.workers} worker(s), with fault proxies"
            )
            async with gateway_process(servers, options.workers, gateway_log) as (url, process):
                limits = httpx.Limits(
                    max_connections=options.clients * 2, max_keepalive_connections=options.clients * 2
                )
                async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
                    workload = Workload(client, history)
                    until = history.now() + options.minutes * 60
                    clients = [
                        workload.client_loop(random.Random(rng.getrandbits(64)), until)
                        for _ in range(options.clients)
                    ]
                    chaos = chaos_loop(servers, history, random.Random(rng.getrandbits(64)), until - 2)
                    await asyncio.gather(chaos, *clients)
                    await heal_everything(servers)
                    log(f"workload done at {history.now():.1f}s; faults healed, waiting for the gateway")
                    if not await wait_ready(url, timeout_s=60, process=process, redis_front=True):
                        extra.append(
                            Violation("recovery", "/ready did not say 200 redis-front within 60 s of healing")
                        )
                    else:
                        probe = await workload.send(
                            "create",
                            "POST",
                            "/v1/holds",
                            body={
                                "event_id": "recovery",
                                "slots": ["probe"],
                                "holder": "probe",
                                "ttl_seconds": MAX_TTL_S,
                            },
                            event_id="recovery",
                            slots=["probe"],
                            holder="probe",
                            ttl_seconds=MAX_TTL_S,
                        )
                        if probe.status != 201:
                            extra.append(
                                Violation(
                                    "recovery", "a create on a free slot after healing", (probe.describe(),)
                                )
                            )
                    # Pending leases of requests that never committed lapse by now.
                    await asyncio.sleep(LEASE_PENDING_MS / 1000 + 1)
                    snapshot = await take_snapshot(servers, options.workers)
                if process.poll() is not None:
                    extra.append(Violation("gateway-alive", f"the gateway exited with {process.returncode}"))
        report = check(history, snapshot)
        report.violations += extra
        errors = _logged_errors(gateway_log.read_text(errors="replace"))
        if not report.ok:  # the whole log outlives the run's directory, for whoever debugs the violations
            kept = Path(tempfile.gettempdir()) / f"gateway-chaos-seed{options.seed}-{os.getpid()}.log"
            shutil.copyfile(gateway_log, kept)
            errors.append(f"(the gateway's whole output: {kept})")
        return SoakResult(report, options.seed, "\n".join(errors[-60:]), snapshot)
    finally:
        shutil.rmtree(root, ignore_errors=True)


_GATEWAY_FRAME = re.compile(r'File ".*/(gateway/[\w/]+\.py)", line (\d+), in (\w+)')
_EXCEPTION_LINE = re.compile(r"\A[A-Za-z_][\w.]*(:|\Z)")


def _logged_errors(output: str) -> list[str]:
    """The gateway's ERROR lines, each with the exception that ended its traceback (and the gateway's
    innermost frame it went through), if any."""
    errors: list[str] = []
    in_traceback = False
    frame = ""
    for line in output.splitlines():
        if line.startswith("Traceback"):
            in_traceback, frame = True, ""
        elif in_traceback and (where := _GATEWAY_FRAME.search(line)):
            frame = f" (at {where.group(1)}:{where.group(2)} in {where.group(3)})"
        elif in_traceback and _EXCEPTION_LINE.match(line):  # the exception (of each chained traceback)
            in_traceback = False
            errors.append(f"    {line}{frame}")
        elif "ERROR" in line or "CRITICAL" in line:
            errors.append(line)
    return errors


def main(minutes: float, seed: int | None, workers: int) -> int:
    """`gateway chaos`: run the soak, print the report; 0 only with no violation."""
    seed = random.SystemRandom().randrange(1 << 32) if seed is None else seed
    result = asyncio.run(run_soak(SoakOptions(minutes=minutes, seed=seed, workers=workers)))
    print(result.report.format())
    if result.gateway_log:
        print("gateway errors logged:\n" + result.gateway_log)
    verdict = "no violations" if result.report.ok else f"{len(result.report.violations)} violations"
    print(
        f"seed {seed}: {verdict} "
        f"(replay: gateway chaos --minutes {minutes} --seed {seed} --workers {workers})"
    )
    return 0 if result.report.ok else 1
