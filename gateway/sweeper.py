"""Background upkeep in each worker: marks lapsed holds expired, purges old idempotency records, moves holds
that ended long ago out of the hot tables (retention), drops the leases of cancelled holds in Redis (the
release outbox) and catches up on a restarted or flushed Redis (gateway.lease_sync's `tend`).

Correctness never waits for it: reads treat a lapsed hold as expired and claims take over lapsed slots.
Several workers sweep side by side; FOR UPDATE SKIP LOCKED keeps them off each other's rows.
"""

import asyncio
import logging

from gateway import hold_events, metrics
from gateway.config import Settings
from gateway.errors import BackendUnavailable
from gateway.holds import HoldService
from gateway.redis_front import RedisUnavailable
from gateway.store import Store

log = logging.getLogger(__name__)

# Retention batches per pass, at most: a large backlog (a first run on years of history) is worked off over
# many passes, so that it never holds up the expiry and lease upkeep of one.
RETENTION_BATCHES_PER_PASS = 4


async def sweep_once(store: Store, settings: Settings) -> int:
    """Expire lapsed holds until none are left (batch by batch); return how many were expired."""
    total = 0
    while True:
        lifetimes_s = await store.expire_holds(settings.sweep_batch_size)
        metrics.SWEEPER_BATCHES.inc()
        metrics.SWEEPER_ROWS.inc(len(lifetimes_s))
        metrics.HOLDS_EXPIRED.inc(len(lifetimes_s))
        for lifetime_s in lifetimes_s:
            metrics.HOLD_LIFETIME_SECONDS.labels("expired").observe(lifetime_s)
        total += len(lifetimes_s)
        if len(lifetimes_s) < settings.sweep_batch_size:
            break
    await store.purge_idempotency_keys(settings.idempotency_retention_s, settings.sweep_batch_size)
    await hold_events.purge(store, settings.hold_events_retention_s, settings.sweep_batch_size)
    if total:
        log.info("expired %d holds", total, extra={"expired": total})
    await retain(store, settings)
    return total


async def retain(store: Store, settings: Settings) -> int:
    """Move holds past their retention out of the hot tables, `sweep_batch_size` at a time and at most
    RETENTION_BATCHES_PER_PASS batches; return how many holds were moved."""
    moved = 0
    for _ in range(RETENTION_BATCHES_PER_PASS):
        retired = await store.retire_holds(
            ended_before_s=settings.retention_terminal_s,
            confirmed_before_s=settings.retention_confirmed_s,
            batch_size=settings.sweep_batch_size,
            archive=settings.retention_archive,
        )
        metrics.RETENTION_ROWS.labels("holds").inc(retired.holds)
        metrics.RETENTION_ROWS.labels("hold_slots").inc(retired.hold_slots)
        moved += retired.holds
        if retired.holds < settings.sweep_batch_size:
            break
    if moved:
        action = "archived" if settings.retention_archive else "deleted"
        log.info("%s %d holds past their retention", action, moved, extra={"retired": moved})
    return moved


async def run_sweeper(service: HoldService) -> None:
    """Sweep every `sweep_interval_s` until cancelled; an outage only delays the next sweep."""
    while True:
        try:
            await sweep_once(service.store, service.settings)
            if service.lease_sync is not None:
                await service.lease_sync.tend()
        except BackendUnavailable as exc:
            log.warning("sweep skipped: database unavailable (%s)", exc.__cause__)
        except RedisUnavailable as exc:
            log.warning("lease releases postponed: redis unavailable (%s)", exc)
        except Exception:  # anything else must not end the sweeper for the life of the worker
            log.exception("sweep failed")
        await asyncio.sleep(service.settings.sweep_interval_s)
