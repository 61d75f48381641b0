"""How late the event loop runs a timer: the time any ready callback, a Redis reply included, waits its turn.

The Redis timeout must sit well above this lag under a storm, or a busy worker reads its own backlog as a dead
Redis and drops to db-only; gateway_event_loop_lag_seconds is what it was chosen from (see README).
"""

import asyncio

from gateway import metrics

TICK_S = 0.05


async def watch_loop_lag() -> None:
    """Observe the lag of a TICK_S timer, forever (cancel to stop)."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(TICK_S)
        metrics.EVENT_LOOP_LAG_SECONDS.observe(max(0.0, loop.time() - started - TICK_S))
