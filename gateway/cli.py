"""The `gateway` command: serve (migrating first) and migrate; holds, slot, stats, availability, inventory,
block, unblock and webhooks ask a running gateway. Uses argparse: a few flags need no more."""

import argparse
import asyncio
import gc
import logging
import logging.config
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import ops_args
from gateway.config import ConfigError, Settings, settings_from_env
from gateway.logs import logging_config
from gateway.migrations import MigrationError, migrate_url

if TYPE_CHECKING:
    from litestar import Litestar

log = logging.getLogger("gateway")

# The packages of pyproject's extras that some commands import, and their extra: serving needs none of them.
EXTRAS = {"tabulate": "cli"}


def app_from_env() -> "Litestar":
    """The uvicorn factory each worker process calls: settings come from the environment."""
    from gateway.app import create_app  # noqa: PLC0415 - keep `gateway --help` free of the web stack

    app = create_app(settings_from_env())
    tune_garbage_collector()
    return app


# Allocations between young-generation collections (CPython's default is 700). A request allocates a few
# hundred objects, so the default collects every couple of requests and, cascading into the older
# generations, stalls a worker for milliseconds: on the rejection path that was the p99 (35-46 ms against
# 11 ms with this setting, at 64 connections on 2 workers). Cycles are still collected, just in batches.
GC_YOUNG_THRESHOLD = 50_000

# On SIGTERM, requests still running this long after the listener closed are cancelled, so that nothing stuck
# (a client trickling its body, a backend that stopped answering) can keep a worker from stopping.
GRACEFUL_SHUTDOWN_S = 10


def tune_garbage_collector() -> None:
    """In a serving worker: leave the objects of the loaded code out of every future collection
    (gc.freeze) and collect the young generation less often."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="apply pending migrations, then serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--db-only",
        action="store_true",
        help="serve without Redis, even if GATEWAY_REDIS_URL is set: Postgres alone turns losers away",
    )
    commands.add_parser("migrate", help="apply pending migrations and exit")
    _add_pods_commands(commands)
    ops_args.add_commands(commands)
    chaos = commands.add_parser(
        "chaos",
        help="soak a gateway of its own with a mixed workload under random Redis and Postgres faults, then "
        "check what clients saw; exit 1 on any violation",
    )
    chaos.add_argument("--minutes", type=float, default=5.0, help="how long the workload runs (default 5)")
    chaos.add_argument("--seed", type=int, default=None, help="replay a run's choices (default: random)")
    chaos.add_argument("--workers", type=int, default=1, help="gateway worker processes (default 1)")
    args = parser.parse_args(argv)
    if args.command in ops_args.COMMANDS:
        try:
            from gateway import ops_cli  # noqa: PLC0415 - its client libraries are an extra serving never loads
        except ModuleNotFoundError as exc:
            return _missing_extra(args.command, exc)
        return ops_cli.run(args)  # a client of a running gateway: the server's settings do not apply
    if args.command == "pods":
        return _pods(args)
    if args.command == "chaos":
        try:
            from gateway.chaos import soak  # noqa: PLC0415 - keep `gateway --help` free of the soak's imports
        except ModuleNotFoundError as exc:
            return _missing_extra(args.command, exc)
        return soak.main(args.minutes, args.seed, args.workers)  # its own servers: no settings apply

    try:
        settings = settings_from_env()
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    log_config = logging_config(settings.log_level, settings.log_format)
    logging.config.dictConfig(log_config)

    with ExitStack() as servers:
        if getattr(args, "db_only", False):
            # The workers read their settings from the environment: no Redis there either.
            for name in _REDIS_SETTINGS:
                os.environ.pop(name, None)
            settings = settings_from_env()
        settings = _with_embedded_servers(settings, servers, redis=not getattr(args, "db_only", False))
        try:
            applied = asyncio.run(migrate_url(_required(settings.database_url)))
        except (MigrationError, OSError) as exc:
            print(f"gateway: cannot migrate the database: {exc}", file=sys.stderr)
            return 1
        log.info("migrations applied: %s", ", ".join(applied) or "none pending")
        if args.command == "migrate":
            return 0
        # Worker processes read their settings from the environment, embedded servers' URLs included.
        os.environ["GATEWAY_DATABASE_URL"] = _required(settings.database_url)
        if settings.redis_url:
            os.environ["GATEWAY_REDIS_URL"] = settings.redis_url
        # Every worker writes its metrics here and /metrics sums them; a fresh folder per run, so counts start
        # at zero and no dead worker's files linger. Set before any worker imports prometheus_client.
        metrics_dir = servers.enter_context(tempfile.TemporaryDirectory(prefix="gateway-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        # uvicorn re-raises the signal that stopped it once it has shut down; turn SIGTERM into SystemExit so
        # the embedded servers are stopped on the way out rather than left running.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        import uvicorn  # noqa: PLC0415 - keep the operator commands free of the web stack

        uvicorn.run(
            "gateway.cli:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            http="httptools",
            access_log=False,  # the gateway logs each request itself, with its request id
            timeout_keep_alive=settings.http_keep_alive_s,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            log_config=log_config,
            log_level=settings.log_level.lower(),
        )
    return 0


# Every setting that points the gateway at a Redis (`serve --db-only` drops them).
_REDIS_SETTINGS = (
    "GATEWAY_REDIS_URL",
    "GATEWAY_REDIS_SENTINELS",
    "GATEWAY_REDIS_SENTINEL_MASTER",
    "GATEWAY_REDIS_SENTINEL_PASSWORD",
    "GATEWAY_REDIS_PASSWORD",
    "GATEWAY_REDIS_DB",
)


def _with_embedded_servers(settings: Settings, servers: ExitStack, *, redis: bool) -> Settings:
    """Start a local Postgres and Redis in `data_dir` for whichever of the two is not configured."""
    if settings.database_url and (settings.redis_configured or not redis):
        return settings
    from gateway.embedded import LocalPostgres, LocalRedis  # noqa: PLC0415 - only needed in embedded mode

    data_dir = Path(settings.data_dir).resolve()
    overrides: dict[str, str] = {}
    if not settings.database_url:
        postgres = servers.enter_context(LocalPostgres(data_dir / "postgres"))
        log.info(
            "no GATEWAY_DATABASE_URL: started an embedded PostgreSQL in %s at %s",
            postgres.data_dir,
            postgres.dsn,
        )
        overrides["database_url"] = postgres.dsn
    if redis and not settings.redis_configured:
        redis_server = servers.enter_context(LocalRedis(data_dir / "redis", persistent=True))
        log.info(
            "no GATEWAY_REDIS_URL: started an embedded Redis in %s at %s",
            redis_server.data_dir,
            redis_server.url,
        )
        overrides["redis_url"] = redis_server.url
    return settings_from_env(**overrides)


def _add_pods_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    pods = commands.add_parser(
        "pods", help="event-sharded pods: set up each pod's database from the shard map, move a bucket"
    )
    pods.add_argument("--map", type=Path, required=True, help="the shard map file (docs/scaling.md)")
    pods_commands = pods.add_subparsers(dest="pods_command", required=True)
    pods_commands.add_parser("init", help="each pod's database: migrate, its name, its buckets, the fence")
    pods_commands.add_parser("status", help="what each pod's database owns, against the map")
    move = pods_commands.add_parser(
        "move", help="move a bucket to another pod (refused while it has live holds); writes the next map"
    )
    move.add_argument("bucket", type=int)
    move.add_argument("pod")
    keys = pods_commands.add_parser(
        "keys", help="make every pod's client keys those of one pod's database (the first pod's by default)"
    )
    keys.add_argument("--from", dest="from_pod", default=None, help="the pod whose keys the others take")


def _pods(args: argparse.Namespace) -> int:
    from gateway import pods  # noqa: PLC0415 - operator commands only
    from gateway.shard_map import ShardMapError  # noqa: PLC0415

    try:
        if args.pods_command == "keys":
            for pod, (added, revoked) in asyncio.run(pods.copy_client_keys(args.map, args.from_pod)).items():
                print(f"pod {pod}: {added} client keys added, {revoked} revoked")
            return 0
        if args.pods_command == "move":
            new_map = asyncio.run(pods.move(args.map, args.bucket, args.pod))
            print(f"bucket {args.bucket} is pod {args.pod!r}'s; {args.map} is at version {new_map.version}")
            return 0
        states = asyncio.run(pods.init(args.map) if args.pods_command == "init" else pods.status(args.map))
    except (pods.PodsError, ShardMapError) as exc:
        print(f"gateway pods: {exc}", file=sys.stderr)
        return 1
    for state in states:
        verdict = "agrees with the map" if state.agrees else f"the map gives it {len(state.expected)}"
        identity = state.identity or "not a pod"
        print(f"pod {state.pod}: database is {identity}, owns {len(state.buckets)} buckets; {verdict}")
    return 0 if all(state.agrees for state in states) else 1


def _missing_extra(command: str, exc: ModuleNotFoundError) -> int:
    """One line, not a traceback, when an operator command's extra is not installed; other errors raise."""
    extra = EXTRAS.get((exc.name or "").partition(".")[0])
    if extra is None:
        raise exc
    print(
        f"gateway: `gateway {command}` needs the {extra} extra ({exc.name} is not installed): "
        f"pip install 'reservation-gateway[{extra}]'",
        file=sys.stderr,
    )
    return 1


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _required(url: str | None) -> str:
    assert url is not None
    return url


if __name__ == "__main__":
    sys.exit(main())
