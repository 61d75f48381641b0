"""Redis never lies once trusted: the one home of reconciliation between Redis's leases and Postgres.

Postgres decides; a Redis lease only lets a rival be turned away without asking it. So a lease Redis holds
must belong to a live hold (else a false 409), and a live hold should have its lease (else its rivals cost
Postgres a statement each). What can break that, and what brings it back:

- A cancel whose release did not reach Redis (Redis unreachable, or the gateway died after the commit): the
  cancel flagged the hold in Postgres (the release outbox); `drain_outbox` drops those leases and clears
  the flags once Redis answered. The sweeper drains every pass, and a recovery drains before trust.
- Redis restarted (empty, or from an old snapshot with leases of holds cancelled since), failed over, or
  flushed. Caught in-band, before any verdict (see gateway.redis_front): connections to another instance
  are refused until a recovery, and acquire.lua answers NOT_SYNCED for an event whose marker does not hold
  the instance's run_id. `synchronize_events` then brings the events in line: rebuild the leases of their
  live holds, drop the leases of their recently cancelled holds, and only then set their markers. A request
  waits for its event's synchronization (one per event per worker at a time); after a restart or flush the
  recovery, or the sweeper, also synchronizes every event with live leases in bulk.
- A lease that lapsed early or never got set: a loser that Postgres turned away teaches Redis the owner's
  lease (`adopt`), for a short while only, since the read may be stale by the time it is set.
- An event's inventory changed (replaced, seats blocked or unblocked): the change flagged the event in
  Postgres (the inventory outbox) and its route asks Redis at once to forget the event's synchronization
  (`inventory_changed`); the sweeper drains the flags too, whatever happened between. The next request for the
  event synchronizes it, pools and blocked seats included. A refusal by Postgres that Redis should have made
  (a pool short, a seat blocked) has the event synchronized again, in the background (`resynchronize`).

Pool counters are rebuilt whole from Postgres (capacity, every live hold's units, a confirmed hold's for
good), keeping the entries of requests in flight; blocked seats are made exactly Postgres's.

Order inside a synchronization, so that a cancel racing it cannot leave a lease behind: read live holds, set
their leases, then read the recently cancelled ones and drop theirs. A cancel that committed before the
second read is seen by it; one that committed after releases its lease itself, after the first read's SET.
"""

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TypeVar

from gateway import keys, metrics
from gateway.config import Settings
from gateway.inventory_store import InventoryStore, PoolUnits
from gateway.redis_front import REDIS_FAILURES, Lease, PoolSync, RedisFront, RedisUnavailable
from gateway.store import HoldRow, LeaseOwner, Store

log = logging.getLogger(__name__)

# Leases end this much before their hold: the lease's TTL is counted from when it reaches Redis, a little
# after the moment Postgres's clock was read. A rival in that gap asks Postgres, which turns it away.
LEASE_EARLY_END_MS = 50
# Longest life of a lease taught to Redis from a loser's read of Postgres (see adopt): 30 s.
ADOPTED_LEASE_MAX_MS = 30_000
# Live holds rebuilt per synchronization, at most, of each kind (held; recently confirmed).
REBUILD_MAX_HOLDS = 200_000
# Leases dropped or rebuilt per Redis pipeline; events synchronized per bulk step.
LEASE_BATCH = 1_000
EVENT_BATCH = 100
# Events whose last synchronization time a worker remembers, at most.
SYNCHRONIZED_EVENTS_KEPT = 10_000
# An event whose Redis state a refusal found out of date is synchronized again at most this often per worker.
RESYNC_INTERVAL_S = 2.0
# The member standing for confirmed units whose holds retention moved out: counted, never released.
RETIRED_UNITS_MEMBER = "retired"


def lease_ttl_ms(remaining_ms: int, read_at: float) -> int:
    """A lease TTL that ends no later than the hold: `remaining_ms` as Postgres read it, less the time since
    the statement was sent (`read_at`, monotonic) and a margin. Zero or less: the hold is over."""
    elapsed_ms = int((time.monotonic() - read_at) * 1000)
    return remaining_ms - elapsed_ms - LEASE_EARLY_END_MS


class LeaseSync:
    """Keeps one worker's Redis leases in line with Postgres (see the module doc)."""

    def __init__(self, store: Store, front: RedisFront, settings: Settings) -> None:
        self.store = store
        self.inventories = InventoryStore(store)
        self.front = front
        self.settings = settings
        # When each event was last resynchronized because Postgres refused what Redis let through, and the
        # resynchronizations under way.
        self._resynchronized_at: dict[str, float] = {}
        self._resyncs: set[asyncio.Task[bool]] = set()
        # How far back a lease may still live: a confirmed hold's, or a held hold's longest life.
        self._window_ms = max(settings.confirmed_lease_ms, settings.max_ttl_s * 1000)
        # One synchronization per event at a time in this worker; requests for the event wait on it.
        self._syncing: dict[str, asyncio.Task[None]] = {}
        # When each event's last synchronization ended (monotonic): a NOT_SYNCED answer to a call sent
        # before then is out of date, and needs no synchronization of its own.
        self._synchronized_at: dict[str, float] = {}
        front.on_recovery(self.recover)

    def live_lease_ttl_ms(self, remaining_ms: int | None, read_at: float) -> int:
        """The TTL of a live hold's lease: a confirmed hold's (`remaining_ms` None) or the rest of a held
        hold's life, read at `read_at`. Zero or less: the hold is over."""
        if remaining_ms is None:
            return self.settings.confirmed_lease_ms
        return lease_ttl_ms(remaining_ms, read_at)

    def _leases_of(self, owner: LeaseOwner | HoldRow, events: Iterable[str] | None = None) -> list[Lease]:
        """The hold's leases, one per event (of `events` only, if given): its seats and pool units."""
        wanted = None if events is None else set(events)
        return [
            self.front.lease(part.event_id, part.seats, owner.token, owner.holder, part.pools)
            for part in owner.parts
            if wanted is None or part.event_id in wanted
        ]

    def _seat_leases_of(
        self, owner: LeaseOwner | HoldRow, events: Iterable[str] | None = None
    ) -> list[Lease]:
        """The hold's seat leases only, one per event with seats (of `events` only, if given)."""
        wanted = None if events is None else set(events)
        return [
            self.front.lease(part.event_id, part.seats, owner.token, owner.holder)
            for part in owner.parts
            if part.seats and (wanted is None or part.event_id in wanted)
        ]

    async def recover(self) -> None:
        """The recovery's work before Redis is trusted again (RedisFront calls it once the scripts are
        loaded): drain the outbox; after a restart or flush, synchronize every event with live leases."""
        await self.drain_outbox()
        await self.drain_inventory_changes()
        await self.rebuild_if_needed()

    async def tend(self) -> None:
        """Each worker's Redis upkeep, every sweep interval: start a recovery if one is due; else notice a
        restart or flush that no request has met yet (rebuilding in bulk). No Postgres statement unless a
        rebuild is due."""
        front = self.front
        if not front.available:
            front.probe_if_due()
            return
        try:
            await self.rebuild_if_needed()
        except REDIS_FAILURES as exc:
            front.record_failure("lease upkeep", exc)

    async def drain_outboxes(self) -> None:
        """The background leader's pass (gateway.leader): drain the release and inventory outboxes. Not while
        Redis is not trusted: the outboxes wait, and the recovery drains them before Redis is trusted again
        (and a worker that reaches Redis takes the leadership over from one that does not)."""
        front = self.front
        if not front.available:
            return
        try:
            await self.drain_outbox()
            await self.drain_inventory_changes()
        except REDIS_FAILURES as exc:
            front.record_failure("lease upkeep", exc)

    async def rebuild_if_needed(self) -> None:
        """If the live leases were not yet rebuilt on this instance (a restart, a failover, a flush), do it
        now for every event that may have leases. Correctness does not wait for this (each event's marker
        keeps an unsynchronized event from being judged): it spares each event's first requests the wait."""
        front = self.front
        marker = await front.instance_marker()
        if marker is not None and marker == front.run_id:
            return
        events = await self.store.lease_events(self._window_ms)
        log.info(
            "redis restarted, failed over or flushed: synchronizing %d events",
            len(events),
            extra={"events": len(events)},
        )
        for batch in _batches(events, EVENT_BATCH):
            await self.synchronize_events(batch)
        await front.set_instance_marker()
        metrics.LEASE_REBUILDS.inc()

    async def synchronize_event(self, event_id: str, asked_at: float) -> bool:
        """Bring one event in line (a call sent at `asked_at`, monotonic, met NOT_SYNCED), sharing a
        synchronization under way in this worker, or one that ended since. False if it failed: the caller
        asks Postgres instead."""
        if self._synchronized_at.get(event_id, -1.0) >= asked_at:
            return True
        task = self._syncing.get(event_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self.synchronize_events([event_id]), name=f"lease-sync-{event_id}"
            )
            self._syncing[event_id] = task
            task.add_done_callback(lambda t: self._synchronized(event_id, t))
        try:
            await asyncio.shield(task)
        except Exception as exc:  # any failure means the same: Postgres decides this request
            log.warning("lease synchronization of event %s failed: %s: %s", event_id, type(exc).__name__, exc)
            return False
        return True

    def _synchronized(self, event_id: str, task: "asyncio.Task[None]") -> None:
        self._syncing.pop(event_id, None)
        if not task.cancelled() and task.exception() is None:
            if len(self._synchronized_at) >= SYNCHRONIZED_EVENTS_KEPT:
                self._synchronized_at.clear()  # only spares repeated work; forgetting costs a resync at most
            self._synchronized_at[event_id] = time.monotonic()

    async def synchronize_events(self, event_ids: Sequence[str]) -> None:
        """Rebuild the seat leases of these events' live holds, their pool counters and blocked seats, drop
        the leases of their recently cancelled holds, then mark the events synchronized on this instance (in
        that order: see the module doc)."""
        front = self.front
        read_at = time.monotonic()
        owners = await self.store.live_leases(event_ids, self.settings.confirmed_lease_ms, REBUILD_MAX_HOLDS)
        leases = [
            (lease, ttl_ms)
            for o in owners
            if (ttl_ms := self.live_lease_ttl_ms(o.remaining_ms, read_at)) > 0
            for lease in self._seat_leases_of(o, event_ids)
        ]
        for batch in _batches(leases, LEASE_BATCH):
            await front.set_leases(batch)
        await self._synchronize_inventories(event_ids)
        dropped = 0
        async for cancelled in self.store.recently_cancelled(event_ids, self._window_ms, LEASE_BATCH):
            dropped += await front.release_leases(
                [lease for o in cancelled for lease in self._leases_of(o, event_ids)]
            )
        await front.mark_synchronized(event_ids)
        metrics.LEASE_RELEASES.labels("restart").inc(dropped)
        # A new event's first synchronization finds nothing to do: worth a line only when it found something.
        log.log(
            logging.INFO if leases or dropped else logging.DEBUG,
            "redis leases synchronized for %d event(s): %d rebuilt, %d stale dropped",
            len(event_ids),
            len(leases),
            dropped,
            extra={"events": len(event_ids), "rebuilt": len(leases), "dropped": dropped},
        )

    async def _synchronize_inventories(self, event_ids: Sequence[str]) -> None:
        """Make the events' pool counters and blocked seats in Redis Postgres's (an event without an inventory
        has none: any left from before are dropped)."""
        read_at = time.monotonic()
        state = await self.inventories.redis_state(event_ids)
        by_event: dict[str, list[PoolSync]] = {event_id: [] for event_id in event_ids}
        for pool in state.pools:
            by_event[pool.event_id].append(self._pool_sync(pool, read_at))
        for event_id in event_ids:
            await self.front.sync_pools(event_id, by_event[event_id])
            await self.front.sync_blocked(event_id, state.blocked.get(event_id, []))

    def _pool_sync(self, pool: PoolUnits, read_at: float) -> PoolSync:
        entries: list[tuple[str, int, int | None]] = []
        for token, holder, quantity, remaining in pool.holds:
            ttl_ms = None if remaining is None else lease_ttl_ms(remaining, read_at)
            if ttl_ms is None or ttl_ms > 0:
                entries.append((keys.lease_value(token, holder), quantity, ttl_ms))
        if pool.retired_units:
            entries.append((RETIRED_UNITS_MEMBER, pool.retired_units, None))
        return PoolSync(pool_id=pool.pool_id, capacity=pool.capacity, entries=entries)

    async def inventory_changed(self, event_id: str) -> None:
        """An event's inventory changed and committed: Redis forgets the event's synchronization now (best
        effort; the inventory outbox does it otherwise)."""
        await self.front.invalidate(event_id)

    def resynchronize(self, event_ids: Sequence[str]) -> None:
        """Postgres refused what Redis let through for these events (a pool short, a seat blocked): Redis's
        counters or blocks of them may be out of date (a confirm's stretch that never reached Redis leaves a
        confirmed hold's units to lapse there). Synchronize them again in the background, the marker left
        as it is (requests go on being judged meanwhile): at most once per RESYNC_INTERVAL_S per event, since
        a refusal can also be a hold's last LEASE_EARLY_END_MS, when Redis has let its units go already."""
        now = time.monotonic()
        for event_id in event_ids:
            if now - self._resynchronized_at.get(event_id, -RESYNC_INTERVAL_S) < RESYNC_INTERVAL_S:
                continue
            if len(self._resynchronized_at) >= SYNCHRONIZED_EVENTS_KEPT:
                self._resynchronized_at.clear()
            self._resynchronized_at[event_id] = now
            task = asyncio.get_running_loop().create_task(
                self.synchronize_event(event_id, now), name=f"resync-{event_id}"
            )
            self._resyncs.add(task)  # a reference until it ends: the loop keeps only weak ones
            task.add_done_callback(self._resyncs.discard)

    async def drain_inventory_changes(self) -> int:
        """Drain the inventory outbox: have Redis forget the synchronization of every event whose inventory
        changed, then clear their flags. Raises if Redis fails (the flags of that batch stay)."""

        async def tell(event_ids: Sequence[str]) -> None:
            for event_id in event_ids:
                if not await self.front.invalidate(event_id):
                    raise RedisUnavailable(f"could not invalidate event {event_id}")

        total = 0
        while True:
            taken = await self.inventories.take_due_syncs(EVENT_BATCH, tell)
            total += taken
            if taken < EVENT_BATCH:
                return total

    async def drain_outbox(self) -> int:
        """Drain the release outbox, batch by batch: drop the leases of cancelled holds in Redis, then clear
        their flags. Returns how many; raises if Redis fails (the flags of that batch stay)."""

        async def release(owners: Sequence[LeaseOwner]) -> None:
            await self.front.release_leases([lease for o in owners for lease in self._leases_of(o)])

        total = 0
        while True:
            taken = await self.store.release_due_leases(LEASE_BATCH, release)
            metrics.LEASE_RELEASES.labels("outbox").inc(taken)
            total += taken
            if taken < LEASE_BATCH:
                return total

    async def adopt(self, holds: Iterable[HoldRow], read_at: float) -> None:
        """Teach Redis the leases of live holds that Postgres said own slots (a loser's read at `read_at`), so
        the next rivals stop at Redis."""
        leases: list[tuple[Lease, int]] = []
        for hold in {h.id: h for h in holds}.values():
            remaining_ms = None if hold.status == "confirmed" else hold.remaining_ms
            # The read may be out of date by the time the lease is set (the hold cancelled, and its lease
            # released, in between): an adopted lease lives ADOPTED_LEASE_MAX_MS at most, so such a lease
            # misleads for seconds, not for the hour of a confirmed lease.
            ttl_ms = min(self.live_lease_ttl_ms(remaining_ms, read_at), ADOPTED_LEASE_MAX_MS)
            if ttl_ms > 0:
                leases.extend((lease, ttl_ms) for lease in self._seat_leases_of(hold))
        await self.front.adopt(leases)


T = TypeVar("T")


def _batches(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
