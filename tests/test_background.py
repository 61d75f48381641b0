"""Background tasks end when the worker stops, even those that swallow a cancellation."""

import asyncio

from gateway import background


async def test_stop_ends_a_task_that_swallowed_its_cancellation() -> None:
    """Regression: asyncpg's wait_for (Python < 3.12) returns a connection acquired just as a cancellation
    came instead of raising it, so a cancelled sweeper could run on and hold a worker's shutdown forever."""
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as the sweeper did when its acquire won the race with the cancel

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(background.stop(task), 2)

    assert task.cancelled()
    assert swallowed == 1


async def test_stop_leaves_a_task_that_failed_to_its_own_log() -> None:
    async def failing() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(failing())
    await asyncio.sleep(0)
    await background.stop(task)

    assert task.done()
    assert isinstance(task.exception(), RuntimeError)
