"""The measurements. Each block starts the target it needs on a database (and Redis key prefix) of its own,
measures it with wrk, one run at a time, and stops it; the results go into the Report."""

import asyncio
import contextlib
import itertools
import math
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncpg
import msgspec

from loadtests.bench import naive, wrk
from loadtests.bench.client import Connection, confirm_stream, create_holds
from loadtests.bench.results import (
    BARE,
    DB_ONLY,
    NAIVE,
    REDIS_FRONT,
    REDIS_FRONT_UNLOGGED,
    REDIS_FRONT_WEBHOOKS,
    Bulkhead,
    Cost,
    OnSale,
    Plan,
    Report,
    Run,
)
from loadtests.bench.stack import (
    REPO_ROOT,
    BenchError,
    Server,
    Stack,
    bare_server,
    gateway_env,
    gateway_server,
    machine_cpu_s,
    naive_server,
)

STORM_EVENT, STORM_SLOT = "bench", "A-1"  # held once per target; every rejection asks for it again
ONSALE_EVENT = "onsale"
COMMIT_EVENT = "commit"
CONFIRM_EVENT = "confirm"
BULKHEAD_EVENT = "bulkhead"
HOLD_TTL_S = 3600  # the gateway's maximum: holds the benchmark makes itself outlive the whole run
STORM_LEAD_S = 0.5  # the bulkhead's storm runs this long before the confirms start, and at least this after
# The naive baseline needs a row per slot before the run: how many commit-path slots to seed per wrk thread
# and second of run, far above what it can commit (an unseeded slot still works, one INSERT slower).
NAIVE_COMMIT_SLOTS_PER_THREAD_S = 5_000


class _Mode(msgspec.Struct):
    mode: str


@dataclass
class Target:
    """A running target on its own database."""

    key: str  # results.REDIS_FRONT, ...
    server: Server
    database: str
    database_url: str
    workers: int
    # Run once the target has stopped, before its database is dropped: reads that need its backends gone.
    after_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


class Bench:
    def __init__(self, stack: Stack, plan: Plan, log_dir: Path, report: Report) -> None:
        self.stack = stack
        self.plan = plan
        self.log_dir = log_dir
        self.report = report
        self._numbers = itertools.count(1)
        self._started = time.monotonic()
        self._background: list[asyncio.Task[None]] = []

    def say(self, message: str) -> None:
        print(f"[bench {time.monotonic() - self._started:6.1f}s] {message}", file=sys.stderr, flush=True)

    def in_background(self, what: str, work: Callable[[], Awaitable[None]]) -> None:
        """Work that may overlap the next target's start and warm-up, never a measured run (see settle)."""

        async def guarded() -> None:
            try:
                await work()
            except Exception as exc:  # reported like any failed measurement, and the run goes on
                self.say(f"FAILED while {what}: {type(exc).__name__}: {exc}")
                self.report.errors.append(f"{what}: {type(exc).__name__}: {exc}")

        self._background.append(asyncio.create_task(guarded()))

    def abandon(self) -> None:
        """Cancel the background work (the run was interrupted)."""
        for task in self._background:
            task.cancel()
        self._background.clear()

    async def settle(self) -> None:
        """Wait for the background work: a measured run shares the CPU with nothing of ours."""
        while self._background:
            await self._background.pop(0)

    # --- targets ------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def target(
        self, key: str, *, workers: int | None = None, access_log: bool = True
    ) -> AsyncIterator[Target]:
        """Start target `key` on a fresh database; stop it and drop the database on the way out."""
        number = next(self._numbers)
        workers = workers or self.plan.workers
        name = f"{key.replace('-', '_').replace('+', '_')}_{workers}w_{number}"
        database = f"bench_{name}"
        url = await self.stack.create_database(database)
        after_stop: list[Callable[[], Awaitable[None]]] = []
        try:
            if key == NAIVE:
                await self._prepare_naive(url)
            server = self._server(key, name, url, workers, access_log)
            with server:
                ready = await server.wait_ready("/ready" if key not in {NAIVE, BARE} else "/health")
                expected = {
                    REDIS_FRONT: "redis-front",
                    REDIS_FRONT_UNLOGGED: "redis-front",
                    REDIS_FRONT_WEBHOOKS: "redis-front",
                    DB_ONLY: "db-only",
                }
                if key in expected and (mode := msgspec.json.decode(ready, type=_Mode).mode) != expected[key]:
                    raise BenchError(f"{name} serves in {mode} mode, not {expected[key]}")
                yield Target(
                    key=key,
                    server=server,
                    database=database,
                    database_url=url,
                    workers=workers,
                    after_stop=after_stop,
                )
        finally:
            self.in_background(f"finishing {name}", lambda: self._finish(database, after_stop))

    async def _finish(self, database: str, after_stop: list[Callable[[], Awaitable[None]]]) -> None:
        """Once the target is stopped: its pending reads, then drop its database (so that no autovacuum of its
        leftovers runs during a later measurement)."""
        try:
            for work in after_stop:
                await work()
        finally:
            await self.stack.drop_database(database)

    def _server(self, key: str, name: str, url: str, workers: int, access_log: bool) -> Server:
        if key == BARE:
            return bare_server(name, self.log_dir, workers=workers)
        if key == NAIVE:
            return naive_server(name, self.log_dir, database_url=url, workers=workers)
        return gateway_server(
            name,
            self.log_dir,
            database_url=url,
            redis_url=self.stack.redis.url,
            key_prefix=f"{name[:20]}{secrets.token_hex(4)}",
            workers=workers,
            db_only=key == DB_ONLY,
            access_log=access_log,
        )

    async def _prepare_naive(self, url: str) -> None:
        """The naive baseline's tables, with a row for every slot the benchmark will ask it for."""
        plan = self.plan
        bulkhead_holds = plan.bulkhead_rate_per_s * plan.bulkhead_s
        conn = await asyncpg.connect(url)
        try:
            await naive.create_schema(conn)
            await naive.seed_slots(conn, STORM_EVENT, "A-", 1)
            await naive.seed_slots(conn, ONSALE_EVENT, "S-", plan.onsale_seats)
            await naive.seed_slots(conn, BULKHEAD_EVENT, "q-", bulkhead_holds)
            await naive.seed_slots(conn, BULKHEAD_EVENT, "s-", bulkhead_holds)
            for tag, seconds in (("c", plan.short_run_s), ("w", plan.warmup_s)):
                for thread in range(1, plan.threads + 1):
                    count = NAIVE_COMMIT_SLOTS_PER_THREAD_S * max(seconds, 1)
                    await naive.seed_slots(conn, COMMIT_EVENT, f"{tag}{thread}-", count)
            # Now, rather than by autovacuum in the middle of a measured run.
            await conn.execute("VACUUM ANALYZE naive_slots")
        finally:
            await conn.close()

    async def hold_storm_slot(self, target: Target) -> None:
        conn = await Connection.open(target.server.port)
        try:
            body = {
                "event_id": STORM_EVENT,
                "slots": [STORM_SLOT],
                "holder": "owner",
                "ttl_seconds": HOLD_TTL_S,
            }
            status, answer = await conn.post("/v1/holds", body)
        finally:
            await conn.close()
        if status != 201:
            raise BenchError(f"{target.key}: holding the storm's slot gave {status} {answer[:300]!r}")

    # --- one measured run ---------------------------------------------------------------------------------

    async def measure(
        self,
        target: Target,
        script: str,
        args: list[str],
        *,
        connections: int,
        duration_s: int,
        warmup: tuple[str, list[str]] | None,
        count_transactions: bool = False,
        until_threads_done: bool = False,
        after_warmup: Callable[[], Awaitable[None]] | None = None,
        receiver: Server | None = None,
    ) -> Run:
        """An optional warm-up run, then the measured one, with the CPU every server used meanwhile.

        after_warmup: awaited between the two (e.g. until what the warm-up left owed has been worked off).
        receiver: a process of the benchmark's that the target sends to (the webhook receiver): its CPU is
        counted apart, not as others'.
        """
        url, threads = target.server.url, self.plan.threads
        if warmup is not None:
            await _wrk(
                url,
                warmup[0],
                args=warmup[1],
                threads=threads,
                connections=connections,
                duration_s=self.plan.warmup_s,
            )
        if after_warmup is not None:
            await after_warmup()
        if not count_transactions:  # a counted run's database is fresh: nothing to analyze, nothing to add
            await self.stack.analyze(target.database)
        await self.settle()
        transactions_before = await self.stack.transactions(target.database) if count_transactions else None
        cpu_before, machine_before, own_before = self._cpu(target), machine_cpu_s(), _own_cpu_s()
        receiver_before = receiver.cpu_s() if receiver is not None else 0.0
        started_at = time.time()
        result = await _wrk(
            url,
            script,
            args=args,
            threads=threads,
            connections=connections,
            duration_s=duration_s,
            until_threads_done=until_threads_done,
        )
        cpu_after, machine_after, own_after = self._cpu(target), machine_cpu_s(), _own_cpu_s()
        receiver_s = (receiver.cpu_s() if receiver is not None else 0.0) - receiver_before
        server_s = cpu_after.server_cpu_s - cpu_before.server_cpu_s
        postgres_s = cpu_after.postgres_cpu_s - cpu_before.postgres_cpu_s
        redis_s = cpu_after.redis_cpu_s - cpu_before.redis_cpu_s
        ours_s = server_s + postgres_s + redis_s + receiver_s + result.wrk_cpu_s + (own_after - own_before)
        return Run(
            target=target.key,
            workers=target.workers,
            wrk=result,
            cost=Cost(
                server_cpu_s=server_s,
                postgres_cpu_s=postgres_s,
                redis_cpu_s=redis_s,
                receiver_cpu_s=receiver_s,
                others_cpu_s=max(0.0, machine_after - machine_before - ours_s),
            ),
            started_at_unix_s=started_at,
            transactions_before_run=transactions_before,
        )

    def _cpu(self, target: Target) -> Cost:
        return Cost(
            server_cpu_s=target.server.cpu_s(),
            postgres_cpu_s=self.stack.postgres_cpu_s(),
            redis_cpu_s=self.stack.redis_cpu_s(),
        )

    def count_after_stop(self, target: Target, run: Run, record: Callable[[Run], Awaitable[None]]) -> None:
        """Count the run's Postgres transactions once the target has stopped (its backends flush their
        statistics as they exit; see Stack.flushed_transactions), then hand the completed run to record.
        The target must not serve anything more."""

        async def count() -> None:
            flushed = await self.stack.flushed_transactions(
                target.database, quiet_s=self.plan.flush_quiet_s, max_wait_s=self.plan.flush_max_s
            )
            await record(msgspec.structs.replace(run, transactions=flushed))

        target.after_stop.append(count)

    # --- the paths ------------------------------------------------------------------------------------------

    async def rejection(
        self,
        target: Target,
        *,
        connections: int | None = None,
        duration_s: int | None = None,
        count_transactions: bool = False,
    ) -> Run:
        args = [STORM_EVENT, STORM_SLOT]
        return await self.measure(
            target,
            "reject.lua",
            args,
            connections=connections or self.plan.storm_connections,
            duration_s=duration_s or self.plan.run_s,
            warmup=("reject.lua", args),
            count_transactions=count_transactions,
        )

    async def commit(self, target: Target) -> None:
        self.say(f"{target.key}: commit path")
        run = await self.measure(
            target,
            "commit.lua",
            [COMMIT_EVENT, "c"],
            connections=self.plan.storm_connections,
            duration_s=self.plan.short_run_s,
            warmup=("commit.lua", [COMMIT_EVENT, "w"]),
        )
        self.report.commit.append(run)

    async def hold_confirm(self, target: Target) -> None:
        self.say(f"{target.key}: hold + confirm")
        run = await self.measure(
            target,
            "hold_confirm.lua",
            [CONFIRM_EVENT, "h"],
            connections=self.plan.storm_connections,
            duration_s=self.plan.short_run_s,
            warmup=("hold_confirm.lua", [CONFIRM_EVENT, "hw"]),
        )
        self.report.hold_confirm.append(run)

    async def bulkhead(self, target: Target) -> None:
        """Confirms at a steady rate, alone and then during a rejection storm."""
        plan, port = self.plan, target.server.port
        count = plan.bulkhead_rate_per_s * plan.bulkhead_s
        self.say(f"{target.key}: bulkhead: {count} confirms quiet, {count} during a storm")
        quiet_holds = await create_holds(port, BULKHEAD_EVENT, [f"q-{i}" for i in range(1, count + 1)])
        storm_holds = await create_holds(port, BULKHEAD_EVENT, [f"s-{i}" for i in range(1, count + 1)])
        quiet = await confirm_stream(port, quiet_holds, rate_per_s=plan.bulkhead_rate_per_s)
        storm_run = asyncio.create_task(
            self.measure(
                target,
                "reject.lua",
                [STORM_EVENT, STORM_SLOT],
                connections=plan.storm_connections,
                duration_s=plan.bulkhead_s + math.ceil(2 * STORM_LEAD_S),
                warmup=None,
            )
        )
        try:
            await asyncio.sleep(STORM_LEAD_S)
            storm = await confirm_stream(port, storm_holds, rate_per_s=plan.bulkhead_rate_per_s)
            run = await storm_run
        finally:
            if not storm_run.done():  # the confirms failed: end the storm too
                storm_run.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await storm_run
        self.report.bulkhead.append(Bulkhead(target=target.key, quiet=quiet, storm=storm, storm_run=run))

    # --- the blocks, one target process each --------------------------------------------------------------

    async def bare(self) -> None:
        async with self.target(BARE) as target:
            self.say("d. bare Litestar: rejection path")
            self.report.rejection.append(await self.rejection(target))
            # The framework's own tail at the highest concurrency, to read the gateway's against.
            connections = max(self.plan.concurrency)
            self.say(f"d. bare Litestar: rejection path at {connections} connections")
            run = await self.rejection(target, connections=connections, duration_s=self.plan.short_run_s)
            self.report.scaling_concurrency.append(run)

    async def redis_front_rejection(self) -> None:
        """A gateway process of its own: the Postgres transactions of its run are counted, which needs it
        stopped right afterwards (see Stack.flushed_transactions)."""
        async with self.target(REDIS_FRONT) as target:
            await self.hold_storm_slot(target)
            self.say("a. gateway, Redis in front: rejection path (Postgres transactions counted)")
            run = await self.rejection(target, count_transactions=True)

            async def record(counted: Run) -> None:
                self.report.rejection.append(counted)

            self.count_after_stop(target, run, record)

    async def cpu_layers(self) -> None:
        """Where a rejection's and a winner's CPU go, layer by layer: loadtests.cpu_layers in a process of its
        own (the app called in process, CPU time of its thread, so this machine's other work changes little),
        on a database of its own."""
        database = f"bench_layers_{next(self._numbers)}"
        url = await self.stack.create_database(database)
        out = self.log_dir / "cpu_layers.json"
        env = gateway_env(url, self.stack.redis.url, f"layers{secrets.token_hex(4)}")
        try:
            self.say("a. gateway: in-process CPU per rejection and per winner, layer by layer")
            with (self.log_dir / "cpu_layers.log").open("wb") as log:
                for argv in (
                    ["-m", "gateway.cli", "migrate"],
                    [
                        "-m",
                        "loadtests.cpu_layers",
                        "--rounds",
                        str(self.plan.layer_rounds),
                        "--requests",
                        str(self.plan.layer_requests),
                        "--json",
                        str(out),
                    ],
                ):
                    process = await asyncio.create_subprocess_exec(
                        sys.executable, *argv, env=env, cwd=REPO_ROOT, stdout=log, stderr=log
                    )
                    if await process.wait() != 0:
                        raise BenchError(f"{' '.join(argv[1:3])} failed: see {log.name}")
            self.report.cpu_layers = msgspec.json.decode(out.read_bytes(), type=dict[str, float])
        finally:
            await self.stack.drop_database(database)

    async def db_only(self) -> None:
        async with self.target(DB_ONLY) as target:
            await self.hold_storm_slot(target)
            self.say("b. gateway, db-only: rejection path")
            self.report.rejection.append(await self.rejection(target))
            await self.commit(target)
            await self.hold_confirm(target)
            await self.bulkhead(target)

    async def naive(self) -> None:
        async with self.target(NAIVE) as target:
            await self.hold_storm_slot(target)
            self.say("c. naive baseline: rejection path")
            self.report.rejection.append(await self.rejection(target))
            await self.commit(target)
            await self.bulkhead(target)

    async def redis_front(self) -> None:
        async with self.target(REDIS_FRONT) as target:
            await self.hold_storm_slot(target)
            for connections in self.plan.concurrency:
                self.say(f"a. scaling: rejection path at {connections} connections")
                run = await self.rejection(target, connections=connections, duration_s=self.plan.short_run_s)
                self.report.scaling_concurrency.append(run)
            await self.commit(target)
            await self.hold_confirm(target)
            await self.bulkhead(target)

    async def access_log(self) -> None:
        """The rejection path without the access log, beside the defaults' (which log)."""
        async with self.target(REDIS_FRONT_UNLOGGED, access_log=False) as target:
            await self.hold_storm_slot(target)
            self.say("a. gateway, access log off: rejection path")
            self.report.rejection.append(await self.rejection(target, duration_s=self.plan.side_run_s))

    async def workers(self) -> None:
        """The rejection path at 1 worker, beside the `workers` one measured with the other targets."""
        await self.settle()  # the other one is recorded once its transactions are counted
        runs = [run for run in self.report.rejection if run.target == REDIS_FRONT]
        if self.plan.workers != 1:
            async with self.target(REDIS_FRONT, workers=1) as target:
                await self.hold_storm_slot(target)
                self.say("a. scaling: rejection path with 1 worker")
                runs.append(await self.rejection(target, duration_s=self.plan.side_run_s))
        self.report.scaling_workers = sorted(runs, key=lambda run: run.workers)

    async def onsale(self, key: str) -> None:
        plan = self.plan
        async with self.target(key) as target:
            self.say(f"{key}: on-sale, {plan.onsale_requests} requests for {plan.onsale_seats} seats")
            threads = min(plan.threads, plan.onsale_connections)
            run = await self.measure(
                target,
                "onsale.lua",
                [ONSALE_EVENT, str(plan.onsale_seats), str(plan.onsale_requests), str(threads)],
                connections=plan.onsale_connections,
                # A ceiling: the script stops each thread after its share.
                duration_s=max(60, plan.onsale_requests // 50),
                # Validation failures only: a warm-up that reached Postgres would leak into the count.
                warmup=("invalid.lua", []),
                count_transactions=True,
                until_threads_done=True,
            )

            async def record(counted: Run) -> None:
                sold, last_created = await self._sold(target)
                sold_out_s = last_created.timestamp() - counted.started_at_unix_s if last_created else None
                self.report.onsale.append(
                    OnSale(
                        target=key,
                        run=counted,
                        seats=plan.onsale_seats,
                        sold_in_database=sold,
                        sold_out_s=sold_out_s,
                    )
                )

            self.count_after_stop(target, run, record)

    async def _sold(self, target: Target) -> tuple[int, datetime | None]:
        """Live holds of the on-sale's event in the target's own tables, and the last one's created_at."""
        if target.key == NAIVE:
            query = "SELECT count(*), max(created_at) FROM naive_holds WHERE event_id = $1"
        else:
            query = (
                "SELECT count(*), max(created_at) FROM holds "
                "WHERE event_id = $1 AND status IN ('held', 'confirmed')"
            )
        conn = await asyncpg.connect(target.database_url)
        try:
            row = await conn.fetchrow(query, ONSALE_EVENT)
        finally:
            await conn.close()
        assert row is not None
        return int(row[0]), row[1]


def _own_cpu_s() -> float:
    """CPU seconds of this process, every thread (the confirm stream, the threads waiting for wrk)."""
    times = os.times()
    return times.user + times.system


async def _wrk(
    url: str,
    script: str,
    *,
    args: list[str],
    threads: int,
    connections: int,
    duration_s: int,
    until_threads_done: bool = False,
) -> wrk.WrkResult:
    """wrk.run in a worker thread; if we are cancelled (Ctrl-C), wrk is killed rather than waited for."""
    try:
        return await asyncio.to_thread(
            wrk.run,
            url,
            script,
            args=args,
            threads=threads,
            connections=connections,
            duration_s=duration_s,
            until_threads_done=until_threads_done,
        )
    except BaseException:
        wrk.stop_all()
        raise
