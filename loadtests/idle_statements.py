"""Postgres statements per second of an idle gateway: what its background work costs the database.

Starts a Postgres of its own that logs every statement (log_statement=all) and a Redis of its own, serves
`gateway serve --workers W` from each source tree given (R replicas each), waits for the start-up to settle,
then counts the statements Postgres ran for that gateway's database over a window with no request at all.
Each tree gets a database of its own, one after the other, on the same servers.

    .venv/bin/python -m loadtests.idle_statements --workers 2 --replicas 1 --seconds 30 . /tmp/old-tree
    git archive <rev> | tar -x -C /tmp/old-tree      # a revision's tree, to compare with

Prints one line per tree: statements per second, in total and per connection's application_name.
"""

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import asyncpg
import httpx

from gateway.embedded import LocalPostgres, LocalRedis, free_port

LOGGED = re.compile(r" db=(\S+) app=(\S*) LOG:  (?:statement|execute [^:]*): ")
SETTLE_S = 5.0  # after every worker is ready: the start-up passes end


def count(log_path: Path, offset: int, database: str) -> Counter[str]:
    """Statements logged since `offset` for `database`, per application_name (its worker id dropped)."""
    with log_path.open(encoding="utf-8", errors="replace") as log:
        log.seek(offset)
        return Counter(
            m.group(2).split("/", 1)[0]
            for line in log
            if (m := LOGGED.search(line)) and m.group(1) == database
        )


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the gateway at {url} exited")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the gateway at {url} did not become ready")


def measure(tree: Path, index: int, postgres: LocalPostgres, redis_url: str, args: argparse.Namespace) -> str:
    database = f"idle_{index}_{os.getpid()}"
    asyncio.run(_create_database(postgres.dsn, database))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | {
        "GATEWAY_DATABASE_URL": postgres.dsn.rpartition("/")[0] + "/" + database,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_KEY_PREFIX": database,
        "GATEWAY_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(tree),
    }
    processes = []
    try:
        for _ in range(args.replicas):
            url = f"http://127.0.0.1:{free_port()}"
            command = [sys.executable, "-m", "gateway.cli", "serve", "--port", url.rpartition(":")[2]]
            process = subprocess.Popen(  # noqa: S603 - our own command line
                [*command, "--workers", str(args.workers)],
                env=env,
                cwd=tree,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            processes.append(process)
            wait_ready(url, process)
        time.sleep(SETTLE_S + args.workers)  # every worker's start-up passes, not only the first's
        offset = postgres.log_path.stat().st_size
        time.sleep(args.seconds)
        counted = count(postgres.log_path, offset, database)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    total = sum(counted.values())
    per_app = ", ".join(f"{app or '-'} {n / args.seconds:.1f}" for app, n in counted.most_common())
    return (
        f"{tree}: {args.replicas} replica(s) x {args.workers} worker(s), idle {args.seconds:g} s: "
        f"{total / args.seconds:.1f} statements/s ({per_app})"
    )


async def _create_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=Path, help="source trees (each with gateway/)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    settings = {"log_statement": "all", "log_line_prefix": "%m [%p] db=%d app=%a "}
    with (
        tempfile.TemporaryDirectory() as work,
        LocalPostgres(Path(work) / "postgres", durable=False, settings=settings) as postgres,
        LocalRedis(Path(work) / "redis") as redis_server,
    ):
        for index, tree in enumerate(args.trees):
            print(measure(tree.resolve(), index, postgres, redis_server.url, args), flush=True)


if __name__ == "__main__":
    main()
