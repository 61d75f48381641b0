"""A bulkhead: at most `size` callers inside at once; the rest wait, parked, in arrival order, and past the
queue budget are shed as 503 Overloaded. Used in front of Redis calls and of the create path's Redis step.

`give_way(for_s)` narrows it to `size_giving_way` for a while (those already inside stay): the create path
lets a storm in wide open, and narrows to a trickle while confirms compete with a storm of losers.
"""

import asyncio
import time
from collections import deque

from gateway.errors import Overloaded


class Bulkhead:
    def __init__(
        self, size: int, *, queue_timeout_s: float, retry_after_s: int, size_giving_way: int | None = None
    ) -> None:
        self._size = size
        self._size_giving_way = size if size_giving_way is None else min(size, size_giving_way)
        self._queue_timeout_s = queue_timeout_s
        self._retry_after_s = retry_after_s
        self._inside = 0
        self._waiting: deque[asyncio.Future[None]] = deque()  # a future's result: its place, handed over
        self._giving_way_until = 0.0  # time.monotonic()

    @property
    def _limit(self) -> int:
        if self._giving_way_until and time.monotonic() < self._giving_way_until:
            return self._size_giving_way
        return self._size

    def give_way(self, for_s: float) -> bool:
        """Admit at most `size_giving_way` for the next `for_s` seconds (or longer, if asked before); whether
        it admitted `size` until now."""
        now = time.monotonic()
        started = now >= self._giving_way_until
        self._giving_way_until = max(self._giving_way_until, now + for_s)
        return started

    async def enter(self) -> None:
        """Take a place; wait at most the queue budget, then raise Overloaded. Pair with leave()."""
        if self._inside < self._limit and not self._waiting:
            self._inside += 1  # a free place: taken at once, no timer needed
            return
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(place)
        try:
            async with asyncio.timeout(self._queue_timeout_s):
                await place
        except BaseException as exc:
            # A place handed over in the same pass as the timeout or a cancel: given back. A pending one is
            # cancelled with its waiter, and skipped when its turn comes.
            if place.done() and not place.cancelled():
                self.leave()
            else:
                place.cancel()
            if isinstance(exc, TimeoutError):
                raise Overloaded(self._retry_after_s) from None
            raise

    def leave(self) -> None:
        self._inside -= 1
        limit = self._limit
        while self._waiting and self._inside < limit:
            place = self._waiting.popleft()
            if not place.done():
                place.set_result(None)
                self._inside += 1
