"""Where a rejection's CPU goes, by layer: serve the gateway in this process (uvloop, httptools, one worker,
settings from GATEWAY_* as `gateway serve`), profile PROFILE_S seconds of CPU time (cProfile on
time.thread_time, so a busy machine's waits do not count) after PROFILE_AFTER_S, write the pstats file and
exit; then `--layers` splits a profile by layer (shares of the profiled CPU: the profiler's own overhead
inflates call-heavy code, so multiply the shares by a CPU/request measured without it,
loadtests/cpu_per_request.sh).

    GATEWAY_DATABASE_URL=... GATEWAY_REDIS_URL=... python -m loadtests.profile_reject --port 8123 hot.prof &
    (hold the seat once, then) wrk -t1 -c64 -d16s -s loadtests/wrk/reject.lua http://127.0.0.1:8123
    python -m loadtests.profile_reject --layers hot.prof
"""

import argparse
import asyncio
import cProfile
import logging.config
import os
import pstats
import time

import uvicorn
import uvloop

# (layer, the functions whose cumulative CPU is that layer's, fully qualified as file suffix:function);
# earlier layers are subtracted from later ones where they nest.
_SERVICE = [("gateway/holds.py", "create"), ("gateway/holds.py", "validate")]
_REDIS = [("gateway/redis_front.py", "acquire"), ("gateway/redis_pipe.py", "_flush")]
_ROUTE_HOT = [("gateway/api/hot_holds.py", "__call__")]
_ROUTE_LITESTAR = [("litestar/app.py", "__call__")]
_SEND = [("gateway/observability.py", "send_with_request_id")]
_OBSERVE = [("gateway/observability.py", "__call__")]


def _cumulative(stats: pstats.Stats, functions: list[tuple[str, str]]) -> float:
    total = 0.0
    for (path, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
        if any(path.endswith(suffix) and name == function for suffix, function in functions):
            total += row[3]
    return total


def layers(path: str, cpu_us: float | None) -> None:
    stats = pstats.Stats(path)
    everything = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    redis = _cumulative(stats, _REDIS)
    service = _cumulative(stats, _SERVICE) - _cumulative(stats, [_REDIS[0]])
    route = _cumulative(stats, _ROUTE_HOT) + _cumulative(stats, _ROUTE_LITESTAR)
    send = _cumulative(stats, _SEND)
    observe = _cumulative(stats, _OBSERVE) - route
    # The route's own share: what it spent outside the service, the Redis call and the response's write.
    route_own = route - _cumulative(stats, _SERVICE) - send
    rows = [
        ("ASGI server (uvicorn: parse, write, task)", everything - redis - service - route_own - observe),
        ("request id, metrics, access log", observe),
        ("route (read, decode, checks, render)", route_own),
        ("hold service (validate, leases, bulkhead)", service),
        ("Redis call (script call, pipe flush)", redis),
    ]
    for name, seconds in rows:
        share = seconds / everything
        in_us = f"  {share * cpu_us:5.0f} µs" if cpu_us else ""
        print(f"{name:45s} {share:6.1%}{in_us}")


async def serve(port: int, out: str) -> None:
    from gateway.app import create_app  # noqa: PLC0415 - after the logging is configured
    from gateway.config import settings_from_env  # noqa: PLC0415
    from gateway.logs import logging_config  # noqa: PLC0415

    settings = settings_from_env()
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        loop="none",
        http="httptools",
        access_log=False,
        log_config=None,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await asyncio.sleep(float(os.environ.get("PROFILE_AFTER_S", "6")))
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    await asyncio.sleep(float(os.environ.get("PROFILE_S", "8")))
    profile.disable()
    profile.dump_stats(out)
    server.should_exit = True
    await task


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--layers", action="store_true", help="print the layers of the profile `path`")
    parser.add_argument("--cpu-us", type=float, help="with --layers: CPU µs per request, to split in µs")
    parser.add_argument("path", help="the pstats file to write (or, with --layers, to read)")
    args = parser.parse_args()
    if args.layers:
        layers(args.path, args.cpu_us)
    else:
        uvloop.run(serve(args.port, args.path))


if __name__ == "__main__":
    main()
