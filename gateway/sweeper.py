"""Background upkeep. The background leader (one worker per database, gateway.leader) marks lapsed holds
expired, purges old idempotency records and hold events, moves holds that ended long ago out of the hot
tables (retention) and drains the release and inventory outboxes into Redis. Every worker catches up on a
restarted or flushed Redis of its own accord, and probes a Redis it stopped trusting (gateway.lease_sync's
`tend`: Redis calls only, unless a rebuild is due).

Correctness never waits for it: reads treat a lapsed hold as expired and claims take over lapsed slots.
Two workers that both believe they lead (for one pass, around a handover) sweep side by side harmlessly: FOR
UPDATE SKIP LOCKED keeps them off each other's rows, and each statement only acts on rows still due.
"""

import asyncio
import logging

from gateway import hold_events, metrics
from gateway.config import Settings
from gateway.errors import BackendUnavailable
from gateway.holds import HoldService
from gateway.leader import Leadership
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


async def run_sweeper(service: HoldService, leadership: Leadership) -> None:
    """While this worker leads, sweep every `sweep_interval_s` (at once on taking over), until cancelled; an
    outage only delays the next sweep."""
    while True:
        await leadership.until_leading()
        try:
            await sweep_once(service.store, service.settings)
            if service.lease_sync is not None:
                await service.lease_sync.drain_outboxes()
        except BackendUnavailable as exc:
            log.warning("sweep skipped: database unavailable (%s)", exc.__cause__)
        except RedisUnavailable as exc:
            log.warning("lease releases postponed: redis unavailable (%s)", exc)
        except Exception:  # anything else must not end the sweeper for the life of the worker
            log.exception("sweep failed")
        await asyncio.sleep(service.settings.sweep_interval_s)


async def run_redis_upkeep(service: HoldService) -> None:
    """Every worker, every `sweep_interval_s` until cancelled: its Redis upkeep (lease_sync's tend)."""
    lease_sync = service.lease_sync
    if lease_sync is None:
        return
    while True:
        try:
            await lease_sync.tend()
        except (BackendUnavailable, RedisUnavailable) as exc:
            log.warning("redis upkeep postponed: %s", exc)
        except Exception:  # anything else must not end the upkeep for the life of the worker
            log.exception("redis upkeep failed")
        await asyncio.sleep(service.settings.sweep_interval_s)
