"""Stopping a worker's background tasks (the sweeper, the loop-lag watch, a Redis recovery) for good."""

import asyncio
from collections.abc import Iterable
from contextlib import suppress

# How often a task that survived its cancellation is cancelled again.
RECANCEL_INTERVAL_S = 0.1


async def stop(task: "asyncio.Task[None]") -> None:
    """Cancel `task` and wait until it has ended. A cancellation can be swallowed: asyncpg's wait_for (on
    Python < 3.12) returns a connection acquired just as the cancellation came, rather than leak it, and the
    task then runs on; so it is cancelled again until it ends. A task that failed is left to its own log."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=RECANCEL_INTERVAL_S)
    with suppress(asyncio.CancelledError, Exception):
        task.result()


async def stop_all(tasks: "Iterable[asyncio.Task[None]]") -> None:
    """stop() each of `tasks`, in order."""
    for task in tasks:
        await stop(task)
