"""python -m loadtests.bench [--quick | --smoke] [--only seats|pools|webhooks] [--workers N] [--out report.md]
[--json report.json]

Starts its own PostgreSQL and Redis (free ports, a temporary directory), then, one at a time, the targets:
the gateway with Redis in front, the gateway db-only, a naive SELECT ... FOR UPDATE service and bare Litestar;
measures them with wrk and writes a Markdown report (stdout unless --out) and the raw numbers (--json).
--only seats measures the seat paths alone (sections 1-6), --only pools general admission alone (section 7,
with bare Litestar to compare), --only webhooks the hot paths with webhooks off and on side by side, a flash
sale delivered to the benchmark's receiver, and hold.expired's lag (section 8). Progress goes to stderr.
Everything it started is stopped at the end, on errors and on Ctrl-C too.
"""

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from loadtests.bench import report as markdown_report
from loadtests.bench import results, wrk
from loadtests.bench.ga import GeneralAdmission
from loadtests.bench.results import (
    DB_ONLY,
    NAIVE,
    POOLS,
    REDIS_FRONT,
    SEATS,
    SECTIONS,
    WEBHOOKS,
    Machine,
    Plan,
    Report,
)
from loadtests.bench.scenarios import Bench
from loadtests.bench.stack import REPO_ROOT, Stack
from loadtests.bench.verdicts import ga_onsale_ok, onsale_ok, verdicts, webhooks_ok
from loadtests.bench.webhooks import Webhooks

PLANS = {
    # About 10 minutes, plus about a minute and a half for general admission (its six targets, from their
    # run lengths: it cannot have been timed before the inventory API exists).
    "full": Plan(
        name="full",
        workers=2,
        run_s=12,
        side_run_s=12,
        short_run_s=10,
        warmup_s=2,
        concurrency=(16, 64, 256, 1024),
        onsale_requests=10_000,
        onsale_seats=500,
        bulkhead_s=10,
        ga_capacity=5_000,
        ga_requests=10_000,
        # About four minutes: six gateways (three rounds each, off and on), a sale of 10,000 holds and
        # 1,000 confirms delivered, 200 holds left to lapse.
        webhook_rounds=3,
        webhook_sale_holds=10_000,
        webhook_expiry_holds=200,
    ),
    # About a minute and a half: shorter runs, two concurrency points, a smaller on-sale. (The rejection runs
    # of a-d and their warm-ups alone take 24 s, the bulkhead 15 s, starting 11 servers 15 s.) General
    # admission adds about 45 s: six more targets, four 5 s runs, two on-sales of 2,000 requests.
    "quick": Plan(
        name="quick",
        workers=2,
        run_s=5,
        side_run_s=3,
        short_run_s=2,
        warmup_s=1,
        concurrency=(64, 1024),
        onsale_requests=2_000,
        onsale_seats=100,
        bulkhead_s=2,
        ga_capacity=1_000,
        ga_requests=2_000,
        webhook_rounds=2,
        webhook_sale_holds=2_000,
        webhook_expiry_holds=100,
        layer_rounds=2,
        layer_requests=3_200,
    ),
    # Proves every part works, in CI: 1-second runs, 1 worker, a tiny on-sale.
    "smoke": Plan(
        name="smoke",
        workers=1,
        run_s=1,
        side_run_s=1,
        short_run_s=1,
        warmup_s=1,
        concurrency=(16, 64),
        onsale_requests=200,
        onsale_seats=20,
        bulkhead_s=1,
        ga_capacity=50,
        ga_requests=200,
        webhook_rounds=1,
        webhook_sale_holds=200,
        webhook_expiry_holds=20,
        layer_rounds=1,
        layer_requests=640,
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="about two and a half minutes: shorter runs, smaller on-sales",
    )
    size.add_argument(
        "--smoke",
        action="store_true",
        help="under a minute: 1-second runs, 1 worker; checks that every part works (the test runs it)",
    )
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        help="seats: the seat paths alone (sections 1-6); pools: general admission alone (section 7); "
        "webhooks: webhooks off and on, a flash sale delivered, hold.expired's lag (section 8)",
    )
    parser.add_argument("--workers", type=int, help="uvicorn workers per target (default 2; --smoke: 1)")
    parser.add_argument("--out", type=Path, help="write the Markdown report here (default: stdout)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here as JSON")
    args = parser.parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.workers:
        plan = msgspec.structs.replace(plan, workers=args.workers)

    # uvicorn's supervisor stops its workers on SIGTERM; so must we: turn it into an exception that unwinds
    # through every context manager that stops a server.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    wrk.raise_open_files_limit()  # before any server or wrk is spawned: they inherit it
    try:
        report = asyncio.run(_run(plan, (args.only,) if args.only else SECTIONS))
    except KeyboardInterrupt:
        print("interrupted: every server it started has been stopped", file=sys.stderr)
        return 130

    text = markdown_report.markdown(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"report: {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(results.encode(report) + b"\n")
        print(f"raw numbers: {args.json}", file=sys.stderr)
    failed = (
        report.errors
        or any(not onsale_ok(sale) for sale in report.onsale)
        or any(not ga_onsale_ok(sale) for sale in report.ga_onsale)
        or not webhooks_ok(report)
    )
    return 1 if failed else 0


async def _run(plan: Plan, sections: tuple[str, ...]) -> Report:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp, Stack(Path(tmp)) as stack:
        report = Report(plan=plan, machine=_machine(*await stack.versions()), sections=sections)
        bench = Bench(stack, plan, Path(tmp), report)
        ga = GeneralAdmission(bench)
        hooks = Webhooks(bench)
        bench.say(
            f"{plan.name} run: PostgreSQL on :{stack.postgres.port}, Redis on :{stack.redis.port}, {tmp}"
        )
        # The framework's ceiling, which both families are read against (webhooks compare on with off).
        steps = [bench.bare] if {SEATS, POOLS} & set(sections) else []
        if SEATS in sections:
            steps += [
                bench.redis_front_rejection,
                bench.cpu_layers,
                bench.db_only,
                bench.naive,
                bench.redis_front,
                bench.access_log,
                bench.workers,
                lambda: bench.onsale(REDIS_FRONT),
                lambda: bench.onsale(DB_ONLY),
                lambda: bench.onsale(NAIVE),
            ]
        if POOLS in sections:
            steps += [
                lambda: ga.pool_storm(REDIS_FRONT),
                lambda: ga.pool_storm(DB_ONLY),
                lambda: ga.onsale(REDIS_FRONT),
                lambda: ga.onsale(DB_ONLY),
                lambda: ga.availability(REDIS_FRONT),
                lambda: ga.availability(DB_ONLY),
            ]
        if WEBHOOKS in sections:
            steps += hooks.steps()
        try:
            for step in steps:
                try:
                    await step()
                except Exception as exc:  # one failed measurement must not lose the others
                    bench.say(f"FAILED: {type(exc).__name__}: {exc}")
                    report.errors.append(f"{type(exc).__name__}: {exc}")
            await bench.settle()
        except BaseException:
            bench.abandon()  # interrupted: the servers are about to go, their leftover reads with them
            raise
        report.sort()
        report.machine = msgspec.structs.replace(report.machine, load_after=os.getloadavg())
        report.duration_s = time.monotonic() - started
        report.targets = verdicts(report)
        bench.say(f"done in {report.duration_s:.0f} s")
    return report


def _machine(postgres: str, redis: str) -> Machine:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?"
    )
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = next(int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:"))
    return Machine(
        cpus=len(os.sched_getaffinity(0)),
        cpu_model=model,
        memory_gib=mem_kib / 1024 / 1024,
        kernel=platform.release(),
        python=platform.python_version(),
        postgres=postgres,
        redis=redis,
        wrk=wrk.wrk_version(),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        commit=_git("rev-parse", "--short", "HEAD"),
        dirty=bool(_git("status", "--porcelain")),
        load_before=os.getloadavg(),
    )


def _git(*args: str) -> str:
    try:
        out = subprocess.run(  # noqa: S603 - git with fixed arguments
            ["git", *args],  # noqa: S607 - git from PATH, like a developer runs it
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
