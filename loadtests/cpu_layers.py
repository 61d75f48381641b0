"""In-process CPU per rejection, layer by layer: the gateway's app is called directly as ASGI (no HTTP server,
no sockets of its own but Redis's), 64 requests at a time, and the CPU time of this thread (time.thread_time)
is divided by the requests; Redis waits cost nothing, so a busy machine changes little. Each layer is
measured on its own and the differences are what each one adds:

  redis      the acquire script call alone (RedisFront.acquire, the pipelined client)
  service    HoldService.validate + create, the 409 caught (the Redis call included)
  hot        the whole app, POST /v1/holds through the raw hot route (request id, metrics, log included)
  litestar   the whole app, POST /v1/holds through Litestar's route (GATEWAY_HOT_ROUTES=false)
  bare       bare Litestar decoding the body and answering 409 with no I/O (loadtests.bench.bare)

and, for the commit path, the whole app through the hot route creating holds on fresh seats (201s):

  win        Redis in front (an acquire.lua call before the claim, an extend.lua call after it, each shared
             by the requests of one event-loop pass)
  win_db     the same settings without Redis (db-only): the claim alone
  win_redis  Redis's own CPU per hold during `win` (INFO cpu), which the gateway's thread does not see

Postgres's CPU is another process's, in neither.

    GATEWAY_DATABASE_URL=... GATEWAY_REDIS_URL=... python -m loadtests.cpu_layers [--rounds 3] [--json F]

The database must be migrated (`gateway migrate`); the gateway's settings come from GATEWAY_* as usual.
`--json F` writes the best of each layer ({"redis": µs, ...}) to F; the benchmark's section 1 shows them.
"""

import argparse
import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as redis
import uvloop

from gateway.api.hot_holds import HotRoutes
from gateway.app import create_app
from gateway.config import settings_from_env
from gateway.errors import SlotUnavailable
from gateway.models import CreateHold
from gateway.observability import ObservedLitestar
from loadtests.bench import bare

CONCURRENCY = 64
_HELD = b'{"event_id":"cpu","slots":["A-1"],"holder":"owner","ttl_seconds":3600}'


def _body(i: int) -> bytes:
    return b'{"event_id":"cpu","slots":["A-1"],"holder":"u%d"}' % i


def _fresh_body(prefix: bytes) -> Callable[[int], bytes]:
    """A hold on a seat nobody asked for before, per call (`prefix` keeps rounds and layers apart)."""
    return lambda i: b'{"event_id":"cpu","slots":["%s-%d"],"holder":"u%d"}' % (prefix, i, i)


async def _post(app: Any, body: bytes) -> int:
    """One POST /v1/holds through `app`; its status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/holds",
        "raw_path": b"/v1/holds",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _cpu_us(requests: int, one: Callable[[int], Awaitable[None]]) -> float:
    """CPU µs of this thread per call of `one`, CONCURRENCY at a time."""
    started = time.thread_time()
    for first in range(0, requests, CONCURRENCY):
        await asyncio.gather(*(one(i) for i in range(first, min(first + CONCURRENCY, requests))))
    return (time.thread_time() - started) / requests * 1e6


async def _redis_cpu_s(client: redis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(rounds: int, requests: int) -> dict[str, float]:
    """The best CPU µs per request of each layer over `rounds` rounds of `requests`."""
    settings = settings_from_env()
    app = create_app(settings)
    assert isinstance(app, ObservedLitestar)
    db_only_app = create_app(msgspec.structs.replace(settings, redis_url=None))
    bare_app = bare.create_app()
    decoder = msgspec.json.Decoder(CreateHold)
    redis_client = redis.Redis.from_url(settings.redis_url or "")
    async with app.lifespan(), db_only_app.lifespan(), bare_app.lifespan():
        service = app.state.holds
        front = service.front
        assert front is not None, "needs Redis: GATEWAY_REDIS_URL"
        hot_routes = app.asgi_handler
        assert isinstance(hot_routes, HotRoutes), "the hot route is off (GATEWAY_HOT_ROUTES)"
        assert await _post(app, _HELD) in {200, 201}

        async def via_redis(i: int) -> None:
            lease = front.lease("cpu", ["A-1"], f"t{i}", f"u{i}", [])
            await front.acquire(lease, settings.lease_pending_ms, None, None)

        async def via_service(i: int) -> None:
            with contextlib.suppress(SlotUnavailable):
                await service.create(service.validate(decoder.decode(_body(i)), None, ""))

        async def via_hot(i: int) -> None:
            assert await _post(app, _body(i)) == 409

        async def via_litestar(i: int) -> None:
            assert await _post(app, _body(i)) == 409

        async def via_bare(i: int) -> None:
            assert await _post(bare_app, _body(i)) == 409

        seats = iter(range(1_000_000))

        def via_winner(target: Any) -> Callable[[int], Awaitable[None]]:
            async def one(i: int) -> None:
                assert await _post(target, _fresh_body(b"W%d" % next(seats))(i)) == 201

            return one

        layers: list[tuple[str, Callable[[int], Awaitable[None]]]] = [
            ("redis", via_redis),
            ("service", via_service),
            ("hot", via_hot),
            ("litestar", via_litestar),
            ("bare", via_bare),
            ("win", via_winner(app)),
            ("win_db", via_winner(db_only_app)),
        ]
        for _ in range(2):  # warm-up: caches, connections, the first metric series
            for name, one in layers:
                app.asgi_handler = hot_routes.litestar if name == "litestar" else hot_routes
                await _cpu_us(CONCURRENCY * 4, one)
        results: dict[str, list[float]] = {name: [] for name, _ in layers}
        results["win_redis"] = []
        for round_ in range(1, rounds + 1):
            for name, one in layers:
                app.asgi_handler = hot_routes.litestar if name == "litestar" else hot_routes
                redis_before = await _redis_cpu_s(redis_client)
                results[name].append(await _cpu_us(requests, one))
                if name == "win":
                    results["win_redis"].append(
                        (await _redis_cpu_s(redis_client) - redis_before) / requests * 1e6
                    )
            print(f"round {round_}: " + "  ".join(f"{n} {v[-1]:.0f}" for n, v in results.items()))
        app.asgi_handler = hot_routes
    await redis_client.aclose()
    return {name: min(values) for name, values in results.items()}


def main(rounds: int, requests: int, json_path: Path | None) -> None:
    best = uvloop.run(measure(rounds, requests))
    if json_path is not None:
        json_path.write_bytes(msgspec.json.encode(best))
    print(
        f"\nin-process CPU µs per rejection (best of {rounds} rounds of {requests}, {CONCURRENCY} at a time):"
    )
    for name, value in best.items():
        print(f"  {name:9s} {value:6.0f}")
    print(
        f"\n  route + request id + metrics, hot:      {best['hot'] - best['service']:6.0f}"
        f"\n  route + request id + metrics, Litestar: {best['litestar'] - best['service']:6.0f}"
        f"\n  service without its Redis call:         {best['service'] - best['redis']:6.0f}"
        f"\n  hot ÷ bare Litestar, CPU:               {best['hot'] / best['bare']:6.2f}"
        f"\n  Litestar route ÷ bare Litestar, CPU:    {best['litestar'] / best['bare']:6.2f}"
        f"\n  a winner, Redis front less db-only:     {best['win'] - best['win_db']:6.0f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=6400)
    parser.add_argument("--json", type=Path, help="write the best of each layer here")
    args = parser.parse_args()
    main(args.rounds, args.requests, args.json)
