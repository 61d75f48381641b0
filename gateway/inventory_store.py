"""PostgreSQL access for inventories: define and read them, block and unblock seats, read availability, and
what Redis's counters and blocked seats of an event should be. The named queries of queries.sql, over the
Store's pool.

A change runs under the inventory row's lock (FOR UPDATE), which claims hold FOR KEY SHARE until they end: a
change waits for the claims under way, and judges live holds only once they committed or rolled back."""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from gateway import sql
from gateway.errors import InvalidRequest, InventoryInUse, InventoryNotFound
from gateway.models import (
    Availability,
    BlockedSeat,
    Inventory,
    InventoryBody,
    InventorySummary,
    Limits,
    PoolAvailability,
    PoolCapacity,
    SeatCounts,
    SeatsChanged,
    SlotStateName,
)
from gateway.store import Store

# Seats named in an error, at most (the count is always given).
NAMED_IN_ERROR = 50


@dataclass(frozen=True, slots=True)
class PoolUnits:
    """What Redis's counter of one pool should hold."""

    event_id: str
    pool_id: str
    capacity: int
    # (token, holder, quantity, remaining ms or None for confirmed units)
    holds: list[tuple[str, str, int, int | None]]
    # Confirmed units with no hold row of their own (their holds were retired): counted, never released.
    retired_units: int


@dataclass(frozen=True, slots=True)
class InventoryState:
    """What Redis should hold of some events' inventories."""

    pools: list[PoolUnits]
    blocked: dict[str, list[str]]  # event id -> its blocked seats (events without any left out)


class InventoryStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def replace(self, event_id: str, body: InventoryBody) -> InventorySummary:
        """Create or replace the event's inventory, atomically; InventoryInUse (nothing changed) if that
        would drop a seat with a live hold or leave a pool fewer units than its live ones."""
        seats = sorted(set(body.seats))
        if len(seats) != len(body.seats):
            raise InvalidRequest("`seats` contains duplicates")
        pool_ids = [pool.pool_id for pool in body.pools]
        if len(set(pool_ids)) != len(pool_ids):
            raise InvalidRequest("`pools` names a pool twice")
        capacities = [pool.capacity for pool in body.pools]
        async with self._store.connection("replace_inventory") as conn, conn.transaction():
            await conn.execute(sql.CREATE_INVENTORY, event_id)
            await conn.fetchrow(sql.LOCK_INVENTORY, event_id)
            await conn.execute(sql.GIVE_BACK_LAPSED_UNITS, event_id)
            in_use = await conn.fetch(sql.INVENTORY_IN_USE, event_id, seats, pool_ids, capacities)
            if in_use:
                raise _in_use(in_use)  # the transaction rolls back: nothing changed
            await conn.execute(
                sql.REPLACE_INVENTORY,
                event_id,
                seats,
                pool_ids,
                capacities,
                body.limits.per_holder,
                body.limits.per_hold,
            )
        return InventorySummary(
            event_id=event_id,
            seats_total=len(seats),
            pools=[PoolCapacity(pool_id=p.pool_id, capacity=p.capacity) for p in body.pools],
            limits=body.limits,
        )

    async def get(self, event_id: str) -> Inventory:
        async with self._store.connection("get_inventory") as conn, conn.transaction(readonly=True):
            settings = await conn.fetchrow(sql.GET_INVENTORY, event_id)
            if settings is None:
                raise InventoryNotFound()
            pools = await conn.fetch(sql.INVENTORY_POOLS_OF, event_id)
            seats = await conn.fetch(sql.INVENTORY_SEATS_OF, event_id)
        return Inventory(
            event_id=event_id,
            seats_total=settings["seats_total"],
            pools=[PoolCapacity(pool_id=r["pool_id"], capacity=r["capacity"]) for r in pools],
            limits=_limits(settings),
            seats=[r["seat_id"] for r in seats],
            blocked=[
                BlockedSeat(seat_id=r["seat_id"], reason=r["blocked_reason"], blocked_at=r["blocked_at"])
                for r in seats
                if r["blocked_reason"] is not None
            ],
        )

    async def set_blocked(
        self, event_id: str, seats: Sequence[str], *, blocked: bool, reason: str = ""
    ) -> SeatsChanged:
        """Block the seats (for `reason`), or unblock them; all or none. A seat outside the inventory is
        InvalidRequest; blocking a seat with a live hold is InventoryInUse."""
        wanted = sorted(set(seats))
        async with self._store.connection("set_blocked") as conn, conn.transaction():
            if await conn.fetchrow(sql.GET_INVENTORY, event_id) is None:
                raise InventoryNotFound()
            known = {r["seat_id"] for r in await conn.fetch(sql.LOCK_SEATS, event_id, wanted)}
            unknown = [seat for seat in wanted if seat not in known]
            if unknown:
                raise InvalidRequest(
                    f"`seats` has {len(unknown)} seats outside the inventory: {_named(unknown)}"
                )
            if blocked:
                live = [r["slot_id"] for r in await conn.fetch(sql.LIVE_SEATS, event_id, wanted)]
                if live:
                    raise InventoryInUse(
                        f"{len(live)} of the seats are held or confirmed: {_named(live)}", seats=live
                    )
            record = await conn.fetchrow(sql.SET_BLOCKED, event_id, wanted, reason if blocked else None)
        assert record is not None
        return SeatsChanged(
            event_id=event_id, changed=record["changed"], blocked_total=record["blocked_total"]
        )

    async def availability(self, event_id: str) -> Availability | None:
        """What is left of the event now; None if it has no inventory."""
        async with self._store.connection("event_availability") as conn:
            records = await conn.fetch(sql.EVENT_AVAILABILITY, event_id)
        if not records:
            return None
        first = records[0]
        held, confirmed, blocked = first["seats_held"], first["seats_confirmed"], first["seats_blocked"]
        total = first["seats_total"]
        return Availability(
            event_id=event_id,
            as_of=first["db_now"],
            seats=SeatCounts(
                total=total,
                free=max(0, total - held - confirmed - blocked),
                held=held,
                confirmed=confirmed,
                blocked=blocked,
            ),
            pools=[
                PoolAvailability(
                    pool_id=r["pool_id"],
                    capacity=r["capacity"],
                    available=max(0, r["capacity"] - r["held_units"] - r["confirmed_units"]),
                    held=r["held_units"],
                    confirmed=r["confirmed_units"],
                    next_release_at=r["next_release_at"],
                )
                for r in records
                if r["pool_id"] is not None
            ],
            limits=_limits(first),
        )

    async def seat_states(self, event_id: str) -> dict[str, SlotStateName]:
        """The event's seats that are not free (held, confirmed, blocked), by seat id; for anyone to see."""
        async with self._store.connection("event_seat_states") as conn:
            records = await conn.fetch(sql.EVENT_SEAT_STATES, event_id)
        return {r["seat_id"]: r["state"] for r in records}

    async def versions(self, event_ids: Sequence[str]) -> dict[str, datetime]:
        """When each event's inventory last changed; events without one are left out."""
        async with self._store.connection("inventory_versions") as conn:
            records = await conn.fetch(sql.INVENTORY_VERSIONS, list(event_ids))
        return {r["event_id"]: r["updated_at"] for r in records}

    async def redis_state(self, event_ids: Sequence[str]) -> InventoryState:
        """What Redis should hold of these events' inventories: their pools' counters and blocked seats."""
        async with self._store.connection("inventory_state") as conn:
            records = await conn.fetch(sql.INVENTORY_STATE, list(event_ids))
        pools: dict[tuple[str, str], PoolUnits] = {}
        confirmed_total: dict[tuple[str, str], int] = {}
        blocked: dict[str, list[str]] = {}
        for r in records:
            key = (r["event_id"], r["item_id"])
            if r["kind"] == "pool":
                pools[key] = PoolUnits(r["event_id"], r["item_id"], r["capacity"], [], 0)
                confirmed_total[key] = r["confirmed_units"]
            elif r["kind"] == "blocked":
                blocked.setdefault(r["event_id"], []).append(r["item_id"])
        for r in records:
            key = (r["event_id"], r["item_id"])
            if r["kind"] == "units" and key in pools:
                pools[key].holds.append((r["token"], r["holder"], r["quantity"], r["remaining_ms"]))
        counted = []
        for key, pool in pools.items():
            with_rows = sum(q for _, _, q, remaining in pool.holds if remaining is None)
            retired = max(0, confirmed_total[key] - with_rows)
            counted.append(PoolUnits(pool.event_id, pool.pool_id, pool.capacity, pool.holds, retired))
        return InventoryState(pools=counted, blocked=blocked)

    async def take_due_syncs(self, batch_size: int, tell: Callable[[list[str]], Awaitable[object]]) -> int:
        """Take up to `batch_size` events whose inventory changed since Redis last synchronized them and hand
        them to `tell`; the flags are cleared only if it returns (it raises when Redis fails)."""
        async with self._store.connection("take_due_inventory_syncs") as conn, conn.transaction():
            records = await conn.fetch(sql.TAKE_DUE_INVENTORY_SYNCS, batch_size)
            if records:
                await tell([r["event_id"] for r in records])
        return len(records)


def _limits(record: asyncpg.Record) -> Limits:
    return Limits(per_holder=record["per_holder"], per_hold=record["per_hold"])


def _named(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:NAMED_IN_ERROR])
    return shown + (f" and {len(ids) - NAMED_IN_ERROR} more" if len(ids) > NAMED_IN_ERROR else "")


def _in_use(rows: Sequence[asyncpg.Record]) -> InventoryInUse:
    seats = [r["item_id"] for r in rows if r["kind"] == "seat"]
    pools = [r["item_id"] for r in rows if r["kind"] == "pool"]
    parts = []
    if seats:
        parts.append(f"{len(seats)} seats left out have live holds: {_named(seats)}")
    if pools:
        units = ", ".join(f"{r['item_id']} ({r['units']} live units)" for r in rows if r["kind"] == "pool")
        parts.append(f"pools would have fewer units than their live holds: {units}")
    return InventoryInUse("; ".join(parts), seats=seats[:NAMED_IN_ERROR], pools=pools)
