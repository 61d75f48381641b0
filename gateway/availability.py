"""What is left of an event, for anyone: read far more often than holds are made, so each worker answers from
one read of Postgres per event per AVAILABILITY_MAX_AGE_S, shared by every request that arrives meanwhile
(a storm of reads costs Postgres one statement per event per second per worker, not one per read)."""

import asyncio
import time
from typing import NamedTuple

from gateway.errors import InventoryNotFound
from gateway.inventory_store import InventoryStore
from gateway.models import Availability

# How old an answer may be, from when its read was sent: the contract allows a lag of 1 s.
AVAILABILITY_MAX_AGE_S = 0.9
# Events whose last answer a worker keeps, at most.
AVAILABILITY_EVENTS_KEPT = 10_000


class Answer(NamedTuple):
    sent_at: float  # when its read was sent, time.monotonic(): it reflects every commit before that
    availability: Availability | None  # None: the event has no inventory


class AvailabilityCache:
    def __init__(self, inventories: InventoryStore) -> None:
        self._inventories = inventories
        self._answers: dict[str, Answer] = {}
        # event id -> the read under way (sent at its answer's sent_at)
        self._reading: dict[str, tuple[float, asyncio.Task[Answer]]] = {}

    async def get(self, event_id: str) -> Availability:
        """The event's availability, at most AVAILABILITY_MAX_AGE_S old; InventoryNotFound without one."""
        cached = self._answers.get(event_id)
        if cached is None or time.monotonic() - cached.sent_at >= AVAILABILITY_MAX_AGE_S:
            cached = await self._read(event_id)
        if cached.availability is None:
            raise InventoryNotFound()
        return cached.availability

    async def fresh(self, event_id: str, sent_after: float, *, wait: bool) -> Answer | None:
        """An answer from a read sent at or after `sent_after` (time.monotonic()), so that it reflects what
        was committed before then, without ever reading more often than once per AVAILABILITY_MAX_AGE_S: the
        kept answer or the read under way if recent enough, else a new read if the kept answer is old enough
        to be replaced; else, too soon, None, or with `wait` the first read allowed."""
        while True:
            cached = self._answers.get(event_id)
            if cached is not None and cached.sent_at >= sent_after:
                return cached
            reading = self._reading.get(event_id)
            if reading is not None:
                answer = await asyncio.shield(reading[1])
                if answer.sent_at >= sent_after:
                    return answer
                continue
            now = time.monotonic()
            if cached is None or now - cached.sent_at >= AVAILABILITY_MAX_AGE_S:
                return await self._read(event_id)
            if not wait:
                return None
            await asyncio.sleep(cached.sent_at + AVAILABILITY_MAX_AGE_S - now)

    async def _read(self, event_id: str) -> Answer:
        """One read per event at a time: requests arriving while it runs share it."""
        reading = self._reading.get(event_id)
        if reading is None:
            sent_at = time.monotonic()
            task = asyncio.get_running_loop().create_task(
                self._fetch(event_id, sent_at), name=f"availability-{event_id}"
            )
            reading = self._reading[event_id] = (sent_at, task)
            task.add_done_callback(lambda _: self._reading.pop(event_id, None))
        return await asyncio.shield(reading[1])

    async def _fetch(self, event_id: str, sent_at: float) -> Answer:
        answer = Answer(sent_at, await self._inventories.availability(event_id))
        if len(self._answers) >= AVAILABILITY_EVENTS_KEPT:
            self._answers.clear()  # only spares reads: forgetting costs one statement per event
        self._answers[event_id] = answer
        return answer
