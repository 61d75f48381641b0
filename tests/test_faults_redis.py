"""The Redis half of the fault matrix: Redis killed, frozen, slow, restarted empty or from an old snapshot,
flushed, unreachable while holds are cancelled, its replies lost, its connections exhausted; and the gateway's
clock skewed. Under each: one winner, no 500, and once the gateway trusts Redis again, Redis does not lie."""

import asyncio
import os
import shutil
import signal
import subprocess
import time

import asyncpg
import httpx
import pytest
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from gateway import keys
from gateway.chaos.proxy import FaultProxy
from gateway.embedded import LocalRedis, free_port
from tests.conftest import make_settings
from tests.support import (
    Gateway,
    active_holds_per_slot,
    counters,
    released_together,
    running_gateway,
    statuses,
    trusted_again,
)
from tests.test_cli import GATEWAY, clean_env

FAKETIME = os.environ.get("GATEWAY_TEST_FAKETIME", "/usr/bin/faketime")


def answers_are_planned(responses: list[httpx.Response]) -> None:
    """Every answer is one the contract plans for under a fault: never a 500, and a 503 says when to retry."""
    assert set(statuses(responses)) <= {200, 201, 409, 503}, statuses(responses)
    assert all("Retry-After" in r.headers for r in responses if r.status_code == 503)


async def test_redis_killed_mid_storm_and_restarted_on_the_same_port(
    own_gateway: Gateway, own_redis: LocalRedis
) -> None:
    """Killed while 300 requests race for 6 slots, restarted empty on its port: one winner per slot
    throughout, the gateway recovers by itself, and the live holds' leases are rebuilt, so the next losers
    stop at Redis."""
    gateway = own_gateway

    async def storm(wave: int) -> list[httpx.Response]:
        return await released_together(
            100, lambda i: gateway.hold(f"wave-{wave}", [f"S-{i % 2}"], holder=f"user-{wave}-{i}")
        )

    first = asyncio.create_task(storm(1))
    await asyncio.sleep(0.05)
    own_redis.kill(signal.SIGKILL)
    responses = await first
    responses += await storm(2)
    own_redis.start()
    responses += await storm(3)
    await trusted_again(gateway)
    before = await counters(gateway)
    losers = await released_together(50, lambda i: gateway.hold("wave-1", ["S-0"], holder=f"late-{i}"))
    after = await counters(gateway)

    answers_are_planned(responses)
    assert statuses(losers) == {409: 50}
    assert after["rejected_by_redis"] - before["rejected_by_redis"] == 50
    assert after["rejected_by_postgres"] == before["rejected_by_postgres"]
    per_slot = await active_holds_per_slot(gateway.settings.database_url or "")
    assert per_slot == {(f"wave-{w}", f"S-{s}"): 1 for w in (1, 2, 3) for s in (0, 1)}
    assert statuses(responses)[201] == 6


async def test_lost_reply_to_the_acquire_still_gives_one_winner(
    proxied_gateway: Gateway, redis_proxy: FaultProxy
) -> None:
    """Redis ran the acquire but its reply was lost: the request goes on to Postgres, which decides; the
    winner is answered 201 and every rival 409."""
    gateway = proxied_gateway
    redis_proxy.drop_reply(b"EVALSHA")
    first = await gateway.hold("show-1", ["A-1"], holder="alice")
    rivals = await released_together(20, lambda i: gateway.hold("show-1", ["A-1"], holder=f"rival-{i}"))

    assert first.status_code == 201
    assert statuses(rivals) == {409: 20}
    assert await active_holds_per_slot(gateway.settings.database_url or "") == {("show-1", "A-1"): 1}


async def test_slow_redis_costs_a_request_one_timeout_then_postgres_decides(
    proxied_gateway: Gateway, redis_proxy: FaultProxy
) -> None:
    """Replies slower than the Redis timeout: a request waits one timeout at most, then Postgres decides."""
    gateway = proxied_gateway
    redis_proxy.latency(gateway.settings.redis_timeout_s * 1000 * 3)
    started = time.monotonic()
    first = await gateway.hold("show-1", ["A-1"], holder="alice")
    first_s = time.monotonic() - started
    storm = await released_together(50, lambda i: gateway.hold("show-1", ["A-2"], holder=f"user-{i}"))
    redis_proxy.heal()
    await trusted_again(gateway)

    assert first.status_code == 201
    assert first_s < gateway.settings.redis_timeout_s + 0.5
    assert statuses(storm) == {201: 1, 409: 49}


async def redis_probes(gateway: Gateway) -> float:
    """The gateway's count of recovery probes sent to Redis (gateway_breaker_probes_total)."""
    text = (await gateway.client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_breaker_probes_total" and sample.labels == {"backend": "redis"}:
                return sample.value
    return 0.0


async def test_recovery_is_one_probe_not_a_herd(proxied_gateway: Gateway, redis_proxy: FaultProxy) -> None:
    """While Redis refuses connections, 400 requests over ~2 s are answered from Postgres and Redis sees one
    recovery probe per retry interval, not one per request; once it is back, one probe brings it back."""
    gateway = proxied_gateway
    redis_proxy.refuse()
    probes_before = await redis_probes(gateway)
    started = time.monotonic()
    responses: list[httpx.Response] = []
    for wave in range(8):
        responses += await released_together(
            50, lambda i, wave=wave: gateway.hold(f"herd-{wave}", [f"S-{i % 5}"], holder=f"user-{i}")
        )
        await asyncio.sleep(0.25)
    outage_s = time.monotonic() - started
    probes_during = await redis_probes(gateway) - probes_before
    redis_proxy.heal()
    await asyncio.sleep(gateway.settings.redis_retry_interval_s)
    probes_healed = await redis_probes(gateway)
    await trusted_again(gateway)
    probes_to_recover = await redis_probes(gateway) - probes_healed

    answers_are_planned(responses)
    assert statuses(responses)[201] == 40
    assert 1 <= probes_during <= outage_s / gateway.settings.redis_retry_interval_s + 1, probes_during
    assert probes_to_recover <= 1


async def test_redis_connections_exhausted_sheds_503_overloaded(
    database_url: str, redis_proxy: FaultProxy, own_redis: LocalRedis, key_prefix: str
) -> None:
    """More concurrent Redis calls than allowed, on a slow link: past the queue budget their requests get 503
    overloaded with a Retry-After, never a hang and never a 500. (A worker's concurrent creates share one
    call per event, so the storm is spread over 40 events, a call each.)"""
    settings = make_settings(
        database_url,
        redis_proxy.redis_url(own_redis.url),
        key_prefix,
        redis_max_connections=2,
        redis_queue_timeout_s=0.2,
        redis_timeout_s=2.0,
        create_concurrency=64,
    )
    async with running_gateway(settings) as gateway:
        redis_proxy.latency(300)
        started = time.monotonic()
        responses = await released_together(40, lambda i: gateway.hold(f"show-{i}", ["A-1"], holder=f"u-{i}"))
        elapsed_s = time.monotonic() - started
        redis_proxy.heal()

    answers_are_planned(responses)
    overloaded = [r for r in responses if r.status_code == 503]
    assert overloaded, statuses(responses)
    assert {r.json()["type"] for r in overloaded} == {"/problems/overloaded"}
    assert set(statuses(responses)) == {201, 503}
    assert elapsed_s < 5


async def test_no_lease_outlives_its_hold(gateway: Gateway) -> None:
    """The lease is stretched after the commit to end no later than the hold, by Postgres's clock."""
    client = redis.Redis.from_url(gateway.settings.redis_url or "", decode_responses=True)
    conn = await asyncpg.connect(gateway.settings.database_url)
    try:
        for i in range(20):
            hold = (await gateway.hold("show-1", [f"A-{i}"], holder="alice", ttl_seconds=2)).json()
            key = keys.slot_key(gateway.settings.redis_key_prefix, "show-1", f"A-{i}")
            read_at = time.monotonic()
            pttl_ms = await client.pttl(key)
            remaining_ms = await conn.fetchval(
                "SELECT extract(epoch FROM expires_at - clock_timestamp()) * 1000 FROM holds WHERE id = $1",
                hold["id"],
            )
            between_ms = (time.monotonic() - read_at) * 1000
            assert 0 < pttl_ms <= float(remaining_ms) + between_ms, (pttl_ms, remaining_ms, between_ms)
    finally:
        await client.aclose()
        await conn.close()


@pytest.mark.parametrize("offset", ["+2h", "-2h"])
async def test_skewed_gateway_clock_changes_nothing(
    database_url: str, redis_url: str, key_prefix: str, offset: str
) -> None:
    """The gateway process runs under libfaketime two hours off: holds still live exactly their TTL
    (Postgres's clock), leases last as long as their holds (relative TTLs), and expiry frees the slot on
    time."""
    assert shutil.which(FAKETIME), (
        f"{FAKETIME} is needed (Debian's faketime package; `make test` installs it)"
    )
    port = free_port()
    env = clean_env(
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_REDIS_URL=redis_url,
        GATEWAY_REDIS_KEY_PREFIX=key_prefix,
        GATEWAY_MIN_TTL_S="1",
        GATEWAY_SWEEP_INTERVAL_S="0.2",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    process = subprocess.Popen(  # noqa: ASYNC220 - started once; the test then waits on its HTTP port
        [FAKETIME, "-f", offset, *GATEWAY, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for _ in range(300):
                try:
                    if (await http.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            body = {"event_id": "show-1", "slots": ["A-1"], "holder": "alice", "ttl_seconds": 2}
            created = await http.post("/v1/holds", json=body)
            pttl_ms = await client.pttl(keys.slot_key(key_prefix, "show-1", "A-1"))
            rival_early = await http.post("/v1/holds", json=body | {"holder": "bob"})
            await asyncio.sleep(2.3)
            read_late = await http.get(f"/v1/holds/{created.json()['id']}")
            rival_late = await http.post("/v1/holds", json=body | {"holder": "bob"})
    finally:
        await client.aclose()
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)

    hold = created.json()
    assert created.status_code == 201, hold
    assert 1_500 < hold["ttl_ms"] <= 2_000
    assert 1_000 < pttl_ms <= 2_000
    assert rival_early.status_code == 409
    assert read_late.json()["status"] == "expired"
    assert rival_late.status_code == 201


def test_faketime_really_skews_a_process_clock() -> None:
    """The skew test means something only if libfaketime takes hold of the gateway's interpreter."""
    assert shutil.which(FAKETIME), (
        f"{FAKETIME} is needed (Debian's faketime package; `make test` installs it)"
    )
    script = "import time; print(int(time.time()))"
    output = subprocess.run(
        [FAKETIME, "-f", "+2h", GATEWAY[0], "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert abs(int(output) - time.time() - 7200) < 60
