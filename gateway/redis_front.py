"""The Redis front: leases on slots and units of general-admission pools, taken and dropped by the Lua
scripts in lua/, behind a circuit breaker. A blocked seat holds keys.BLOCKED_LEASE_VALUE instead of a lease.

Redis only filters. A "no" from Redis is a fast 409; a "yes" sends the request on to Postgres, which
decides; an error or a timeout sends it straight to Postgres and opens the breaker for a while.

Redis must not lie once trusted. This module gives the checks that keep it honest in-band, at no extra
round trip; gateway.lease_sync decides what to do about them:
- every new connection asks the server its run_id first, and a server other than the one this worker
  recovered against (a restart, an old snapshot, a failover) answers no call: the breaker opens, and its
  probe is a recovery (reload the scripts, then the reconciler's `on_recovery` work) before trust;
- acquire.lua judges an event only if the event's sync marker holds that run_id, else it answers
  NOT_SYNCED (a flush, an old snapshot, an event never synchronized on this instance).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, TypeVar, cast
from urllib.parse import quote

import redis.asyncio as redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from gateway import background, keys, metrics
from gateway.breaker import CircuitBreaker
from gateway.bulkhead import Bulkhead
from gateway.config import Settings
from gateway.errors import GatewayError, Overloaded
from gateway.redis_pipe import PipelinedRedis, run_id_of
from gateway.resources import resource_dir

log = logging.getLogger(__name__)

SCRIPT_NAMES: Final = ("acquire", "extend", "release", "sync_pool", "sync_blocked")


# What the scripts take as ARGV.
ScriptArg = str | int

# What a Redis that is down, restarting or cut off looks like to the client. uvloop raises RuntimeError
# ("the handler is closed") for a write on a connection that was reset under it, before redis-py notices.
REDIS_FAILURES: Final = (RedisError, OSError, RuntimeError)

# How long a readiness check waits for a recovery it started before answering with the mode as it stands.
RECOVERY_WAIT_S = 1.0

# Connections the pool opens at start when the pipe carries the scripts (else: all of them).
WARM_POOL_WITH_PIPE = 8

# Pool entries per sync_pool.lua call, and seats per sync_blocked.lua call: one call blocks Redis for as
# long as it runs, so a big pool or a big block of seats goes in several.
SYNC_BATCH = 1_000


class AcquireOutcome(IntEnum):
    """The first element of acquire.lua's reply."""

    ACQUIRED = 0
    CONFLICT = 1
    HELD_BY_HOLDER = 2
    REPLAY = 3
    KEY_REUSED = 4
    NOT_SYNCED = 5
    SOLD_OUT = 6
    UNKNOWN_POOL = 7


class RedisUnavailable(Exception):
    """Redis did not answer in time, or the breaker is open; the caller goes to Postgres."""


class RedisRestarted(RedisConnectionError):
    """A new connection found another Redis instance (run_id) than the one this worker recovered against."""


# The reconciler's part of a recovery, run once the scripts are loaded and before the breaker closes (drain
# the release outbox; after a restart or flush, rebuild). Raises on failure: the breaker stays open.
Synchronize = Callable[[], Awaitable[None]]


class UnexpectedReply(Exception):
    """A script answered with a code this code does not know: the Lua and the Python disagree."""


@dataclass(frozen=True, slots=True)
class Acquisition:
    """One new hold's part of an acquire.lua call (see RedisFront.acquire)."""

    lease: "Lease"
    pending_ttl_ms: int
    idempotency_record_key: str | None = None
    request_fp: str | None = None


@dataclass(frozen=True, slots=True)
class Extension:
    """One hold's part of an extend.lua call (see RedisFront.extend)."""

    lease: "Lease"
    ttl_ms: int
    idempotency_record_key: str | None = None
    request_fp: str | None = None
    set_missing: bool = True
    confirmed: bool = False


@dataclass(frozen=True, slots=True)
class Lease:
    """The leases of one hold: one key per slot (sorted by slot id), all holding `value`; and an entry
    `value` -> quantity in each pool it takes units from (sorted by pool id)."""

    event_id: str
    slots: Sequence[str]
    value: str
    slot_keys: list[str]
    pools: Sequence[tuple[str, int]] = ()  # (pool id, units)
    pool_keys: list[str] = field(default_factory=list)  # per pool: its hash key, then its expiry key

    @property
    def holder_fingerprint(self) -> str:
        return keys.parse_lease_value(self.value).holder_fingerprint

    @classmethod
    def build(  # noqa: PLR0917 - RedisFront.lease's arguments and the prefix, as callers pass them
        cls,
        prefix: str,
        event_id: str,
        slots: Sequence[str],
        token: str,
        holder: str,
        pools: Sequence[tuple[str, int]] = (),
    ) -> "Lease":
        """ValueError for a pool listed twice or a quantity under 1: the scripts would count it wrong."""
        ordered = sorted(slots)
        ordered_pools = sorted(pools)
        pool_ids = [pool_id for pool_id, _ in ordered_pools]
        if len(set(pool_ids)) != len(pool_ids):
            raise ValueError(f"a pool is listed twice: {pool_ids}")
        if any(quantity < 1 for _, quantity in ordered_pools):
            raise ValueError(f"a pool's quantity is under 1: {ordered_pools}")
        return cls(
            event_id=event_id,
            slots=ordered,
            value=keys.lease_value(token, holder),
            slot_keys=[keys.slot_key(prefix, event_id, slot) for slot in ordered],
            pools=ordered_pools,
            pool_keys=[
                key
                for pool_id in pool_ids
                for key in (
                    keys.pool_key(prefix, event_id, pool_id),
                    keys.pool_expiry_key(prefix, event_id, pool_id),
                )
            ],
        )

    def quantities(self) -> list[int]:
        return [quantity for _, quantity in self.pools]


@dataclass(frozen=True, slots=True)
class AcquireResult:
    outcome: AcquireOutcome
    conflicts: list[str]  # CONFLICT: the seats leased to other holds
    blocked: list[str] = field(default_factory=list)  # CONFLICT: the seats that are blocked
    short_pools: list[tuple[str, int]] = field(default_factory=list)  # SOLD_OUT: (pool id, units left)
    unknown_pools: list[str] = field(default_factory=list)  # UNKNOWN_POOL: pools Redis has no capacity for


@dataclass(frozen=True, slots=True)
class PoolSync:
    """One pool as Postgres has it, for sync_pools: its capacity and the live holds taking its units."""

    pool_id: str
    capacity: int  # units
    entries: Sequence[tuple[str, int, int | None]]  # (lease value, units, TTL ms; None: confirmed)


class RedisFront:
    def __init__(self, client: redis.Redis, settings: Settings, pipe: PipelinedRedis | None = None) -> None:
        self._client = client
        # The scripts' calls, pipelined over one connection; other commands (ping, adopt, stats) use the pool.
        self._pipe = pipe
        self._settings = settings
        self._prefix = settings.redis_key_prefix
        self.breaker = CircuitBreaker("redis", settings.redis_retry_interval_s, on_change=_mode_changed)
        self._synchronize: Synchronize | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._sentinel: Sentinel | None = None  # behind Sentinel: who says where the master is
        # The run_id of the Redis instance this worker recovered against: connections to any other are
        # refused, and acquire.lua judges an event only if its sync marker holds this value. None: accept
        # the first instance (at start, and inside a recovery, which then sets it).
        self._run_id: str | None = None
        # Bulkhead: calls wait here, never in the connection pool, so a burst larger than the pool queues
        # (and past redis_queue_timeout_s is shed as 503) instead of looking like a dead Redis.
        self._bulkhead = Bulkhead(
            settings.redis_max_connections,
            queue_timeout_s=settings.redis_queue_timeout_s,
            retry_after_s=settings.retry_after_s,
        )
        # Labelled children resolved once: `labels()` on every call is a measurable share of a rejection.
        self._call_seconds = {name: metrics.REDIS_CALL_SECONDS.labels(name) for name in SCRIPT_NAMES}
        # Registered per client (never per class or module: a script object binds to the first event loop).
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script((resource_dir("lua") / f"{name}.lua").read_text())
            for name in SCRIPT_NAMES
        }

    @classmethod
    async def open(cls, settings: Settings) -> "RedisFront":
        # A plain pool: every call waits for a permit at the bulkhead first, which has as many permits as
        # the pool has connections, so the pool itself never runs dry (and its blocking variant's
        # condition-variable wait would cost every call several microseconds for nothing).
        pool_options: dict[str, Any] = {
            "max_connections": settings.redis_max_connections,
            "socket_timeout": settings.redis_timeout_s,
            "socket_connect_timeout": settings.redis_connect_timeout_s,
            "retry": Retry(NoBackoff(), 0),  # no library retries: on failure, Postgres answers instead
            "retry_on_timeout": False,
            "health_check_interval": 0,
        }
        sentinel: Sentinel | None = None
        if settings.redis_url is not None:
            pipe_url = settings.redis_url
            pool: redis.ConnectionPool = redis.ConnectionPool.from_url(settings.redis_url, **pool_options)
        else:
            master = settings.redis_sentinel_master
            assert master is not None, "settings without a Redis: the gateway runs db-only"
            sentinel = _sentinel(settings)
            pipe_url = _credentials_url(settings)
            pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
                master, sentinel, password=settings.redis_password, db=settings.redis_db, **pool_options
            )
        front = cls(redis.Redis(connection_pool=pool), settings)
        front._sentinel = sentinel
        pool.connection_kwargs["redis_connect_func"] = front._check_pool_connection
        if settings.redis_pipeline and PipelinedRedis.supports(pipe_url):
            front._pipe = PipelinedRedis(
                pipe_url,
                timeout_s=settings.redis_timeout_s,
                connect_timeout_s=settings.redis_connect_timeout_s,
                check_instance=front._check_instance,
                resolve_address=None if sentinel is None else front._master_address,
            )
        await front.start()
        return front

    async def _master_address(self) -> tuple[str, int]:
        """Where Sentinel says the master is now (MasterNotFoundError, a connection error, if none knows)."""
        assert self._sentinel is not None
        assert self._settings.redis_sentinel_master is not None
        host, port = await self._sentinel.discover_master(self._settings.redis_sentinel_master)
        return str(host), int(port)

    def _check_instance(self, run_id: str) -> None:
        """Every new connection: refuse a Redis other than the one recovered against (see the module doc)."""
        if self._run_id is not None and run_id != self._run_id:
            raise RedisRestarted(f"redis restarted or failed over: run_id {run_id}, expected {self._run_id}")

    async def _check_pool_connection(self, connection: AbstractConnection) -> None:
        await connection.on_connect()
        await connection.send_command("INFO", "server")
        self._check_instance(run_id_of(await connection.read_response()))

    async def start(self) -> None:
        """Load the scripts (a Lua syntax error stops the boot) and open connections before traffic arrives.
        A Redis that is down now is not fatal: the gateway starts in db-only mode."""
        try:
            await self._learn_instance()
            await self.load_scripts()
            if self._pipe is not None:
                await self._pipe.execute("PING")
            # With the pipe, the pool serves only pings, adoptions and stats: a few connections will do.
            pool_size = self._settings.redis_max_connections
            await self._open_connections(
                pool_size if self._pipe is None else min(pool_size, WARM_POOL_WITH_PIPE)
            )
        except ResponseError:
            raise
        except REDIS_FAILURES as exc:
            self.breaker.record_failure(f"not reachable at start: {type(exc).__name__}: {exc}")

    def on_recovery(self, synchronize: Synchronize) -> None:
        """The reconciler's work before Redis is trusted again after an outage, a restart or a flush."""
        self._synchronize = synchronize

    @property
    def run_id(self) -> str | None:
        """The Redis instance this worker trusts (None before it first reached one)."""
        return self._run_id

    async def _learn_instance(self) -> None:
        """Ask Redis its run_id and trust that instance from now on (at start, and in a recovery)."""
        self._run_id = None  # the connection this opens must not be refused for being the new instance
        async with self._connection_slot():
            info = await self._client.info("server")
        self._run_id = str(info["run_id"])

    async def instance_marker(self) -> str | None:
        """The run_id recorded when the live leases were last rebuilt in bulk; None after a flush."""
        async with self._connection_slot():
            value = await self._client.get(keys.instance_key(self._prefix))
        return value.decode() if isinstance(value, bytes) else value

    async def set_instance_marker(self) -> None:
        async with self._connection_slot():
            await self._client.set(keys.instance_key(self._prefix), self._run_id or "")

    def _probe(self) -> "asyncio.Task[None] | None":
        """The breaker is open: if its interval has passed, recover in the background (one probe at a time)
        and return the recovery. The caller goes on to Postgres either way."""
        if not self.breaker.allow():
            return None
        self._recovery = asyncio.get_running_loop().create_task(self.recover(), name="redis-recovery")
        return self._recovery

    def probe_if_due(self) -> None:
        """With the breaker open, start a recovery if one is due (the sweeper's tick on an idle worker)."""
        if not self.breaker.is_closed:
            self._probe()

    async def recover(self) -> None:
        """Reconnect, learn which instance answers, reload the scripts (a restart or SCRIPT FLUSH loses them),
        run the reconciler's synchronization, and only then close the breaker."""
        try:
            # Connections opened before the outage may be dead (a restart): start afresh.
            await self._client.connection_pool.disconnect()
            if self._pipe is not None:
                await self._pipe.close()
            await self._learn_instance()
            await self.load_scripts()
            if self._synchronize is not None:
                await self._synchronize()
        except Overloaded:
            self.breaker.release_probe()
            return
        except asyncio.CancelledError:
            self.breaker.release_probe()
            raise
        except Exception as exc:  # whatever ends a recovery, the breaker must be able to probe again later
            if not isinstance(exc, (*REDIS_FAILURES, RedisUnavailable, GatewayError)):
                log.exception("redis recovery failed unexpectedly")
            self.record_failure("recovery", exc)
            return
        self.breaker.record_success()

    async def load_scripts(self) -> None:
        async with self._connection_slot():
            for script in self._scripts.values():
                script.sha = await self._client.script_load(script.script)

    async def _open_connections(self, count: int) -> None:
        # Open the whole pool now: a burst on cold connections pays connect time on the request path, and a
        # connect stretched by a busy event loop past its timeout would read as a Redis outage.
        await asyncio.gather(*(self._client.ping() for _ in range(count)))

    async def close(self) -> None:
        if self._recovery is not None:
            await background.stop(self._recovery)
        if self._pipe is not None:
            await self._pipe.close()
        await self._client.aclose(close_connection_pool=True)
        if self._sentinel is not None:
            await self._sentinel.aclose()

    @property
    def available(self) -> bool:
        """Whether the gateway is in redis-front mode (the breaker is closed)."""
        return self.breaker.is_closed

    async def ping(self) -> bool:
        """A round trip to Redis. With the breaker open, this starts the recovery if it is due, so an idle
        gateway notices that Redis is back; Redis counts as up only once it is trusted again."""
        if not self.breaker.is_closed:
            recovery = self._probe()
            if recovery is not None:
                # A quick recovery is reported at once; a long one (a big rebuild) goes on without the caller.
                with suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(recovery), RECOVERY_WAIT_S)
            return self.breaker.is_closed
        try:
            async with self._connection_slot():
                await self._client.ping()
        except REDIS_FAILURES as exc:
            self.record_failure("ping", exc)
            return False
        except Overloaded:
            return self.breaker.is_closed
        return True

    @asynccontextmanager
    async def _connection_slot(self) -> AsyncIterator[None]:
        await self._bulkhead.enter()
        try:
            yield
        finally:
            self._bulkhead.leave()

    async def acquire(
        self, lease: Lease, pending_ttl_ms: int, idempotency_record_key: str | None, request_fp: str | None
    ) -> AcquireResult:
        """Take pending leases on all slots and the units of all pools of `lease`, or report why not. Raises
        RedisUnavailable."""
        acquisition = Acquisition(lease, pending_ttl_ms, idempotency_record_key, request_fp)
        return (await self.acquire_all([acquisition]))[0]

    async def acquire_all(self, acquisitions: Sequence["Acquisition"]) -> list[AcquireResult]:
        """`acquire` for several new holds of one event, in one script call: each judged after those before
        it, as if alone. Raises RedisUnavailable (for all of them)."""
        event_ids = {acquisition.lease.event_id for acquisition in acquisitions}
        if len(event_ids) != 1:
            raise ValueError(f"one call acquires for one event (a hash tag), not {sorted(event_ids)}")
        keys_ = [keys.sync_key(self._prefix, acquisitions[0].lease.event_id)]
        args: list[ScriptArg] = [self._run_id or "", len(acquisitions)]
        for acquisition in acquisitions:
            lease = acquisition.lease
            keys_ += lease.slot_keys
            keys_ += lease.pool_keys
            request_fp = acquisition.request_fp if acquisition.idempotency_record_key is not None else None
            if request_fp:
                keys_.append(cast(str, acquisition.idempotency_record_key))
            args += [
                lease.value,
                lease.holder_fingerprint,
                acquisition.pending_ttl_ms,
                request_fp or "",
                len(lease.slots),
                len(lease.pools),
                *lease.quantities(),
            ]
        reply = await self._call("acquire", keys_, args)
        if reply == [AcquireOutcome.NOT_SYNCED.value]:
            return [AcquireResult(AcquireOutcome.NOT_SYNCED, [])] * len(acquisitions)
        if not isinstance(reply, list) or len(reply) != len(acquisitions):
            raise UnexpectedReply(f"acquire.lua returned {reply!r} for {len(acquisitions)} holds")
        return [_acquire_result(a.lease, verdict) for a, verdict in zip(acquisitions, reply, strict=True)]

    async def extend(
        self,
        lease: Lease,
        ttl_ms: int,
        idempotency_record_key: str | None = None,
        request_fp: str | None = None,
        *,
        set_missing: bool = True,
        confirmed: bool = False,
    ) -> int | None:
        """After the commit: stretch the leases and pool entries to `ttl_ms` and record the idempotency key;
        with `set_missing`, set leases and entries that lapsed meanwhile too (after a create; not after a
        confirm, which a cancel may have overtaken); with `confirmed`, the pool entries never lapse (the seat
        leases still take `ttl_ms`). How many seats are leased to the hold. Best effort: a failure leaves the
        pending leases and entries to lapse, and Postgres still turns rivals away."""
        extension = Extension(lease, ttl_ms, idempotency_record_key, request_fp, set_missing, confirmed)
        leased = await self.extend_all([extension])
        return None if leased is None else leased[0]

    async def extend_all(self, extensions: Sequence["Extension"]) -> list[int] | None:
        """`extend` for several holds of one event, in one script call: the seats leased to each, or None if
        Redis failed (best effort, as `extend`)."""
        event_ids = {extension.lease.event_id for extension in extensions}
        if len(event_ids) != 1:
            raise ValueError(f"one call extends the holds of one event (a hash tag), not {sorted(event_ids)}")
        keys_: list[str] = []
        args: list[ScriptArg] = [len(extensions)]
        for extension in extensions:
            lease = extension.lease
            keys_ += lease.slot_keys
            keys_ += lease.pool_keys
            recorded = extension.idempotency_record_key is not None and bool(extension.request_fp)
            if recorded:
                keys_.append(cast(str, extension.idempotency_record_key))
            args += [
                lease.value,
                max(1, extension.ttl_ms),
                len(lease.slots),
                cast(str, extension.request_fp) if recorded else "",
                self._settings.idempotency_retention_s * 1000,
                "1" if extension.set_missing else "0",
                len(lease.pools),
                "1" if extension.confirmed else "0",
                *lease.quantities(),
            ]
        try:
            reply = await self._call("extend", keys_, args)
        except (RedisUnavailable, Overloaded):
            return None
        if not (
            isinstance(reply, list)
            and len(reply) == len(extensions)
            and all(isinstance(leased, int) for leased in reply)
        ):
            raise UnexpectedReply(f"extend.lua returned {reply!r} for {len(extensions)} holds")
        return reply

    async def release(self, lease: Lease) -> int | None:
        """Drop the leases and pool entries still owned by `lease.value`; how many. Best effort: unreleased
        leases and entries lapse by their TTL (a confirmed hold's entries do not: the outbox sees to them)."""
        return await self._best_effort("release", *_release_call(lease))

    async def adopt(self, leases: Sequence[tuple[Lease, int]]) -> None:
        """Set leases for holds that Postgres says exist but Redis did not know about (it restarted, or a
        lease lapsed early), so the next rivals are turned away by Redis again. SET NX: never overwrite."""
        if not leases or not self.breaker.is_closed:
            return
        try:
            await self.set_leases(leases)
        except Overloaded:
            return
        except REDIS_FAILURES as exc:
            self.record_failure("adopt", exc)

    async def set_leases(self, leases: Sequence[tuple[Lease, int]]) -> None:
        """SET NX PX each lease, pipelined. Adoption, and the rebuild after a restart. Raises Redis errors."""
        async with self._connection_slot(), self._client.pipeline(transaction=False) as pipe:
            for lease, ttl_ms in leases:
                for key in lease.slot_keys:
                    pipe.set(key, lease.value, px=max(1, ttl_ms), nx=True)
            await pipe.execute()

    async def mark_synchronized(self, event_ids: Sequence[str]) -> None:
        """Set the events' sync markers to this instance's run_id: acquire.lua judges them from now on."""
        if not event_ids:
            return
        async with self._connection_slot(), self._client.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.set(keys.sync_key(self._prefix, event_id), self._run_id or "")
            await pipe.execute()

    async def release_leases(self, leases: Sequence[Lease]) -> int:
        """Compare-and-delete many leases, pipelined; how many were deleted. Raises RedisUnavailable (and
        opens the breaker) when Redis fails."""
        if not leases:
            return 0
        script = self._scripts["release"]
        try:
            async with self._connection_slot(), self._client.pipeline(transaction=False) as pipe:
                for lease in leases:
                    # Through the script object: the pipeline loads the script first if Redis lost it.
                    keys_, args = _release_call(lease)
                    await script(keys=keys_, args=args, client=pipe)
                replies = await pipe.execute()
        except REDIS_FAILURES as exc:
            self.record_failure("release", exc)
            raise RedisUnavailable(str(exc)) from exc
        return sum(int(r) for r in replies)

    async def _best_effort(self, name: str, keys_: list[str], args: Sequence[ScriptArg]) -> int | None:
        try:
            reply = await self._call(name, keys_, args)
        except (RedisUnavailable, Overloaded):
            return None
        if not isinstance(reply, int):
            raise UnexpectedReply(f"{name}.lua returned {reply!r}")
        return reply

    async def _call(self, name: str, keys_: list[str], args: Sequence[ScriptArg]) -> list[int] | int:
        if not self.breaker.is_closed:
            self._probe()
            raise RedisUnavailable("circuit open")
        await self._bulkhead.enter()
        started = time.perf_counter()
        try:
            reply: list[int] | int = await self._run_script(name, keys_, args)
        except REDIS_FAILURES as exc:
            self.record_failure(name, exc)
            raise RedisUnavailable(str(exc)) from exc
        finally:
            self._bulkhead.leave()
            self._call_seconds[name].observe(time.perf_counter() - started)
        return reply

    async def _run_script(self, name: str, keys_: list[str], args: Sequence[ScriptArg]) -> Any:
        script = self._scripts[name]
        if self._pipe is None:
            return await script(keys=keys_, args=args)
        try:
            return await self._pipe.execute("EVALSHA", script.sha, len(keys_), *keys_, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # Redis lost its scripts (a restart, SCRIPT FLUSH): redis-py loads the script and runs it again.
            return await script(keys=keys_, args=args)

    def record_failure(self, operation: str, exc: BaseException) -> None:
        """Redis failed `operation`: stop trusting it until a recovery."""
        reason = f"{operation} failed: {type(exc).__name__}: {exc}"
        log.warning("redis %s", reason)
        self.breaker.record_failure(reason)

    async def lease_values(self, slots: Sequence[tuple[str, str]]) -> list[str | None]:
        """The lease value on each (event id, slot id), None where there is none; one MGET per event, since
        an event's keys share a hash tag. For the Redis/Postgres agreement check, not the request path."""
        by_event: dict[str, list[int]] = {}
        for index, (event_id, _) in enumerate(slots):
            by_event.setdefault(event_id, []).append(index)
        values: list[str | None] = [None] * len(slots)
        try:
            async with self._connection_slot(), self._client.pipeline(transaction=False) as pipe:
                for event_id, indexes in by_event.items():
                    pipe.mget([keys.slot_key(self._prefix, event_id, slots[i][1]) for i in indexes])
                replies = await pipe.execute()
        except REDIS_FAILURES as exc:
            raise RedisUnavailable(str(exc)) from exc
        for indexes, reply in zip(by_event.values(), replies, strict=True):
            for i, value in zip(indexes, reply, strict=True):
                values[i] = value.decode() if isinstance(value, bytes) else value
        return values

    async def sync_pools(self, event_id: str, pools: Sequence[PoolSync]) -> None:
        """Make the event's pools in Redis those of `pools` (the reconciler, from Postgres): each one's
        capacity set, its listed holds' entries added where missing (entries there are kept: a request may
        be in flight) and its `used` recomputed; pools Redis knows and `pools` does not list are deleted.
        Entries whose TTL is over are left out. Raises Redis errors."""
        script = self._scripts["sync_pool"]
        listed = [pool.pool_id for pool in pools]
        index_key = keys.pools_key(self._prefix, event_id)
        async with self._connection_slot():
            async with self._client.pipeline(transaction=False) as pipe:
                for pool in pools:
                    # sync_pool.lua's triples, flat: lease value, units, TTL ms (-1: confirmed, never lapses).
                    triples: list[ScriptArg] = []
                    for value, quantity, ttl_ms in pool.entries:
                        if ttl_ms is None or ttl_ms > 0:
                            triples += [value, quantity, -1 if ttl_ms is None else ttl_ms]
                    # At least one call, with no entries if need be: it sets the capacity.
                    for start in range(0, max(1, len(triples)), 3 * SYNC_BATCH):
                        args = [pool.capacity, *triples[start : start + 3 * SYNC_BATCH]]
                        await script(keys=self._pool_keys(event_id, pool.pool_id), args=args, client=pipe)
                if listed:
                    pipe.sadd(index_key, *listed)
                pipe.smembers(index_key)
                replies = await pipe.execute()
            dropped = sorted({_text(member) for member in replies[-1]} - set(listed))
            if dropped:
                async with self._client.pipeline(transaction=False) as pipe:
                    for pool_id in dropped:
                        pipe.delete(*self._pool_keys(event_id, pool_id))
                    pipe.srem(index_key, *dropped)
                    await pipe.execute()

    async def sync_blocked(self, event_id: str, blocked: Sequence[str]) -> None:
        """Make the event's blocked seats in Redis exactly `blocked` (the reconciler, from Postgres): their
        slot keys hold keys.BLOCKED_LEASE_VALUE, over any lease; the seats no longer blocked get their slot
        key deleted (if it is still blocked). Raises Redis errors."""
        script = self._scripts["sync_blocked"]
        set_key = keys.blocked_key(self._prefix, event_id)
        to_block = sorted(set(blocked))
        async with self._connection_slot():
            members = await self._client.smembers(set_key)
            to_unblock = sorted({_text(member) for member in members} - set(to_block))
            calls: list[tuple[list[str], list[str]]] = [
                (to_block[i : i + SYNC_BATCH], []) for i in range(0, len(to_block), SYNC_BATCH)
            ]
            calls += [([], to_unblock[i : i + SYNC_BATCH]) for i in range(0, len(to_unblock), SYNC_BATCH)]
            if not calls:
                return
            async with self._client.pipeline(transaction=False) as pipe:
                for block, unblock in calls:
                    slot_keys = [keys.slot_key(self._prefix, event_id, seat) for seat in (*block, *unblock)]
                    args: list[ScriptArg] = [len(block), len(unblock), *block, *unblock]
                    await script(keys=[set_key, *slot_keys], args=args, client=pipe)
                await pipe.execute()

    async def invalidate(self, event_id: str) -> bool:
        """Delete the event's sync marker: acquire.lua answers NOT_SYNCED for it until the reconciler
        synchronizes it again (its inventory changed in Postgres). False if Redis failed (recorded) or this
        worker is overloaded: the marker may still stand."""
        try:
            async with self._connection_slot():
                await self._client.delete(keys.sync_key(self._prefix, event_id))
        except Overloaded:
            return False
        except REDIS_FAILURES as exc:
            # With the breaker already open the failure is known, and recording it again would let a second
            # recovery start beside the one in flight.
            if self.breaker.is_closed:
                self.record_failure("invalidate", exc)
            return False
        return True

    async def pool_state(self, event_id: str, pool_id: str) -> tuple[int, int] | None:
        """(capacity, used) of a pool as acquire.lua would judge it now: `used` less the entries that lapsed
        by Redis's clock and no acquire purged yet. None if Redis has no capacity for the pool. Read only, for
        the tests and the Redis/Postgres agreement check. Raises RedisUnavailable."""
        pool, expiry = self._pool_keys(event_id, pool_id)
        try:
            async with self._connection_slot(), self._client.pipeline(transaction=True) as pipe:
                pipe.time()
                pipe.hgetall(pool)
                pipe.zrangebyscore(expiry, "-inf", "+inf", withscores=True)
                (seconds, microseconds), fields, scores = await pipe.execute()
        except REDIS_FAILURES as exc:
            raise RedisUnavailable(str(exc)) from exc
        hash_ = {_text(name): int(value) for name, value in fields.items()}
        if "capacity" not in hash_:
            return None
        now_ms = seconds * 1000 + microseconds // 1000
        lapsed = sum(
            hash_.get(keys.pool_entry_field(_text(member)), 0) for member, score in scores if score <= now_ms
        )
        return hash_["capacity"], hash_.get("used", 0) - lapsed

    def _pool_keys(self, event_id: str, pool_id: str) -> list[str]:
        return [
            keys.pool_key(self._prefix, event_id, pool_id),
            keys.pool_expiry_key(self._prefix, event_id, pool_id),
        ]

    def idempotency_record_key(self, event_id: str, client_key_id: str, holder: str, key: str) -> str:
        return keys.idempotency_key(self._prefix, event_id, client_key_id, holder, key)

    def lease(
        self,
        event_id: str,
        slots: Sequence[str],
        token: str,
        holder: str,
        pools: Sequence[tuple[str, int]] = (),
    ) -> Lease:
        return Lease.build(self._prefix, event_id, slots, token, holder, pools)


def _sentinel(settings: Settings) -> Sentinel:
    """The Sentinels of GATEWAY_REDIS_SENTINELS, asked with the Redis budgets and no retries (discovery moves
    on to the next Sentinel by itself)."""
    return Sentinel(
        settings.sentinel_addresses,
        sentinel_kwargs={
            "password": settings.redis_sentinel_password,
            "socket_timeout": settings.redis_connect_timeout_s,
            "socket_connect_timeout": settings.redis_connect_timeout_s,
            "retry": Retry(NoBackoff(), 0),
        },
    )


def _credentials_url(settings: Settings) -> str:
    """The master's credentials and database as a URL without a host, for the pipelined client (which asks
    Sentinel for the host)."""
    password = "" if settings.redis_password is None else ":" + quote(settings.redis_password, safe="") + "@"
    return f"redis://{password}/{settings.redis_db}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _release_call(lease: Lease) -> tuple[list[str], list[ScriptArg]]:
    """release.lua's KEYS and ARGV for `lease`."""
    return [*lease.slot_keys, *lease.pool_keys], [lease.value, len(lease.slots), len(lease.pools)]


def _acquire_result(lease: Lease, reply: object) -> AcquireResult:
    """acquire.lua's reply, read; UnexpectedReply for one that the script cannot have given for `lease`."""
    if not isinstance(reply, list) or not reply:
        raise UnexpectedReply(f"acquire.lua returned {reply!r}")
    try:
        outcome = AcquireOutcome(int(reply[0]))
        details = [int(i) for i in reply[1:]]
        match outcome:
            case AcquireOutcome.CONFLICT:
                return AcquireResult(
                    outcome,
                    [_nth(lease.slots, i) for i in details if i > 0],
                    blocked=[_nth(lease.slots, -i) for i in details if i < 0],
                )
            case AcquireOutcome.SOLD_OUT:
                pairs = zip(details[::2], details[1::2], strict=True)
                return AcquireResult(
                    outcome, [], short_pools=[(_nth(lease.pools, j)[0], available) for j, available in pairs]
                )
            case AcquireOutcome.UNKNOWN_POOL:
                return AcquireResult(outcome, [], unknown_pools=[_nth(lease.pools, j)[0] for j in details])
            case _:
                return AcquireResult(outcome, [])
    except ValueError:
        raise UnexpectedReply(f"acquire.lua returned {reply!r}") from None


T = TypeVar("T")


def _nth(items: Sequence[T], position: int) -> T:
    """The item at a script's 1-based `position`; ValueError out of range."""
    if not 1 <= position <= len(items):
        raise ValueError(f"position {position} out of 1..{len(items)}")
    return items[position - 1]


def _mode_changed(redis_trusted: bool) -> None:
    if redis_trusted:
        log.info(
            "redis is back and in line with postgres: leaving db-only mode", extra={"mode": "redis-front"}
        )
    else:
        log.warning("db-only mode: holds are decided by postgres alone", extra={"mode": "db-only"})
    metrics.DEGRADED.set(0 if redis_trusted else 1)
    metrics.MODE_TRANSITIONS.labels("redis-front" if redis_trusted else "db-only").inc()
