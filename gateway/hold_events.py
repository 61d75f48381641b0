"""The hold event feed: every state change of a hold, durably, in commit order.

The statements that change a hold write its event in the same transaction (queries.sql). Here: the
sequencer that numbers committed events (run by the background leader, gateway.leader, and still under an
advisory lock: one numbering transaction at a time per database), each worker's knowledge of the feed's head
(told by the sequencer's NOTIFY, so that long polls, webhook delivery and live streams wait on memory, not on
a query each, and no worker polls), and reads of the feed.
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from asyncpg import Connection, Record
from asyncpg.pool import PoolConnectionProxy

from gateway import sql
from gateway.errors import BackendUnavailable
from gateway.leader import Leadership
from gateway.models import HoldEvent, HoldEventType
from gateway.store import HoldRow, Store

log = logging.getLogger(__name__)

# Events numbered per statement, at most: a backlog is worked off over several passes.
NUMBER_BATCH_SIZE = 5_000


@dataclass(frozen=True, slots=True)
class HoldEventRow:
    id: int  # the feed position
    type: HoldEventType
    hold_id: str
    occurred_at: datetime
    hold: HoldRow  # as it was after the change

    @classmethod
    def stored(
        cls, event_id: int, event_type: str, hold_id: str, occurred_at: datetime, hold: dict[str, Any]
    ) -> "HoldEventRow":
        """From hold_events' columns (`hold`: its copy of the holds row, as the jsonb codec decodes it)."""
        kind = cast(HoldEventType, event_type)  # as the table's check constraint allows
        return cls(event_id, kind, hold_id, occurred_at, HoldRow.from_event(hold, occurred_at))

    def to_model(self) -> HoldEvent:
        return HoldEvent(id=self.id, type=self.type, occurred_at=self.occurred_at, hold=self.hold.to_model())


async def read_after(store: Store, after: int, limit: int) -> list[HoldEventRow]:
    """Up to `limit` events after feed position `after`, in order."""
    async with store.connection("hold_events_after") as conn:
        records = await conn.fetch(sql.HOLD_EVENTS_AFTER, after, limit)
    return [
        HoldEventRow.stored(r["id"], r["type"], r["hold_id"], r["occurred_at"], r["hold"]) for r in records
    ]


async def purge(store: Store, older_than_s: int, batch_size: int) -> int:
    """Delete up to `batch_size` events older than `older_than_s`; how many were deleted."""
    async with store.connection("purge_hold_events") as conn:
        purged: int = await conn.fetchval(sql.PURGE_HOLD_EVENTS, older_than_s, batch_size)
    return purged


class HoldEventFeed:
    """A worker's view of the feed: it numbers events while it is the background leader (gateway.leader),
    learns the head from the leader's NOTIFY (gateway.listener; and from a read on each (re)connect and every
    `hold_events_resync_s`, should a notification be lost), and wakes whoever waits for an event past some
    position."""

    def __init__(self, store: Store, interval_s: float) -> None:
        self._store = store
        self._interval_s = interval_s
        self.head = 0  # the highest feed position this worker has seen numbered
        self._advanced = asyncio.Event()  # set, and replaced, whenever `head` moves

    async def number(self) -> int:
        """The sequencer's pass: number what is committed, fan out its webhook deliveries and tell every
        worker the new head, in one transaction; return the head. The advisory lock still makes it one
        numbering transaction at a time per database, should two workers both believe they lead. With nothing
        to number, one statement, and no transaction."""
        async with self._store.connection("number_hold_events") as conn:
            idle = await conn.fetchrow(sql.HOLD_EVENTS_PENDING)
            assert idle is not None  # always one row
            if not idle["pending"]:
                self._moved_to(idle["head"])
                return self.head
            head = await self._number_pending(conn)
        self._moved_to(head)
        return head

    async def _number_pending(self, conn: "PoolConnectionProxy[Record]") -> int:
        async with conn.transaction():
            if await conn.fetchval(sql.TRY_SEQUENCER_LOCK, sql.SEQUENCER_LOCK_KEY):
                record = await conn.fetchrow(sql.NUMBER_HOLD_EVENTS, NUMBER_BATCH_SIZE)
                assert record is not None
                head: int = record["head"]
                if record["numbered"]:
                    # Their webhook deliveries, in the transaction that numbers them: a numbered event is
                    # never without its deliveries, whoever crashes when (gateway.webhooks sends them).
                    await conn.fetchval(sql.FAN_OUT_WEBHOOK_DELIVERIES, head - record["numbered"], head)
                    # Delivered to the listeners when (and only if) the numbering commits.
                    await conn.execute(sql.NOTIFY, sql.HOLD_EVENTS_CHANNEL, str(head))
            else:
                head = await conn.fetchval(sql.HOLD_EVENTS_HEAD)
        return head

    async def read_head(self, conn: Connection | None = None) -> int:
        """Read the head (on `conn`, the listener's connection, or a pooled one); return it."""
        if conn is not None:
            head: int = await conn.fetchval(sql.HOLD_EVENTS_HEAD)
        else:
            async with self._store.connection("hold_events_head") as pooled:
                head = await pooled.fetchval(sql.HOLD_EVENTS_HEAD)
        self._moved_to(head)
        return head

    def notified(self, payload: str) -> None:
        """The sequencer's NOTIFY (HOLD_EVENTS_CHANNEL): the head it numbered up to."""
        try:
            head = int(payload)
        except ValueError:
            log.warning("hold event feed: a notification that is no head: %r", payload[:40])
            return
        self._moved_to(head)

    def _moved_to(self, head: int) -> None:
        if head > self.head:
            self.head = head
            self._advanced.set()
            self._advanced = asyncio.Event()

    async def wait_past(self, position: int, timeout_s: float) -> bool:
        """Wait until the head is past `position`, at most `timeout_s`; whether it is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.head <= position:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._advanced.wait(), remaining)
            except TimeoutError:
                return self.head > position
        return True

    async def run_sequencer(self, leadership: Leadership) -> None:
        """Number every `interval_s` while this worker leads, until cancelled; an outage only delays it."""
        while True:
            await leadership.until_leading()
            try:
                await self.number()
            except BackendUnavailable as exc:
                log.debug("hold event sequencer: database unavailable (%s)", exc.__cause__)
            except Exception:  # anything else must not end the sequencer for the life of the worker
                log.exception("hold event sequencer pass failed")
            await asyncio.sleep(self._interval_s)
