"""A bulkhead: at most `size` callers inside at once; the rest wait, parked, and past the queue budget are
shed as 503 Overloaded. Used in front of Redis calls and of the create path's Redis step."""

import asyncio

from gateway.errors import Overloaded


class Bulkhead:
    def __init__(self, size: int, *, queue_timeout_s: float, retry_after_s: int) -> None:
        self._places = asyncio.Semaphore(size)
        self._queue_timeout_s = queue_timeout_s
        self._retry_after_s = retry_after_s

    async def enter(self) -> None:
        """Take a place; wait at most the queue budget, then raise Overloaded. Pair with leave()."""
        if not self._places.locked():
            await self._places.acquire()  # a free place: taken at once, no timer needed
            return
        try:
            async with asyncio.timeout(self._queue_timeout_s):
                await self._places.acquire()
        except TimeoutError:
            raise Overloaded(self._retry_after_s) from None

    def leave(self) -> None:
        self._places.release()
