"""Test support: run a gateway in-process behind a real uvicorn socket, and small helpers."""

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis.asyncio as redis
import uvicorn

from gateway import keys
from gateway.app import create_app
from gateway.cli import GRACEFUL_SHUTDOWN_S
from gateway.config import Settings
from gateway.embedded import LocalPostgres, free_port
from gateway.holds import HoldService
from gateway.migrations import migrate
from gateway.observability import ObservedLitestar


@dataclass
class Gateway:
    """A running gateway and what a test needs to poke at it."""

    url: str
    client: httpx.AsyncClient
    settings: Settings
    server: uvicorn.Server
    access_log_chunks: list[bytes] = field(default_factory=list)  # what its access log wrote, as written

    @property
    def service(self) -> HoldService:
        service: HoldService = self.server.config.loaded_app.app.state.holds  # type: ignore[union-attr]
        return service

    def access_lines(self) -> list[dict[str, Any]]:
        """The access log's JSON lines so far (what it had pending is written first)."""
        app: ObservedLitestar = self.server.config.loaded_app.app  # type: ignore[union-attr]
        if app.access_log is not None:
            app.access_log.flush()
        return [json.loads(line) for chunk in self.access_log_chunks for line in chunk.splitlines()]

    async def hold(
        self, event_id: str, slots: list[str], holder: str = "alice", **extra: Any
    ) -> httpx.Response:
        return await self.post("/v1/holds", {"event_id": event_id, "slots": slots, "holder": holder, **extra})

    async def post(self, path: str, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
        """POST on a connection of its own. httpx's pool slows down sharply with hundreds of connections
        opened at once (its bookkeeping grows with their square), which would make the storm the client's."""
        port = int(self.url.rpartition(":")[2])
        payload = json.dumps(body).encode()
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
            "Connection: close",
        ]
        head += [f"{name}: {value}" for name, value in (headers or {}).items()]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            raw = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
        status_line, _, rest = raw.partition(b"\r\n")
        header_block, _, content = rest.partition(b"\r\n\r\n")
        response_headers = [
            tuple(line.decode("latin-1").split(": ", 1)) for line in header_block.split(b"\r\n")
        ]
        return httpx.Response(int(status_line.split()[1]), headers=response_headers, content=content)


# How long a test gateway's lifespan shutdown may take after uvicorn's grace period, on a busy machine.
LIFESPAN_SHUTDOWN_BUDGET_S = 30

# Every periodic background reader kept out of a test's window (each costs statements per interval, whatever
# the requests): the background leader's renewal, its sweeper and hold event sequencer, each worker's
# client-key reload, its read of the feed's head on the LISTEN connection and the webhook dispatcher's look
# for due deliveries (which a busy worker would make every quarter of a second while it yields). Each still
# runs once, at start.
QUIET_BACKGROUND: dict[str, object] = {
    "background_lease_s": 3600.0,
    "sweep_interval_s": 3600.0,
    "client_keys_refresh_s": 60.0,
    "hold_events_interval_s": 60.0,
    "hold_events_resync_s": 3600.0,
    "webhook_poll_interval_s": 60.0,
    "webhook_yield_above_rps": 0.0,
}


async def fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    """`query`'s rows, on a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


# Every statement in the log, with its database and its connection's application_name (empty for none).
_STATEMENT_LOG_SETTINGS = {"log_statement": "all", "log_line_prefix": "%m [%p] db=%d app=%a "}
_LOGGED_STATEMENT = re.compile(r" db=(\S+) app=(\S*) LOG:  (?:statement|execute [^:]*): (.*)$")


def statement_logging_postgres(data_dir: Path) -> LocalPostgres:
    """A throwaway Postgres that logs every statement (start it with `with`); read with
    statements_logged_since."""
    return LocalPostgres(data_dir, durable=False, settings=_STATEMENT_LOG_SETTINGS)


@dataclass(frozen=True)
class LoggedStatement:
    app: str  # the connection's application_name
    first_line: str  # of the statement


def statements_logged_since(log_path: Path, offset: int, database: str) -> list[LoggedStatement]:
    """The statements run in `database` that the log has past byte `offset`."""
    with log_path.open(encoding="utf-8", errors="replace") as log:
        log.seek(offset)
        return [
            LoggedStatement(m.group(2), m.group(3).strip())
            for line in log
            if (m := _LOGGED_STATEMENT.search(line.rstrip("\n"))) and m.group(1) == database
        ]


async def migrated_database(server: LocalPostgres, name: str) -> str:
    """A new database `name` on `server`, migrated; its URL."""
    admin = await asyncpg.connect(server.dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    url = server.dsn.rpartition("/")[0] + "/" + name
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return url


@asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    """Serve create_app(settings) on a free port in this event loop, with a client of generous limits."""
    port = free_port()
    access_log_chunks: list[bytes] = []
    config = uvicorn.Config(
        create_app(settings, access_log_sink=access_log_chunks.append),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        access_log=False,
        loop="none",
        backlog=4096,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(400):
        if server.started or task.done():
            break
        await asyncio.sleep(0.025)
    if not server.started:
        server.should_exit = True
        await task
        raise RuntimeError("the gateway did not start")
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as client:
        try:
            gateway = Gateway(f"http://127.0.0.1:{port}", client, settings, server, access_log_chunks)
            if settings.redis_url and await _listening(settings.redis_url):
                # On a busy machine a call at start can outlast the Redis timeout, and the gateway then
                # starts in db-only mode until its first probe: tests that have a Redis mean to use it.
                await trusted_again(gateway)
            yield gateway
        finally:
            server.should_exit = True
            try:
                # uvicorn gives requests still running GRACEFUL_SHUTDOWN_S, cancels them, then runs the
                # lifespan's shutdown: wait for all of it. A forced exit skips that shutdown and leaves the
                # app's background tasks running in the session's loop (they log into later tests and hold
                # their connections until the loop closes): only a shutdown that hangs is forced.
                await asyncio.wait_for(asyncio.shield(task), GRACEFUL_SHUTDOWN_S + LIFESPAN_SHUTDOWN_BUDGET_S)
            except TimeoutError:
                server.force_exit = True
                await task


async def _listening(redis_url: str) -> bool:
    """Whether something accepts connections at the Redis URL's address."""
    address = redis_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def released_together(
    count: int, request: Callable[[int], Awaitable[httpx.Response]]
) -> list[httpx.Response]:
    """Fire `count` requests that all wait at one barrier before sending."""
    barrier = asyncio.Barrier(count)

    async def one(i: int) -> httpx.Response:
        await barrier.wait()
        return await request(i)

    return await asyncio.gather(*(one(i) for i in range(count)))


def statuses(responses: Iterable[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


async def active_holds_per_slot(database_url: str) -> dict[tuple[str, str], int]:
    """(event, slot) -> number of live holds on it, per Postgres; more than 1 anywhere is two winners."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """
            SELECT h.event_id, s.slot, count(*) AS holds
            FROM holds AS h, unnest(h.slots) AS s (slot)
            WHERE h.status = 'confirmed' OR (h.status = 'held' AND h.expires_at > now())
            GROUP BY h.event_id, s.slot
            """
        )
    finally:
        await conn.close()
    return {(r["event_id"], r["slot"]): r["holds"] for r in rows}


async def redis_keys(url: str, prefix: str) -> list[str]:
    """Lease and idempotency keys under `prefix` (not the synchronization markers of the instance and of
    each event)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        found = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        markers = {keys.instance_key(prefix)} | {
            key for key in found if key == keys.sync_key(prefix, key.split("{", 1)[-1].split("}", 1)[0])
        }
        return sorted(key for key in found if key not in markers)
    finally:
        await client.aclose()


async def row_counts(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        return {
            table: await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed table names
            for table in ("holds", "hold_slots", "idempotency_keys")
        }
    finally:
        await conn.close()


async def trusted_again(gateway: Gateway, within_s: float = 30) -> None:
    """Wait until /ready says the gateway trusts Redis again (redis-front)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if (await gateway.client.get("/ready")).json()["mode"] == "redis-front":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still db-only after {within_s}s: {(await gateway.client.get('/ready')).json()}")


async def counters(gateway: Gateway) -> dict[str, int]:
    """The gateway's request counters since start (created, rejected by Redis or Postgres, ...)."""
    result: dict[str, int] = (await gateway.client.get("/v1/stats")).json()["counters"]
    return result


async def lease_of(client: redis.Redis, gateway: Gateway, event_id: str, slot_id: str) -> str | None:
    """The lease value on one slot, read straight from Redis."""
    value: str | None = await client.get(keys.slot_key(gateway.settings.redis_key_prefix, event_id, slot_id))
    return value


async def token_of(gateway: Gateway, hold_id: str) -> str:
    """A hold's lease token, read straight from Postgres."""
    conn = await asyncpg.connect(gateway.settings.database_url)
    try:
        token: str = await conn.fetchval("SELECT token FROM holds WHERE id = $1", hold_id)
    finally:
        await conn.close()
    return token


async def hold_on_slot(gateway: Gateway, event_id: str, slot_id: str) -> str | None:
    """The id of the live hold on a slot, from the operations seat map (the public slot route never shows
    hold ids); None when the slot is free."""
    headers = {}
    if gateway.settings.ops_token:
        headers["Authorization"] = f"Bearer {gateway.settings.ops_token}"
    page = (await gateway.client.get(f"/v1/events/{event_id}/slots", headers=headers)).json()
    for slot in page["slots"]:
        if slot["slot_id"] == slot_id and slot["state"] != "free":
            hold_id: str = slot["hold_id"]
            return hold_id
    return None


def claim_args(  # noqa: PLR0917 - claim_hold's own parameters, in its order
    hold_id: str,
    token: str,
    event_id: str,
    holder: str,
    slots: list[str],
    ttl_ms: int,
    key: str | None,
    request_hash: str | None,
    client_key_id: str,
) -> tuple[Any, ...]:
    """claim_hold's parameters for one event's seats, as the gateway's plain path sends them."""
    return (
        hold_id,
        token,
        event_id,
        holder,
        slots,
        ttl_ms,
        key,
        request_hash,
        client_key_id,
        [event_id] * len(slots),
        slots,
        None,
        None,
        True,
    )


async def rejected_by(gateway: Gateway, request: Awaitable[httpx.Response]) -> tuple[int, int, int]:
    """A request's status, and how many rejections Redis and Postgres counted for it."""
    before = await counters(gateway)
    response = await request
    after = await counters(gateway)
    return (
        response.status_code,
        after["rejected_by_redis"] - before["rejected_by_redis"],
        after["rejected_by_postgres"] - before["rejected_by_postgres"],
    )


async def eventually(
    condition: Callable[[], bool], within_s: float, failure: Callable[[], str] | str = "condition not met"
) -> None:
    """Poll `condition` until it holds, for up to `within_s` (a generous deadline, never a fixed sleep)."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {within_s} s: {failure() if callable(failure) else failure}")
        await asyncio.sleep(0.02)
