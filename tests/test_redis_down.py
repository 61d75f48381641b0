"""Redis down, dead or frozen: the gateway answers from Postgres alone, still with one winner, and says so."""

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from gateway.embedded import LocalRedis, free_port
from gateway.keys import holder_fingerprint, slot_key
from gateway.lease_sync import ADOPTED_LEASE_MAX_MS
from tests.conftest import make_settings
from tests.support import (
    Gateway,
    active_holds_per_slot,
    hold_on_slot,
    released_together,
    running_gateway,
    statuses,
)


@pytest.fixture(name="gateway_on_own_redis")
async def fx_gateway_on_own_redis(
    database_url: str, own_redis: LocalRedis, key_prefix: str
) -> AsyncIterator[Gateway]:
    async with running_gateway(make_settings(database_url, own_redis.url, key_prefix)) as gateway:
        yield gateway


async def storm_one_slot(gateway: Gateway, event_id: str, contenders: int = 100) -> dict[int, int]:
    responses = await released_together(
        contenders, lambda i: gateway.hold(event_id, ["A-1"], holder=f"user-{i}")
    )
    return dict(statuses(responses))


async def test_redis_down_at_start_serves_from_postgres(database_url: str, key_prefix: str) -> None:
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    async with running_gateway(make_settings(database_url, nothing_listens, key_prefix)) as gateway:
        ready = await gateway.client.get("/ready")
        counts = await storm_one_slot(gateway, "show-1")
        hold = (await gateway.hold("show-1", ["B-1"])).json()
        confirmed = await gateway.client.post(f"/v1/holds/{hold['id']}/confirm", json={"holder": "alice"})

    assert ready.status_code == 200
    reason = ready.json().pop("mode_reason")
    assert ready.json() | {"mode_reason": None} == {
        "database": "up",
        "redis": "down",
        "mode": "db-only",
        "mode_reason": None,
        "client_keys": "open",
    }
    assert "ConnectionError: Error 111" in reason, reason
    assert counts == {201: 1, 409: 99}
    assert confirmed.status_code == 200
    assert await active_holds_per_slot(database_url) == {("show-1", "A-1"): 1, ("show-1", "B-1"): 1}


async def test_redis_killed_mid_run_then_restarted(
    gateway_on_own_redis: Gateway, own_redis: LocalRedis
) -> None:
    gateway = gateway_on_own_redis
    before = (await gateway.hold("show-1", ["A-1"], holder="early")).json()

    own_redis.kill(signal.SIGKILL)
    during = await storm_one_slot(gateway, "show-2")
    blocked_by_early = await gateway.hold("show-1", ["A-1"], holder="late")
    ready_during = (await gateway.client.get("/ready")).json()

    own_redis.start()  # same port, empty: it kept nothing
    # The breaker probes once per retry interval; a probe that failed just before the restart delays it.
    deadline = time.monotonic() + 3 * gateway.settings.redis_retry_interval_s + 1
    while (ready_after := (await gateway.client.get("/ready")).json())["mode"] != "redis-front":
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    after = await storm_one_slot(gateway, "show-3")
    # Redis forgot show-1's lease: Postgres still refuses the rival, and the lease is put back.
    rival_after = await gateway.hold("show-1", ["A-1"], holder="rival")

    assert during == {201: 1, 409: 99}
    assert blocked_by_early.status_code == 409
    assert "ConnectionError" in ready_during.pop("mode_reason"), ready_during
    assert ready_during == {"database": "up", "redis": "down", "mode": "db-only", "client_keys": "open"}
    assert ready_after == {
        "database": "up",
        "redis": "up",
        "mode": "redis-front",
        "mode_reason": None,
        "client_keys": "open",
    }
    assert after == {201: 1, 409: 99}
    assert rival_after.status_code == 409
    per_slot = await active_holds_per_slot(gateway.settings.database_url or "")
    assert per_slot == {("show-1", "A-1"): 1, ("show-2", "A-1"): 1, ("show-3", "A-1"): 1}
    assert await hold_on_slot(gateway, "show-1", "A-1") == before["id"]


async def test_frozen_redis_costs_a_request_well_under_a_second(
    gateway_on_own_redis: Gateway, own_redis: LocalRedis
) -> None:
    gateway = gateway_on_own_redis
    own_redis.kill(signal.SIGSTOP)
    try:
        started = time.monotonic()
        first = await gateway.hold("show-1", ["A-1"], holder="alice")
        first_s = time.monotonic() - started
        counts = await storm_one_slot(gateway, "show-2", contenders=50)
        ready = (await gateway.client.get("/ready")).json()
    finally:
        own_redis.kill(signal.SIGCONT)

    assert first.status_code == 201
    # One Redis timeout (redis_timeout_s), then Postgres; redis-py's defaults would wait about a minute.
    assert first_s < gateway.settings.redis_timeout_s + 0.5
    assert counts == {201: 1, 409: 49}
    assert ready["mode"] == "db-only"


async def test_lease_lost_in_redis_is_refused_by_postgres_and_relearned(
    gateway_on_own_redis: Gateway, own_redis: LocalRedis
) -> None:
    """A lease can vanish (eviction, FLUSHALL, a lapsed pending TTL) while the hold lives: Postgres decides,
    and Redis is taught the lease again so the next rivals stop there."""
    gateway = gateway_on_own_redis
    await gateway.hold("show-1", ["A-1", "A-2"], holder="alice")
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        keys = [slot_key(gateway.settings.redis_key_prefix, "show-1", slot) for slot in ("A-1", "A-2")]
        assert await client.delete(*keys) == 2

        first_rival = await gateway.hold("show-1", ["A-2"], holder="bob")
        relearned = await client.mget(keys)
        ttl_ms = await client.pttl(keys[0])
    finally:
        await client.aclose()

    assert first_rival.status_code == 409
    assert first_rival.json()["conflicts"] == ["A-2"]
    assert relearned[0] == relearned[1]
    assert relearned[0] is not None
    assert relearned[0].endswith(":" + holder_fingerprint("alice"))
    assert 0 < ttl_ms <= ADOPTED_LEASE_MAX_MS  # re-taught from a read, so kept short
