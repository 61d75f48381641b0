"""Live availability streams: one hub per worker follows the hold event feed for the events someone watches,
and fans each event's changes out to its subscribers as Server-Sent Events, coalesced.

What a change costs does not grow with the subscribers: the hub reads the feed once per head move (and only
while someone watches), takes seat changes from the events themselves, reads an event's pool counts from the
worker's availability cache once per flush when they changed, and encodes each message once; a subscriber is
a cursor into its event's recent messages, served from memory.

Positions are the feed's ids, the same on every worker: a message's `id` is the feed position it reflects
(every change of the event up to it), so a client that reconnects, to this worker or another, resumes with
`Last-Event-ID` from wherever the event's recent messages still reach back to; else it starts from a snapshot.
"""

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from gateway import hold_events, metrics
from gateway.availability import AvailabilityCache
from gateway.config import Settings
from gateway.errors import BackendUnavailable, TooManyStreams
from gateway.hold_events import HoldEventFeed, HoldEventRow
from gateway.inventory_store import InventoryStore
from gateway.models import HoldEventType, SlotStateName, StreamChanges, StreamSnapshot
from gateway.store import Store

log = logging.getLogger(__name__)

# A seat's state after each kind of event of a hold on it (an extension changes no seat).
SEAT_STATE_AFTER: dict[HoldEventType, SlotStateName | None] = {
    "hold.created": "held",
    "hold.extended": None,
    "hold.confirmed": "confirmed",
    "hold.cancelled": "free",
    "hold.expired": "free",
}
# Messages kept per event, for clients that resume (Last-Event-ID) and subscribers that fall behind (a
# subscriber further behind than this starts over from a snapshot): minutes' worth at two flushes a second.
HISTORY_PER_EVENT = 512
# An event nobody watches any more is kept this long after its last subscriber left, so that a client that
# reconnects meanwhile resumes where it was.
RESUME_WINDOW_S = 60.0
# Events kept without subscribers, at most (the longest unwatched are forgotten first).
IDLE_EVENTS_KEPT = 1_000
# Hold events read per statement.
FEED_PAGE_SIZE = 1_000
# A hub this far behind the feed's head (it was idle, or Postgres was away) skips to the head rather than
# read it all: every subscriber then starts over from a snapshot.
CATCH_UP_MAX_EVENTS = 20_000
# Snapshot and availability reads under way at once (each holds a pooled connection).
READS_AT_ONCE = 4
# After a failed read, the hub (or a subscriber's snapshot) tries again this much later.
RETRY_INTERVAL_S = 1.0
# The longest the hub waits for the feed without looking at its subscribers and idle events.
MAX_WAIT_S = 1.0

KEEP_ALIVE = b": keep-alive\n\n"
_SNAPSHOTS_SENT = metrics.STREAM_MESSAGES.labels("snapshot")
_CHANGES_SENT = metrics.STREAM_MESSAGES.labels("changes")
_encode = msgspec.json.Encoder().encode


def frame(position: int, kind: str, data: bytes) -> bytes:
    """One Server-Sent Event. msgspec's JSON never holds a raw line break, so `data` is one line."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (position, kind.encode(), data)


@dataclass(frozen=True, slots=True)
class Message:
    position: int  # the feed position it reflects: every change of its event up to here
    frame: bytes  # encoded once, sent to every subscriber


@dataclass(slots=True)
class _Pending:
    """Changes of one event brought by one read of the feed, not yet sent."""

    position: int  # the feed position the read reached
    read_at: float  # time.monotonic() once the read returned: a read of Postgres sent later sees them
    seats: dict[str, SlotStateName] = field(default_factory=dict)
    pools: bool = False  # a hold with units of the event's pools changed


@dataclass(slots=True)
class _Snapshot:
    started_at: float
    position: int  # the feed's head as this worker knew it when the reads began
    task: "asyncio.Task[Message]"

    def usable(self, floor: float, complete_after: int) -> bool:
        if self.started_at < floor or self.position < complete_after:
            return False
        return not (self.task.done() and (self.task.cancelled() or self.task.exception() is not None))


class Channel:
    """One event's stream on this worker: its recent messages, its changes not yet sent, its subscribers."""

    def __init__(self, event_id: str, complete_after: int) -> None:
        self.event_id = event_id
        self.subscribers: set[Subscriber] = set()
        self.history: deque[Message] = deque()
        # `history` holds every message after this position (it is where the channel began, or the last
        # message dropped for room).
        self.complete_after = complete_after
        self.pending: list[_Pending] = []
        self.flush_after = -math.inf  # time.monotonic() before which it is not flushed again
        self.idle_since: float | None = None
        self.snapshot: _Snapshot | None = None
        self.snapshot_floor = -math.inf  # a snapshot begun before this is out of date (inventory changed)
        # event_inventories.updated_at as last seen (None: no inventory), once known
        self.inventory_version: datetime | None = None
        self.inventory_known = False
        self._changed = asyncio.Event()

    def after(self, position: int) -> list[Message] | None:
        """The messages after `position`, in order; None if some of them are no longer kept."""
        if position < self.complete_after:
            return None
        newer: list[Message] = []
        for message in reversed(self.history):
            if message.position <= position:
                break
            newer.append(message)
        newer.reverse()
        return newer

    def append(self, message: Message) -> None:
        self.history.append(message)
        while len(self.history) > HISTORY_PER_EVENT:
            self.complete_after = self.history.popleft().position
        self.wake()

    def wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, timeout_s: float) -> None:
        """Until a message is added or the channel is woken, at most `timeout_s`."""
        changed = self._changed
        with suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout_s)


class Subscriber:
    """One open stream: a cursor into its event's messages."""

    __slots__ = ("channel", "closed", "first", "needs_snapshot", "position")

    def __init__(self, channel: Channel, position: int, *, needs_snapshot: bool) -> None:
        self.channel = channel
        self.position = position  # the last position sent (or resumed from)
        self.needs_snapshot = needs_snapshot
        self.first: Message | None = None  # a snapshot read before the stream began, sent first
        self.closed = False


class StreamHub:
    def __init__(
        self,
        store: Store,
        feed: HoldEventFeed,
        availability: AvailabilityCache,
        inventories: InventoryStore,
        settings: Settings,
    ) -> None:
        self._store = store
        self._feed = feed
        self._availability = availability
        self._inventories = inventories
        self._max_subscribers = settings.stream_max_subscribers
        self._flush_interval_s = settings.stream_flush_interval_s
        self._heartbeat_s = settings.stream_heartbeat_s
        self._inventory_check_s = settings.stream_inventory_check_s
        self._retry_after_s = settings.retry_after_s
        self._channels: dict[str, Channel] = {}
        self._reads = asyncio.Semaphore(READS_AT_ONCE)
        self.position = 0  # the feed position up to which events were applied
        self._following = False  # whether it has begun (_begin): until then `position` means nothing
        self._subscribers = 0
        self._wanted = asyncio.Event()  # set when someone subscribes
        self._next_inventory_check = 0.0
        self._closed = False

    @property
    def subscribers(self) -> int:
        """Open streams on this worker."""
        return self._subscribers

    def subscribe(self, event_id: str, last_event_id: int | None) -> Subscriber:
        """A new subscriber of the event: resumed after `last_event_id` if the event's kept messages reach
        back to it, else to be sent a snapshot first. TooManyStreams past the worker's cap."""
        if self._subscribers >= self._max_subscribers:
            raise TooManyStreams(self._retry_after_s)
        channel = self._channels.get(event_id)
        if channel is None:
            # Until the hub begins, it will begin at the head: nothing before that is kept.
            start = self.position if self._following else self._feed.head
            channel = self._channels[event_id] = Channel(event_id, start)
        # Before the hub has begun, this worker may not know the head yet: a first subscriber starts over.
        if (
            self._following
            and last_event_id is not None
            and channel.complete_after <= last_event_id <= self._known_head()
        ):
            subscriber = Subscriber(channel, last_event_id, needs_snapshot=False)
        else:
            subscriber = Subscriber(channel, 0, needs_snapshot=True)
        channel.subscribers.add(subscriber)
        channel.idle_since = None
        self._subscribers += 1
        metrics.STREAM_SUBSCRIBERS.inc()
        self._wanted.set()
        return subscriber

    async def first_snapshot(self, subscriber: Subscriber) -> None:
        """Read the subscriber's snapshot now, so that a failure is an error answer rather than a stream that
        ends at once (BackendUnavailable)."""
        if subscriber.needs_snapshot:
            subscriber.first = await self._snapshot(subscriber.channel)
            subscriber.needs_snapshot = False
            subscriber.position = subscriber.first.position

    def _known_head(self) -> int:
        """The highest feed position this worker knows to be committed: the feed's head, or further if the
        hub has read events another worker's sequencer numbered since."""
        return max(self._feed.head, self.position)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """The stream ended (the client went away, or the worker stops); safe to call again."""
        if subscriber.closed:
            return
        subscriber.closed = True
        channel = subscriber.channel
        channel.subscribers.discard(subscriber)
        if not channel.subscribers:
            channel.idle_since = time.monotonic()
        self._subscribers -= 1
        metrics.STREAM_SUBSCRIBERS.dec()

    async def frames(self, subscriber: Subscriber) -> AsyncIterator[bytes]:
        """The stream's bytes: the first snapshot (or the messages after the resumed position), then each
        message of its event as it comes, and a keep-alive comment whenever it has been quiet that long."""
        channel = subscriber.channel
        written_at = time.monotonic()
        try:
            if subscriber.first is not None:
                yield subscriber.first.frame
                subscriber.first = None
                _SNAPSHOTS_SENT.inc()
                written_at = time.monotonic()
            while not self._closed and not subscriber.closed:
                if subscriber.needs_snapshot:
                    try:
                        snapshot = await self._snapshot(channel)
                    except BackendUnavailable:
                        await asyncio.sleep(RETRY_INTERVAL_S)
                        continue
                    subscriber.needs_snapshot = False
                    subscriber.position = snapshot.position
                    yield snapshot.frame
                    _SNAPSHOTS_SENT.inc()
                    written_at = time.monotonic()
                    continue
                newer = channel.after(subscriber.position)
                if newer is None:
                    subscriber.needs_snapshot = True
                    metrics.STREAM_RESYNCS.labels("behind").inc()
                    continue
                for message in newer:
                    yield message.frame
                    subscriber.position = message.position
                if newer:
                    _CHANGES_SENT.inc(len(newer))
                    written_at = time.monotonic()
                    continue
                quiet_s = time.monotonic() - written_at
                if quiet_s >= self._heartbeat_s:
                    yield KEEP_ALIVE
                    written_at = time.monotonic()
                    continue
                await channel.wait(self._heartbeat_s - quiet_s)
        finally:
            self.unsubscribe(subscriber)

    async def _snapshot(self, channel: Channel) -> Message:
        """A snapshot of the event for a subscriber that has to start over: one read shared by every
        subscriber of the event that needs one while it runs (or since, if the kept messages reach back)."""
        current = channel.snapshot
        if current is None or not current.usable(channel.snapshot_floor, channel.complete_after):
            started_at = time.monotonic()
            position = self._known_head()  # each event up to it committed before started_at
            task = asyncio.get_running_loop().create_task(
                self._read_snapshot(channel, started_at, position), name=f"stream-snapshot-{channel.event_id}"
            )
            current = channel.snapshot = _Snapshot(started_at, position, task)
        return await asyncio.shield(current.task)

    async def _read_snapshot(self, channel: Channel, started_at: float, position: int) -> Message:
        event_id = channel.event_id
        async with self._reads:
            # The version first: a change after it is seen by the next check, even if the seats show it.
            versions = await self._inventories.versions([event_id])
            seats = await self._inventories.seat_states(event_id)
        # Outside the limit: it may wait (up to 0.9 s) for the cache's next read.
        answer = await self._availability.fresh(event_id, started_at, wait=True)
        assert answer is not None
        if channel.snapshot_floor <= started_at:
            channel.inventory_version = versions.get(event_id)
            channel.inventory_known = True
        data = StreamSnapshot(event_id=event_id, availability=answer.availability, seats=seats)
        return Message(position, frame(position, "snapshot", _encode(data)))

    async def run(self) -> None:
        """Follow the feed while anyone watches, until cancelled; a failure only delays the next pass."""
        while True:
            try:
                await self._pass()
            except BackendUnavailable as exc:
                log.debug("live streams: database unavailable (%s)", exc.__cause__)
                await asyncio.sleep(RETRY_INTERVAL_S)
            except Exception:  # anything else must not end the streams for the life of the worker
                log.exception("live streams pass failed")
                await asyncio.sleep(RETRY_INTERVAL_S)

    async def close(self) -> None:
        """End every stream (the worker stops)."""
        self._closed = True
        for channel in self._channels.values():
            channel.wake()

    async def _pass(self) -> None:
        if not self._subscribers:
            self._forget_idle(time.monotonic())
            self._wanted.clear()
            await self._wanted.wait()
        if not self._following:
            await self._begin()
        if self._feed.head - self.position > CATCH_UP_MAX_EVENTS:
            self._skip_to(self._feed.head)
        now = time.monotonic()
        due = min((c.flush_after for c in self._channels.values() if c.pending), default=now + MAX_WAIT_S)
        timeout_s = min(max(due - now, 0.0), self._next_inventory_check - now, MAX_WAIT_S)
        if await self._feed.wait_past(self.position, max(timeout_s, 0.0)):
            await self._read_feed()
        now = time.monotonic()
        if any(c.pending and c.flush_after <= now for c in self._channels.values()):
            await self._flush(now)
        if now >= self._next_inventory_check:
            self._next_inventory_check = now + self._inventory_check_s
            await self._check_inventories()
        self._forget_idle(now)

    async def _begin(self) -> None:
        """The first subscriber came: the hub starts where its first events began (the head when they were
        subscribed to). Later, after idle spells, it reads what it missed, unless that is too much (_pass
        skips it then)."""
        if self._feed.head == 0:
            await self._feed.read_head()  # the worker may have just started: learn the head
        begun = [channel.complete_after for channel in self._channels.values()]
        self.position = min(begun, default=self._feed.head)
        self._following = True

    def _skip_to(self, head: int) -> None:
        """Skip the feed up to `head`: what the channels had not sent is lost, so their subscribers start over
        from a snapshot (their position is before the channels' new beginning)."""
        if self._following:
            log.warning("live streams: %d hold events behind, skipped to the head", head - self.position)
        self.position = head
        for channel in self._channels.values():
            channel.pending.clear()
            channel.history.clear()
            channel.complete_after = head
            if channel.subscribers and self._following:
                metrics.STREAM_RESYNCS.labels("skipped").inc(len(channel.subscribers))
            channel.wake()

    async def _read_feed(self) -> None:
        """Apply every event after the hub's position, a page per statement."""
        while True:
            rows = await hold_events.read_after(self._store, self.position, FEED_PAGE_SIZE)
            if not rows:
                return
            self._apply(rows, time.monotonic())
            self.position = rows[-1].id
            if len(rows) < FEED_PAGE_SIZE:
                return

    def _apply(self, rows: Iterable[HoldEventRow], read_at: float) -> None:
        """The seat states and pool changes the events bring to the watched events, in feed order (a claim
        that took over a lapsed seat wrote the old hold's `hold.expired` before its own `hold.created`)."""
        touched: dict[str, _Pending] = {}
        for row in rows:
            state = SEAT_STATE_AFTER[row.type]
            for part in row.hold.parts:
                channel = self._channels.get(part.event_id)
                if channel is None:
                    continue
                pending = touched.get(part.event_id)
                if pending is None:
                    pending = touched[part.event_id] = _Pending(position=0, read_at=read_at)
                    channel.pending.append(pending)
                if state is not None:
                    pending.seats.update(dict.fromkeys(part.seats, state))
                if part.pools:
                    pending.pools = True
        last = max((row.id for row in rows), default=self.position)
        for pending in touched.values():
            pending.position = last  # the read saw every event up to here; none other touched the event

    async def _flush(self, now: float) -> None:
        due = [c for c in self._channels.values() if c.pending and c.flush_after <= now]
        await asyncio.gather(*(self._flush_channel(channel, now) for channel in due))

    async def _flush_channel(self, channel: Channel, now: float) -> None:
        """Send what the channel has pending as one message, as far as its pool counts are known: pool counts
        come from an availability read sent after the events were read (the cache's, read at most once per
        0.9 s), and changes after the first that such a read does not cover wait for the next flush."""
        channel.flush_after = now + self._flush_interval_s
        first_pools = next((p for p in channel.pending if p.pools), None)
        answer = None
        if first_pools is not None:
            async with self._reads:
                answer = await self._availability.fresh(channel.event_id, first_pools.read_at, wait=False)
        covered_until = answer.sent_at if answer is not None else -math.inf
        ready = 0
        for pending in channel.pending:
            if pending.pools and pending.read_at > covered_until:
                break
            ready += 1
        if not ready:
            return
        sent, channel.pending = channel.pending[:ready], channel.pending[ready:]
        seats: dict[str, SlotStateName] = {}
        for pending in sent:
            seats.update(pending.seats)
        pools = []
        if answer is not None and answer.availability is not None and any(p.pools for p in sent):
            pools = answer.availability.pools
        position = sent[-1].position
        data = StreamChanges(event_id=channel.event_id, seats=seats, pools=pools)
        channel.append(Message(position, frame(position, "changes", _encode(data))))

    async def _check_inventories(self) -> None:
        """Blocked seats and inventory replacements are not hold events: when a watched event's inventory
        changed, its subscribers are sent a fresh snapshot."""
        watched = [c for c in self._channels.values() if c.subscribers]
        if not watched:
            return
        versions = await self._inventories.versions([c.event_id for c in watched])
        now = time.monotonic()
        for channel in watched:
            seen = versions.get(channel.event_id)
            known, channel.inventory_known = channel.inventory_known, True
            if seen == channel.inventory_version or not known:
                channel.inventory_version = seen
                continue
            channel.inventory_version = seen
            channel.snapshot_floor = now
            for subscriber in channel.subscribers:
                subscriber.needs_snapshot = True
            metrics.STREAM_RESYNCS.labels("inventory").inc(len(channel.subscribers))
            channel.wake()

    def _forget_idle(self, now: float) -> None:
        """Forget events unwatched for RESUME_WINDOW_S, and the longest unwatched past IDLE_EVENTS_KEPT."""
        idle = sorted(
            (c.idle_since, event_id)
            for event_id, c in self._channels.items()
            if not c.subscribers and c.idle_since is not None
        )
        excess = len(idle) - IDLE_EVENTS_KEPT
        for index, (idle_since, event_id) in enumerate(idle):
            if index < excess or now - idle_since >= RESUME_WINDOW_S:
                del self._channels[event_id]
