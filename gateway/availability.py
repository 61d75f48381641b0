"""What is left of an event, for anyone: read far more often than holds are made, so each worker answers from
one read of Postgres per event per AVAILABILITY_MAX_AGE_S, shared by every request that arrives meanwhile
(a storm of reads costs Postgres one statement per event per second per worker, not one per read)."""

import asyncio
import time

from gateway.errors import InventoryNotFound
from gateway.inventory_store import InventoryStore
from gateway.models import Availability

# How old an answer may be, from when its read was sent: the contract allows a lag of 1 s.
AVAILABILITY_MAX_AGE_S = 0.9
# Events whose last answer a worker keeps, at most.
AVAILABILITY_EVENTS_KEPT = 10_000


class AvailabilityCache:
    def __init__(self, inventories: InventoryStore) -> None:
        self._inventories = inventories
        # event id -> (when its read was sent, monotonic; the answer, None: no inventory)
        self._answers: dict[str, tuple[float, Availability | None]] = {}
        self._reading: dict[str, asyncio.Task[tuple[float, Availability | None]]] = {}

    async def get(self, event_id: str) -> Availability:
        """The event's availability, at most AVAILABILITY_MAX_AGE_S old; InventoryNotFound without one."""
        cached = self._answers.get(event_id)
        if cached is None or time.monotonic() - cached[0] >= AVAILABILITY_MAX_AGE_S:
            cached = await self._read(event_id)
        if cached[1] is None:
            raise InventoryNotFound()
        return cached[1]

    async def _read(self, event_id: str) -> tuple[float, Availability | None]:
        """One read per event at a time: requests arriving while it runs share it."""
        task = self._reading.get(event_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._fetch(event_id), name=f"availability-{event_id}"
            )
            self._reading[event_id] = task
            task.add_done_callback(lambda _: self._reading.pop(event_id, None))
        return await asyncio.shield(task)

    async def _fetch(self, event_id: str) -> tuple[float, Availability | None]:
        sent_at = time.monotonic()
        answer = (sent_at, await self._inventories.availability(event_id))
        if len(self._answers) >= AVAILABILITY_EVENTS_KEPT:
            self._answers.clear()  # only spares reads: forgetting costs one statement per event
        self._answers[event_id] = answer
        return answer
