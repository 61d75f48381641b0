"""What the pod fence costs a claim: the same claims (one fresh seat each, 64 at a time through the hold
service, db-only, so group commit batches them as in an on-sale) with the fence triggers attached and
without, in alternating rounds on one database. Reported per claim: wall time, and the CPU time of the
database's backends serving this process (read from /proc: run it on the database's machine, as root or as
the database's user), which a busy machine disturbs far less than the wall time.

    GATEWAY_DATABASE_URL=postgresql://.../fence_cost python -m loadtests.fence_cost [--rounds 4]

The database must be migrated (`gateway migrate`) and is left with a pod identity and the fence detached.
"""

import argparse
import asyncio
import os
import statistics
import time

import asyncpg
import uvloop

from gateway import sql
from gateway.config import settings_from_env
from gateway.holds import HoldService
from gateway.models import CreateHold
from gateway.store import Store

CONCURRENCY = 64
BUCKETS = 64
_DETACH = "DROP TRIGGER IF EXISTS hold_slots_pod_fence ON hold_slots; " + (
    "DROP TRIGGER IF EXISTS hold_pools_pod_fence ON hold_pools"
)


def _backend_cpu_s(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def measure(rounds: int, holds: int) -> dict[str, list[tuple[float, float]]]:
    settings = settings_from_env()
    assert settings.database_url is not None
    store = await Store.open(settings)
    service = HoldService(store, None, settings)
    admin = await asyncpg.connect(settings.database_url)
    await admin.execute(sql.SET_POD_IDENTITY, "a", BUCKETS)
    for bucket in range(BUCKETS):
        await admin.execute(sql.OWN_POD_BUCKET, bucket, 1)
    results: dict[str, list[tuple[float, float]]] = {"without the fence": [], "with the fence": []}
    try:
        for round_ in range(rounds):
            for fence, rows in results.items():
                fenced = fence == "with the fence"
                await admin.execute(sql.ATTACH_POD_FENCE if fenced else _DETACH)
                event = f"fence-{round_}-{'on' if fenced else 'off'}"

                async def one(i: int, event: str = event) -> None:
                    body = CreateHold(event_id=event, slots=[f"S-{i}"], holder=f"h{i}")
                    await service.create(service.validate(body, None, ""))

                await one(-1)  # the pool's connections open before the clock starts
                pids = [
                    record["pid"]
                    for record in await admin.fetch(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> "
                        "pg_backend_pid()"
                    )
                ]
                cpu_before, started = _backend_cpu_s(pids), time.perf_counter()
                for first in range(0, holds, CONCURRENCY):
                    await asyncio.gather(*(one(i) for i in range(first, min(first + CONCURRENCY, holds))))
                wall_s, cpu_s = time.perf_counter() - started, _backend_cpu_s(pids) - cpu_before
                rows.append((wall_s / holds * 1e6, cpu_s / holds * 1e6))
                cpu_us = cpu_s / holds * 1e6
                print(
                    f"round {round_ + 1}, {fence}: {holds / wall_s:,.0f} claims/s, {cpu_us:.1f} µs of "
                    "Postgres CPU per claim",
                    flush=True,
                )
    finally:
        await admin.execute(_DETACH)
        await admin.close()
        await store.close()
    return results


def main(rounds: int, holds: int) -> None:
    results = uvloop.run(measure(rounds, holds))
    off, on = results["without the fence"], results["with the fence"]
    wall = statistics.median(b[0] / a[0] for a, b in zip(off, on, strict=True))
    cpu = statistics.median(b[1] - a[1] for a, b in zip(off, on, strict=True))
    print(
        f"\nmedian over {rounds} rounds of {holds:,} claims: the fence takes {wall:.2f}x the wall time per "
        f"claim, and adds {cpu:.1f} µs of Postgres CPU per claim"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--holds", type=int, default=20_000)
    args = parser.parse_args()
    main(args.rounds, args.holds)
