"""PostgreSQL access: the named queries of queries.sql over an asyncpg pool. Driver errors that mean "the
database cannot answer now" become BackendUnavailable here, with the driver error as __cause__."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from gateway import items, metrics, sql
from gateway.breaker import CircuitBreaker
from gateway.config import Settings
from gateway.errors import BackendUnavailable, Overloaded, StaleShardMap
from gateway.group_commit import GroupCommitter
from gateway.models import Hold, HoldStatus, SlotStateName

log = logging.getLogger(__name__)

# What a database that is down, restarting, overloaded or stuck looks like to asyncpg.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now, statement_timeout
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    asyncpg.exceptions.TransactionRollbackError,  # deadlock or serialization failure: retryable
    # A pooled connection whose server ended it (shutdown, pg_terminate_backend) a moment before it was used:
    # asyncpg is still reading the server's goodbye and refuses the statement with this.
    asyncpg.exceptions.InternalClientError,
)


# Events a worker remembers as having an inventory, at most.
INVENTORY_EVENTS_KEPT = 100_000
# What pg_stat_activity shows for the gateway's connections: this, then `/` and the worker's id
# (gateway.leader) for a worker's pool, so that an operator (and the server's log, with %a) sees which
# worker ran what.
APPLICATION_NAME = "reservation-gateway"
# Postgres keeps this much of an application_name (NAMEDATALEN - 1), silently cutting the rest.
APPLICATION_NAME_MAX_CHARS = 63


class ClaimOutcomeUnknown(Exception):
    """The claim was sent but no answer came back (connection lost, timed out): it may have committed.
    Resolved by running the same claim again with the same token (see HoldService)."""


def remaining_ms(expires_at: datetime, now: datetime) -> int:
    """Milliseconds from `now` to `expires_at`, never negative."""
    return max(0, int((expires_at - now).total_seconds() * 1000))


@dataclass(frozen=True, slots=True)
class HoldRow:
    """A hold as stored, with the database's clock at the time it was read."""

    id: str
    token: str
    event_id: str | None  # None: the hold spans several events
    holder: str
    slots: list[str]  # the seats of its one event
    status: HoldStatus
    created_at: datetime
    expires_at: datetime
    confirmed_at: datetime | None
    cancelled_at: datetime | None
    client_key_id: str  # the client key it belongs to; '' if made while the gateway was open
    db_now: datetime
    stored_items: object = None  # holds.items (see gateway.items); None for one event's seats
    extensions: int = 0  # times its expiry was moved by an extension

    @classmethod
    def from_record(cls, record: asyncpg.Record, prefix: str = "") -> "HoldRow":
        """From a row of the hold's columns, each named `prefix` + its name (db_now: unprefixed)."""
        return cls(
            id=record[prefix + "id"],
            token=record[prefix + "token"],
            event_id=record[prefix + "event_id"],
            holder=record[prefix + "holder"],
            slots=list(record[prefix + "slots"]),
            status=record[prefix + "status"],
            created_at=record[prefix + "created_at"],
            expires_at=record[prefix + "expires_at"],
            confirmed_at=record[prefix + "confirmed_at"],
            cancelled_at=record[prefix + "cancelled_at"],
            client_key_id=record[prefix + "client_key_id"],
            db_now=record["db_now"],
            stored_items=record[prefix + "items"],
            extensions=record[prefix + "extensions"],
        )

    @classmethod
    def from_event(cls, stored: dict[str, Any], occurred_at: datetime) -> "HoldRow":
        """From a hold event's copy of the holds row (hold_events.hold: to_jsonb, so timestamps are ISO 8601
        text), as it read when the event occurred."""

        def at(name: str) -> datetime | None:
            value = stored.get(name)
            return None if value is None else datetime.fromisoformat(value)

        return cls(
            id=stored["id"],
            token="",
            event_id=stored["event_id"],
            holder=stored["holder"],
            slots=list(stored["slots"]),
            status=stored["status"],
            created_at=datetime.fromisoformat(stored["created_at"]),
            expires_at=datetime.fromisoformat(stored["expires_at"]),
            confirmed_at=at("confirmed_at"),
            cancelled_at=at("cancelled_at"),
            client_key_id=stored["client_key_id"],
            db_now=occurred_at,
            stored_items=stored.get("items"),
            extensions=stored.get("extensions", 0),
        )

    @property
    def parts(self) -> list[items.EventPart]:
        """What the hold takes, per event."""
        return items.from_stored(self.event_id, self.slots, self.stored_items)

    @property
    def lapsed(self) -> bool:
        """Held, but past expires_at: it reads as expired even before the sweeper marks it."""
        return self.status == "held" and self.expires_at <= self.db_now

    @property
    def effective_status(self) -> HoldStatus:
        return "expired" if self.lapsed else self.status

    @property
    def remaining_ms(self) -> int:
        """Time left before expires_at, by the database's clock; 0 once past it."""
        return remaining_ms(self.expires_at, self.db_now)

    @property
    def ttl_ms(self) -> int | None:
        return self.remaining_ms if self.effective_status == "held" else None

    def to_model(self) -> Hold:
        return Hold(
            id=self.id,
            event_id=self.event_id,
            slots=self.slots,
            items=items.views(self.parts),
            holder=self.holder,
            status=self.effective_status,
            created_at=self.created_at,
            expires_at=self.expires_at,
            ttl_ms=self.ttl_ms,
            confirmed_at=self.confirmed_at,
            cancelled_at=self.cancelled_at,
            extensions=self.extensions,
        )


@dataclass(frozen=True, slots=True)
class SlotOwner:
    event_id: str  # of the seat
    slot_id: str
    hold: HoldRow


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    request_hash: str
    hold_id: str
    status_code: int


@dataclass(frozen=True, slots=True)
class ShortPool:
    event_id: str
    pool_id: str
    requested: int
    available: int


@dataclass(frozen=True, slots=True)
class HolderOverLimit:
    event_id: str
    limit: int
    held: int  # the holder's live units in the event before this request
    requested: int


@dataclass(frozen=True, slots=True)
class InventoryRefusal:
    """Why the inventories of a claim's events refused it (the claim was rolled back)."""

    unknown_seats: list[tuple[str, str]] = field(default_factory=list)  # (event id, seat id)
    unknown_pools: list[tuple[str, str]] = field(default_factory=list)  # (event id, pool id)
    over_per_hold: list[tuple[str, int, int]] = field(default_factory=list)  # (event id, limit, units)
    blocked_seats: list[tuple[str, str]] = field(default_factory=list)
    holder_over_limit: HolderOverLimit | None = None
    short_pools: list[ShortPool] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ClaimResult:
    created: bool
    # With an Idempotency-Key: whether this claim recorded it (false: the key was already used).
    idempotency_recorded: bool
    claimed_seats: list[tuple[str, str]]  # (event id, seat id)
    created_at: datetime | None
    expires_at: datetime | None
    db_now: datetime
    # Of a claim that lost, as its statement's snapshot saw them (a rival that committed after it started
    # is missing): the live holds owning requested seats, and the Idempotency-Key's record.
    owners: list[SlotOwner] = field(default_factory=list)
    prior_record: IdempotencyRecord | None = None
    # What the events' inventories refused, if they did (nothing was claimed).
    refusal: InventoryRefusal | None = None


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """A claim's arguments: a new hold's id and token, who, what and for how long."""

    hold_id: str
    token: str
    holder: str
    parts: Sequence[items.EventPart]
    ttl_ms: int
    idempotency_key: str | None
    request_hash: str | None
    client_key_id: str

    @property
    def seat_pairs(self) -> list[tuple[str, str]]:
        return items.seat_pairs(self.parts)

    @property
    def pool_triples(self) -> list[tuple[str, str, int]]:
        return items.pool_triples(self.parts)

    def claim_hold_args(self, *, open_events_only: bool) -> tuple[object, ...]:
        """claim_hold's parameters (see queries.sql)."""
        plain = items.is_plain(self.parts)
        seats = self.seat_pairs
        return (
            self.hold_id,
            self.token,
            self.parts[0].event_id if len(self.parts) == 1 else None,
            self.holder,
            list(self.parts[0].seats) if len(self.parts) == 1 else [],
            self.ttl_ms,
            self.idempotency_key,
            self.request_hash,
            self.client_key_id,
            [event_id for event_id, _ in seats],
            [seat for _, seat in seats],
            items.to_json(self.parts),
            None if plain else len(seats),
            open_events_only,
        )


@dataclass(frozen=True, slots=True)
class Transition:
    hold: HoldRow
    # Whether this call made the transition (false: the hold was already there, or could not move).
    changed: bool


@dataclass(frozen=True, slots=True)
class Extension:
    hold: HoldRow  # afterwards, with the clock read once every lock was held as its db_now
    changed: bool  # whether this call extended it
    # Whether the hold was held, not lapsed, and still the owner of its seats and units when judged: if so and
    # not `changed`, the lifetime cap refused the new expiry (or another holder asked).
    live: bool
    max_expires_at: datetime  # created_at + the longest life of a hold


@dataclass(frozen=True, slots=True)
class SlotRow:
    hold_id: str | None  # the live hold on the seat, if any
    status: HoldStatus | None
    expires_at: datetime | None
    db_now: datetime
    has_inventory: bool  # the event has an inventory
    listed: bool  # the inventory lists the seat
    blocked: bool


@dataclass(frozen=True, slots=True)
class EventSlotRow:
    slot_id: str
    hold_id: str | None  # None when the slot is free
    state: SlotStateName
    expires_at: datetime | None  # of a held slot
    db_now: datetime


@dataclass(frozen=True, slots=True)
class HoldStats:
    active_holds: int
    expiring_within_10s: int
    expiring_within_60s: int
    oldest_lapsed_expires_at: datetime | None  # a held row past expiry the sweeper has not reached yet
    expired_last_minute: int
    confirmed_holds: int
    confirmed_slots: int
    db_now: datetime


@dataclass(frozen=True, slots=True)
class LeaseOwner:
    """The Redis lease a hold has, or had: enough to rebuild or drop it."""

    event_id: str | None
    slots: list[str]
    token: str
    holder: str
    remaining_ms: int | None = None  # of a live held hold; None for a confirmed one
    stored_items: object = None

    @property
    def parts(self) -> list[items.EventPart]:
        return items.from_stored(self.event_id, self.slots, self.stored_items)


@dataclass(frozen=True, slots=True)
class ClientKeyRow:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Retired:
    """Rows one retention batch moved out of the hot tables (archived or deleted)."""

    holds: int
    hold_slots: int


@dataclass(frozen=True, slots=True)
class LiveSlot:
    event_id: str
    slot_id: str
    token: str


def _json_text(value: object) -> str:
    return msgspec.json.encode(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb (a hold's items) as Python values, through msgspec.
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=_json_text, decoder=msgspec.json.decode)


async def _reset_connection(conn: asyncpg.Connection) -> None:
    # The gateway keeps no session state (no LISTEN, no session advisory locks, no SET), so asyncpg's full
    # reset query is a wasted round trip per request; an unfinished transaction still gets the full reset.
    if conn.is_in_transaction():
        await conn.reset()


class Store:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        # Open after a failed connect: requests get 503 at once instead of each trying to connect, and a
        # recovering database sees one probe per interval from this worker, not the backlog.
        self.breaker = CircuitBreaker("postgres", settings.db_retry_interval_s)
        # Events known to have an inventory: their claims skip the plain path's statement.
        self._inventory_events: set[str] = set()
        # Concurrent one-seat claims without a key, one statement per batch (claim_holds_batch).
        self._claims: GroupCommitter[ClaimRequest, _PlainClaim] | None = None
        if settings.claim_batch_max_size > 1:
            self._claims = GroupCommitter(
                self._claim_batch,
                key=lambda request: request.seat_pairs[0],
                max_batch=settings.claim_batch_max_size,
                max_in_flight=settings.claim_batches_in_flight,
                batch_sizes=metrics.CLAIM_BATCH_SIZE,
            )

    @classmethod
    async def open(cls, settings: Settings, application_name: str = APPLICATION_NAME) -> "Store":
        """Create the pool; a database that is down now makes the pool connect lazily, not fail the boot.
        `application_name`: what pg_stat_activity and the server's log show for its connections."""
        pool = asyncpg.create_pool(
            settings.database_url,
            min_size=0,
            max_size=settings.db_pool_max_size,
            command_timeout=settings.db_command_timeout_s,
            reset=_reset_connection,
            init=_init_connection,
            timeout=settings.db_connect_timeout_s,
            server_settings={
                "application_name": application_name[:APPLICATION_NAME_MAX_CHARS],
                "statement_timeout": str(settings.db_statement_timeout_ms),
            },
        )
        await pool
        store = cls(pool, settings)
        await store.warm_up(settings.db_pool_min_size)
        return store

    async def warm_up(self, connections: int) -> None:
        """Open connections before traffic arrives; failures are left for requests to report."""
        try:
            async with asyncio.timeout(self._settings.db_acquire_timeout_s * 2):
                held = [await self._pool.acquire() for _ in range(connections)]
                for conn in held:
                    await self._pool.release(conn)
        except UNAVAILABLE_ERRORS as exc:
            log.warning("database not reachable at start: %s", exc)

    async def close(self) -> None:
        await self._pool.close()

    def connection(self, query: str) -> "AbstractAsyncContextManager[PoolConnectionProxy[asyncpg.Record]]":
        """A pooled connection for the named query (for the other Postgres adapters: the inventory's)."""
        return self._connection(query)

    @asynccontextmanager
    async def _connection(self, query: str) -> AsyncIterator["PoolConnectionProxy[asyncpg.Record]"]:
        """A pooled connection for the named query; the time it takes, pool wait included, is measured."""
        started = time.perf_counter()
        try:
            conn = await self._acquire()
            try:
                yield conn
            except UNAVAILABLE_ERRORS as exc:
                raise BackendUnavailable(self._settings.retry_after_s) from exc
            except asyncpg.PostgresError as exc:
                if exc.sqlstate == sql.POD_FENCE_SQLSTATE:  # this pod does not own the event's bucket
                    log.warning("pod fence: %s", exc)
                    raise StaleShardMap(self._settings.retry_after_s) from exc
                raise
            finally:
                await self._release(conn)
        finally:
            metrics.POSTGRES_QUERY_SECONDS.labels(query).observe(time.perf_counter() - started)

    async def _release(self, conn: "PoolConnectionProxy[asyncpg.Record]") -> None:
        """Back to the pool. A connection that cannot be made ready again (a statement timed out on a frozen
        backend, and so did its cancellation) is closed by asyncpg; the request keeps its own outcome."""
        try:
            await self._pool.release(conn)
        except UNAVAILABLE_ERRORS as exc:
            log.warning("pooled connection dropped on release: %s: %s", type(exc).__name__, exc)

    async def _acquire(self) -> "PoolConnectionProxy[asyncpg.Record]":
        """A connection within db_acquire_timeout_s. Every connection busy that long is overload (503
        overloaded); a failed or hung connect is an outage (503 backend-unavailable, breaker opened)."""
        breaker = self.breaker
        if not breaker.allow():
            raise BackendUnavailable(self._settings.retry_after_s)
        try:
            conn: PoolConnectionProxy[asyncpg.Record] = await self._pool.acquire(
                timeout=self._settings.db_acquire_timeout_s
            )
        except TimeoutError as exc:
            if self._pool.get_size() >= self._settings.db_pool_max_size and breaker.is_closed:
                raise Overloaded(self._settings.retry_after_s) from exc
            breaker.record_failure("connect timed out")
            raise BackendUnavailable(self._settings.retry_after_s) from exc
        except UNAVAILABLE_ERRORS as exc:
            breaker.record_failure(f"cannot connect: {type(exc).__name__}: {exc}")
            raise BackendUnavailable(self._settings.retry_after_s) from exc
        breaker.record_success()
        return conn

    async def ping(self) -> bool:
        try:
            async with self._connection("ping") as conn:
                await conn.fetchval(sql.PING)
        except BackendUnavailable:
            return False
        return True

    async def claim(self, request: ClaimRequest, *, in_transaction: bool = False) -> ClaimResult:
        """Try to create the hold. All or nothing; never raises for a lost race or a refusal (see
        ClaimResult). Raises ClaimOutcomeUnknown when a statement was sent and the answer lost.
        `in_transaction` forces the transaction even for one seat: a claim re-run for a token that may already
        own a hold needs it. One event's seats, on an event without an inventory, take one statement (two,
        in a transaction, with several seats or a key); everything else takes the inventory path."""
        single_event = len(request.parts) == 1 and not request.parts[0].pools
        plain = single_event and request.parts[0].event_id not in self._inventory_events
        # One statement is atomic on its own: it claims the seat and inserts the hold, or neither.
        keyless = request.idempotency_key is None
        alone = plain and len(request.seat_pairs) == 1 and keyless and not in_transaction
        if alone and self._claims is not None:
            plain_claim = await self._claims.submit(request)  # with the other claims of this pass
            if not plain_claim.inventory_defined:
                return plain_claim.result
            self._note_inventory_event(request.parts[0].event_id)
            plain = False
        async with self._connection("claim_hold" if plain else "claim_items") as conn:
            try:
                if plain:
                    args = request.claim_hold_args(open_events_only=True)
                    if alone:
                        plain_claim = _claim_result(await conn.fetch(sql.CLAIM_HOLD, *args))
                    else:
                        plain_claim = await _claim_in_transaction(
                            conn, args, keyed=request.idempotency_key is not None
                        )
                    if not plain_claim.inventory_defined:
                        return plain_claim.result
                    self._note_inventory_event(request.parts[0].event_id)
                return await _claim_items(conn, request)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != sql.ONE_ACTIVE_HOLD_PER_SLOT:
                    raise
                # A rival holds a seat and Postgres said so with an error rather than through ON CONFLICT:
                # a lost race like any other, and the claim was rolled back.
                return ClaimResult(False, False, [], None, None, datetime.now(UTC))
            except asyncpg.TransactionRollbackError:
                # Deadlock or serialization failure: the server rolled the claim back, so the outcome is known
                # (not committed); _connection makes it BackendUnavailable.
                raise
            except UNAVAILABLE_ERRORS as exc:
                raise ClaimOutcomeUnknown(f"{type(exc).__name__}: {exc}") from exc

    async def _claim_batch(self, requests: list[ClaimRequest]) -> list["_PlainClaim | BaseException"]:
        """claim_holds_batch: one-seat claims without a key, on distinct seats, in one statement. A lost
        answer leaves every member's fate open (each resolves by its own token, as a claim sent alone); an
        error answer rolled every member back, so each runs alone, with its same hold id and token."""
        try:
            async with self._connection("claim_holds_batch") as conn:
                try:
                    records = await conn.fetch(
                        sql.CLAIM_HOLDS_BATCH,
                        [r.hold_id for r in requests],
                        [r.token for r in requests],
                        [r.parts[0].event_id for r in requests],
                        [r.holder for r in requests],
                        [r.parts[0].seats[0] for r in requests],
                        [str(r.ttl_ms) for r in requests],
                        [r.client_key_id for r in requests],
                    )
                except asyncpg.TransactionRollbackError as exc:  # a deadlock: known, rolled back
                    failure: asyncpg.PostgresError = exc
                except UNAVAILABLE_ERRORS as exc:
                    return [ClaimOutcomeUnknown(f"{type(exc).__name__}: {exc}") for _ in requests]
                except asyncpg.PostgresError as exc:  # the server refused the statement: nothing committed
                    failure = exc
                else:
                    by_member: dict[int, list[asyncpg.Record]] = {}
                    for record in records:
                        by_member.setdefault(record["member"], []).append(record)
                    return [_claim_result(by_member[index]) for index in range(1, len(requests) + 1)]
        except (BackendUnavailable, Overloaded) as exc:  # no connection: nothing was sent
            return [exc for _ in requests]
        metrics.CLAIM_BATCH_FALLBACKS.inc()
        log.info("claim batch of %d failed (%s): each runs alone", len(requests), type(failure).__name__)
        alone = [self._claim_alone(request) for request in requests]
        return list(await asyncio.gather(*alone, return_exceptions=True))

    async def _claim_alone(self, request: ClaimRequest) -> "_PlainClaim":
        """claim_hold for one seat without a key, in one statement (a batch member run again on its own)."""
        async with self._connection("claim_hold") as conn:
            try:
                return _claim_result(
                    await conn.fetch(sql.CLAIM_HOLD, *request.claim_hold_args(open_events_only=True))
                )
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != sql.ONE_ACTIVE_HOLD_PER_SLOT:
                    raise
                return _PlainClaim(ClaimResult(False, False, [], None, None, datetime.now(UTC)), False)
            except asyncpg.TransactionRollbackError:
                raise
            except UNAVAILABLE_ERRORS as exc:
                raise ClaimOutcomeUnknown(f"{type(exc).__name__}: {exc}") from exc

    def _note_inventory_event(self, event_id: str) -> None:
        """An event has an inventory (it is never removed): its claims take the inventory path at once."""
        if len(self._inventory_events) >= INVENTORY_EVENTS_KEPT:
            self._inventory_events.clear()  # only spares a statement: the claim's guard tells again
        self._inventory_events.add(event_id)

    async def slot_owners(self, seats: Sequence[tuple[str, str]]) -> list[SlotOwner]:
        """The live holds owning any of these (event id, seat id)."""
        async with self._connection("slot_owners") as conn:
            records = await conn.fetch(sql.SLOT_OWNERS, [e for e, _ in seats], [s for _, s in seats])
        return [SlotOwner(r["seat_event_id"], r["slot_id"], HoldRow.from_record(r)) for r in records]

    async def pod_identity(self) -> str | None:
        """The pod this database records itself as (`gateway pods init`), or None."""
        async with self._connection("pod_identity") as conn:
            record = await conn.fetchrow(sql.POD_IDENTITY)
        return None if record is None else str(record["pod"])

    async def get_hold(self, hold_id: str) -> HoldRow | None:
        async with self._connection("get_hold") as conn:
            record = await conn.fetchrow(sql.GET_HOLD, hold_id)
        return None if record is None else HoldRow.from_record(record)

    async def idempotency_record(self, client_key_id: str, holder: str, key: str) -> IdempotencyRecord | None:
        async with self._connection("get_idempotency_record") as conn:
            record = await conn.fetchrow(sql.GET_IDEMPOTENCY_RECORD, client_key_id, holder, key)
        if record is None:
            return None
        return IdempotencyRecord(record["request_hash"], record["hold_id"], record["status_code"])

    async def confirm(self, hold_id: str, holder: str, client_key_id: str) -> Transition | None:
        """Confirm; None if no hold of this client key has this id."""
        return await self._transition("confirm_hold", sql.CONFIRM_HOLD, hold_id, holder, client_key_id)

    async def cancel(
        self, hold_id: str, holder: str, client_key_id: str, *, lease_release_due: bool
    ) -> Transition | None:
        """Cancel; None if no hold of this client key has this id. With `lease_release_due` the sweeper also
        drops its lease in Redis, whatever happens to this process or to Redis between the commit and the
        release it attempts itself."""
        return await self._transition(
            "cancel_hold", sql.CANCEL_HOLD, hold_id, holder, lease_release_due, client_key_id
        )

    async def extend(
        self, hold_id: str, holder: str, client_key_id: str, *, ttl_ms: int, max_lifetime_ms: int
    ) -> Extension | None:
        """Move the hold's expiry to now + `ttl_ms`, unless that passes created_at + `max_lifetime_ms`; None
        if no hold of this client key has this id."""
        async with self._connection("extend_hold") as conn:
            record = await conn.fetchrow(
                sql.EXTEND_HOLD, hold_id, holder, client_key_id, ttl_ms, max_lifetime_ms
            )
        if record is None:
            return None
        return Extension(
            HoldRow.from_record(record), record["changed"], record["live"], record["max_expires_at"]
        )

    async def _transition(self, name: str, query: str, hold_id: str, *args: object) -> Transition | None:
        async with self._connection(name) as conn:
            record = await conn.fetchrow(query, hold_id, *args)
        if record is None:
            return None
        return Transition(HoldRow.from_record(record), record["changed"])

    async def hold_by_token(self, token: str) -> HoldRow | None:
        async with self._connection("hold_by_token") as conn:
            record = await conn.fetchrow(sql.HOLD_BY_TOKEN, token)
        return None if record is None else HoldRow.from_record(record)

    async def release_due_leases(
        self, batch_size: int, release: Callable[[list[LeaseOwner]], Awaitable[object]]
    ) -> int:
        """Take up to `batch_size` holds from the release outbox and hand their leases to `release`; the
        flags are cleared only if it returns (it raises when Redis fails: they stay for the next pass)."""
        async with self._connection("take_due_lease_releases") as conn, conn.transaction():
            records = await conn.fetch(sql.TAKE_DUE_LEASE_RELEASES, batch_size)
            if records:
                await release([_lease_owner(r) for r in records])
        return len(records)

    async def lease_events(self, within_ms: int) -> list[str]:
        """The events with a live held hold, or a hold confirmed or cancelled in the last `within_ms`."""
        async with self._connection("lease_events") as conn:
            records = await conn.fetch(sql.LEASE_EVENTS, within_ms)
        return [r["event_id"] for r in records]

    async def recently_cancelled(
        self, event_ids: Sequence[str], within_ms: int, page_size: int
    ) -> AsyncIterator[list[LeaseOwner]]:
        """Pages of the holds of these events cancelled in the last `within_ms`."""
        after: tuple[datetime | None, str | None] = (None, None)
        while True:
            async with self._connection("recently_cancelled") as conn:
                records = await conn.fetch(
                    sql.RECENTLY_CANCELLED, list(event_ids), within_ms, *after, page_size
                )
            if not records:
                return
            yield [_lease_owner(r) for r in records]
            after = (records[-1]["cancelled_at"], records[-1]["id"])

    async def live_leases(
        self, event_ids: Sequence[str], confirmed_within_ms: int, limit: int
    ) -> list[LeaseOwner]:
        """The live held holds of these events, and their holds confirmed in the last
        `confirmed_within_ms`; at most `limit` of each, the latest first."""
        async with self._connection("live_leases") as conn:
            records = await conn.fetch(sql.LIVE_LEASES, list(event_ids), confirmed_within_ms, limit)
        return [_lease_owner(r) for r in records]

    async def client_key_digests(self) -> dict[bytes, str]:
        """Every live client key: its sha256 to its id."""
        async with self._connection("client_key_digests") as conn:
            records = await conn.fetch(sql.CLIENT_KEY_DIGESTS)
        return {bytes(r["key_sha256"]): r["id"] for r in records}

    async def insert_client_key(self, key_id: str, name: str, key_sha256: bytes) -> ClientKeyRow:
        async with self._connection("insert_client_key") as conn:
            record = await conn.fetchrow(
                sql.INSERT_CLIENT_KEY, key_id, name, key_sha256, sql.CLIENT_KEYS_CHANNEL
            )
        assert record is not None  # INSERT ... RETURNING
        return ClientKeyRow(record["id"], record["name"], record["created_at"])

    async def list_client_keys(self) -> list[ClientKeyRow]:
        async with self._connection("list_client_keys") as conn:
            records = await conn.fetch(sql.LIST_CLIENT_KEYS)
        return [ClientKeyRow(r["id"], r["name"], r["created_at"]) for r in records]

    async def delete_client_key(self, key_id: str) -> bool:
        """Revoke a client key; whether it existed."""
        async with self._connection("delete_client_key") as conn:
            return await conn.fetchval(sql.DELETE_CLIENT_KEY, key_id, sql.CLIENT_KEYS_CHANNEL) is not None

    async def slot_state(self, event_id: str, slot_id: str) -> SlotRow:
        async with self._connection("slot_state") as conn:
            record = await conn.fetchrow(sql.SLOT_STATE, event_id, slot_id)
        assert record is not None  # always one row
        return SlotRow(**dict(record.items()))

    async def expire_holds(self, batch_size: int) -> list[float]:
        """Expire up to `batch_size` lapsed holds; the lifetime in seconds of each one expired."""
        async with self._connection("expire_holds") as conn:
            lifetimes: list[float] = await conn.fetchval(sql.EXPIRE_HOLDS, batch_size)
        return lifetimes

    async def purge_idempotency_keys(self, older_than_s: int, batch_size: int) -> int:
        """Delete up to `batch_size` idempotency records older than `older_than_s`, retiring their holds'
        tokens (the key may then be used again like a new one); how many were deleted."""
        async with self._connection("purge_idempotency_keys") as conn:
            purged: int = await conn.fetchval(sql.PURGE_IDEMPOTENCY_KEYS, older_than_s, batch_size)
        return purged

    async def retire_holds(
        self, *, ended_before_s: int, confirmed_before_s: int, batch_size: int, archive: bool
    ) -> Retired:
        """Move up to `batch_size` holds out of the hot tables with their slot rows: cancelled and expired
        ones that ended `ended_before_s` ago, confirmed ones confirmed `confirmed_before_s` ago (0: none). To
        the archive tables, or deleted unless `archive`."""
        async with self._connection("retire_holds") as conn:
            record = await conn.fetchrow(
                sql.RETIRE_HOLDS, ended_before_s, confirmed_before_s, batch_size, archive
            )
        assert record is not None  # aggregates: always one row
        return Retired(record["holds"], record["hold_slots"])

    async def list_holds(
        self,
        *,
        event_id: str | None,
        holder: str | None,
        status: HoldStatus | None,
        expiring_within_ms: int | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[HoldRow]:
        """Holds in (expires_at, id) order after the cursor `after`."""
        after_expires_at, after_id = after if after is not None else (None, None)
        async with self._connection("list_holds") as conn:
            records = await conn.fetch(
                sql.LIST_HOLDS,
                event_id,
                holder,
                status,
                expiring_within_ms,
                after_expires_at,
                after_id,
                limit,
            )
        return [HoldRow.from_record(r) for r in records]

    async def event_slots(
        self, event_id: str, *, after: str | None, state: SlotStateName | None, limit: int
    ) -> list[EventSlotRow]:
        """The event's live slots in slot order after `after` (see event_slots in queries.sql)."""
        async with self._connection("event_slots") as conn:
            records = await conn.fetch(sql.EVENT_SLOTS, event_id, after, state, limit)
        return [
            EventSlotRow(
                slot_id=r["slot_id"],
                hold_id=None if r["status"] == "free" else r["hold_id"],
                state=r["status"],
                expires_at=r["expires_at"] if r["status"] == "held" else None,
                db_now=r["db_now"],
            )
            for r in records
        ]

    async def hold_stats(self, event_id: str | None) -> HoldStats:
        async with self._connection("hold_stats") as conn:
            r = await conn.fetchrow(sql.HOLD_STATS, event_id)
        assert r is not None  # an aggregate always returns one row
        return HoldStats(**dict(r.items()))

    async def live_slot_tokens(self, event_id: str | None, limit: int) -> list[LiveSlot]:
        async with self._connection("live_slot_tokens") as conn:
            records = await conn.fetch(sql.LIVE_SLOT_TOKENS, event_id, limit)
        return [LiveSlot(r["event_id"], r["slot_id"], r["token"]) for r in records]


@dataclass(frozen=True, slots=True)
class _PlainClaim:
    result: ClaimResult
    inventory_defined: bool  # the event has an inventory: nothing was claimed, take the inventory path


async def _claim_in_transaction(
    conn: "PoolConnectionProxy[asyncpg.Record]", args: tuple[object, ...], *, keyed: bool
) -> _PlainClaim:
    transaction = conn.transaction()
    await transaction.start()
    try:
        claim = _claim_result(await conn.fetch(sql.CLAIM_HOLD, *args))
    except BaseException:
        await transaction.rollback()
        raise
    result = claim.result
    keep = result.created and (not keyed or result.idempotency_recorded)
    await (transaction.commit() if keep else transaction.rollback())
    if result.created and not keep:
        # Rolled back because the key was taken: report nothing as created.
        return _PlainClaim(ClaimResult(False, False, [], None, None, result.db_now), False)
    return claim


async def _claim_items(conn: "PoolConnectionProxy[asyncpg.Record]", request: ClaimRequest) -> ClaimResult:
    """The inventory path, in one transaction: lock the events' inventories (and the holder's turn), check
    the request against them, claim the seats (inserting the hold), then the pool units; commit only if all
    of it was granted."""
    events = sorted({part.event_id for part in request.parts})
    seats = request.seat_pairs
    pools = request.pool_triples
    transaction = conn.transaction()
    await transaction.start()
    try:
        inventories = await conn.fetch(sql.LOCK_INVENTORIES, events, request.client_key_id, request.holder)
        limited = {r["event_id"]: r["per_holder"] for r in inventories if r["per_holder"] is not None}
        findings = await conn.fetch(
            sql.CHECK_INVENTORY,
            [e for e, _ in seats],
            [s for _, s in seats],
            [e for e, _, _ in pools],
            [p for _, p, _ in pools],
            sorted(limited),
            request.client_key_id,
            request.holder,
        )
        refusal = _inventory_refusal(request, inventories, findings)
        if refusal is not None:
            await transaction.rollback()
            return ClaimResult(False, False, [], None, None, datetime.now(UTC), refusal=refusal)
        claim = _claim_result(
            await conn.fetch(sql.CLAIM_HOLD, *request.claim_hold_args(open_events_only=False))
        )
        result = claim.result
        keep = result.created and (request.idempotency_key is None or result.idempotency_recorded)
        if not keep:
            await transaction.rollback()
            if result.created:  # rolled back because the key was taken: report nothing as created
                return ClaimResult(False, False, [], None, None, result.db_now)
            return result
        over = _holder_over_limit(request, limited, findings)
        if over is not None:
            await transaction.rollback()
            return ClaimResult(
                False, False, [], None, None, result.db_now, refusal=InventoryRefusal(holder_over_limit=over)
            )
        if pools:
            granted = await conn.fetch(
                sql.CLAIM_POOLS,
                request.hold_id,
                [e for e, _, _ in pools],
                [p for _, p, _ in pools],
                [q for _, _, q in pools],
                request.ttl_ms,
            )
            short = [
                ShortPool(r["event_id"], r["pool_id"], r["quantity"], max(0, r["available"] or 0))
                for r in granted
                if not r["granted"]
            ]
            if short:
                await transaction.rollback()
                return ClaimResult(
                    False, False, [], None, None, result.db_now, refusal=InventoryRefusal(short_pools=short)
                )
    except BaseException:
        await transaction.rollback()
        raise
    await transaction.commit()
    return result


def _inventory_refusal(
    request: ClaimRequest, inventories: list[asyncpg.Record], findings: list[asyncpg.Record]
) -> InventoryRefusal | None:
    """What the inventories refuse before anything is claimed: unknown seats or pools, more units of an event
    than its per-hold limit, blocked seats. (The holder limit is judged after the seats: a retry of the
    holder's own hold is answered with that hold, not refused.)"""
    unknown_seats = [(r["event_id"], r["item_id"]) for r in findings if r["kind"] == "unknown_seat"]
    unknown_pools = [(r["event_id"], r["item_id"]) for r in findings if r["kind"] == "unknown_pool"]
    blocked = [(r["event_id"], r["item_id"]) for r in findings if r["kind"] == "blocked_seat"]
    per_hold = {r["event_id"]: r["per_hold"] for r in inventories if r["per_hold"] is not None}
    over_per_hold = [
        (part.event_id, per_hold[part.event_id], part.units)
        for part in request.parts
        if part.event_id in per_hold and part.units > per_hold[part.event_id]
    ]
    if not (unknown_seats or unknown_pools or blocked or over_per_hold):
        return None
    return InventoryRefusal(
        unknown_seats=unknown_seats,
        unknown_pools=unknown_pools,
        over_per_hold=over_per_hold,
        blocked_seats=blocked,
    )


def _holder_over_limit(
    request: ClaimRequest, limited: dict[str, int], findings: list[asyncpg.Record]
) -> HolderOverLimit | None:
    held = {r["event_id"]: r["units"] for r in findings if r["kind"] == "holder_units"}
    for part in request.parts:
        limit = limited.get(part.event_id)
        if limit is not None and held.get(part.event_id, 0) + part.units > limit:
            return HolderOverLimit(part.event_id, limit, held.get(part.event_id, 0), part.units)
    return None


def _lease_owner(record: asyncpg.Record) -> LeaseOwner:
    return LeaseOwner(
        event_id=record["event_id"],
        slots=list(record["slots"]),
        token=record["token"],
        holder=record["holder"],
        remaining_ms=record.get("remaining_ms"),
        stored_items=record["items"],
    )


def _claim_result(records: list[asyncpg.Record]) -> _PlainClaim:
    record = records[0]  # claim_hold returns one row, or one per owner of a seat it did not get
    prior = None
    if record["prior_hold_id"] is not None:
        prior = IdempotencyRecord(
            record["prior_request_hash"], record["prior_hold_id"], record["prior_status_code"]
        )
    result = ClaimResult(
        created=record["created"],
        idempotency_recorded=record["idempotency_recorded"],
        claimed_seats=list(zip(record["claimed_events"], record["claimed_slots"], strict=True)),
        created_at=record["created_at"],
        expires_at=record["expires_at"],
        db_now=record["db_now"],
        owners=[
            SlotOwner(r["owner_seat_event_id"], r["owner_slot_id"], HoldRow.from_record(r, prefix="owner_"))
            for r in records
            if r["owner_id"] is not None
        ],
        prior_record=prior,
    )
    return _PlainClaim(result, record["inventory_defined"])
