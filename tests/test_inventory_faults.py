"""Inventories under Redis faults: a pool is never oversold and Redis's counters and blocked seats come back
in line with Postgres after a flush or a restart; an inventory change reaches Redis before the next request.
Every loser that Redis can judge is judged there (counted, not assumed)."""

import asyncio
import signal
import time

import httpx
import pytest
import redis.asyncio as redis

from gateway import keys
from gateway.chaos.proxy import FaultProxy
from gateway.embedded import LocalRedis
from tests.conftest import make_settings
from tests.support import (
    Gateway,
    rejected_by,
    released_together,
    running_gateway,
    statuses,
    token_of,
    trusted_again,
)
from tests.test_faults_postgres import doomed_env, doomed_gateway, fetch
from tests.test_inventory import hold_items, live_pool_units, pool, put_inventory


async def pool_in_redis(gateway: Gateway, event_id: str, pool_id: str) -> tuple[int, int]:
    """(capacity, used) of a pool's counter in Redis."""
    front = gateway.service.front
    assert front is not None
    state = await front.pool_state(event_id, pool_id)
    assert state is not None
    return state


async def test_flushall_mid_sale_never_oversells_and_redis_counts_again(
    own_gateway: Gateway, direct: redis.Redis
) -> None:
    gateway = own_gateway
    assert (
        await put_inventory(gateway, "ga", {"pools": [{"pool_id": "floor", "capacity": 20}]})
    ).status_code == 200
    first = await released_together(
        15, lambda i: hold_items(gateway, [pool("ga", "floor", 1)], holder=f"a{i}")
    )
    assert statuses(first) == {201: 15}

    await direct.flushall()
    second = await released_together(
        40, lambda i: hold_items(gateway, [pool("ga", "floor", 1)], holder=f"b{i}")
    )

    assert statuses(second) == {201: 5, 409: 35}
    assert (await live_pool_units(gateway.settings.database_url or ""))[("ga", "floor")] == 20
    assert await pool_in_redis(gateway, "ga", "floor") == (20, 20)
    assert await rejected_by(gateway, hold_items(gateway, [pool("ga", "floor", 1)], holder="late")) == (
        409,
        1,
        0,
    )


async def test_redis_restarted_empty_mid_sale_rebuilds_pools_and_blocks(
    own_gateway: Gateway, own_redis: LocalRedis, direct: redis.Redis
) -> None:
    gateway = own_gateway
    body = {"seats": ["A-1", "A-2"], "pools": [{"pool_id": "floor", "capacity": 4}]}
    assert (await put_inventory(gateway, "gig", body)).status_code == 200
    assert (
        await gateway.client.post("/v1/events/gig/seats/block", json={"seats": ["A-1"]})
    ).status_code == 200
    held = (await hold_items(gateway, [pool("gig", "floor", 3)])).json()
    confirmed = (await hold_items(gateway, [pool("gig", "floor", 1)], holder="bob")).json()
    assert (await gateway.post(f"/v1/holds/{confirmed['id']}/confirm", {"holder": "bob"})).status_code == 200

    own_redis.kill(signal.SIGKILL)
    own_redis.start()
    during = await hold_items(gateway, [pool("gig", "floor", 1)], holder="carol")
    await trusted_again(gateway)

    assert during.status_code == 409, during.text  # Postgres refused it, whoever judged
    assert held["status"] == "held"
    assert await rejected_by(gateway, hold_items(gateway, [pool("gig", "floor", 1)], holder="dave")) == (
        409,
        1,
        0,
    )
    assert await rejected_by(gateway, gateway.hold("gig", ["A-1"], holder="erin")) == (409, 1, 0)
    assert await pool_in_redis(gateway, "gig", "floor") == (4, 4)
    assert (await gateway.hold("gig", ["A-2"], holder="erin")).status_code == 201


async def test_an_inventory_change_reaches_redis_before_the_next_request(own_gateway: Gateway) -> None:
    gateway = own_gateway
    body = {"seats": ["A-1", "A-2"], "pools": [{"pool_id": "floor", "capacity": 1}]}
    assert (await put_inventory(gateway, "gig", body)).status_code == 200
    assert (await hold_items(gateway, [pool("gig", "floor", 1)])).status_code == 201
    assert (await gateway.hold("gig", ["A-2"], holder="zed")).status_code == 201  # Redis knows the event now

    assert (
        await gateway.client.post("/v1/events/gig/seats/block", json={"seats": ["A-1"]})
    ).status_code == 200
    assert await rejected_by(gateway, gateway.hold("gig", ["A-1"], holder="bob")) == (409, 1, 0)
    assert (
        await gateway.client.post("/v1/events/gig/seats/unblock", json={"seats": ["A-1"]})
    ).status_code == 200
    assert (await gateway.hold("gig", ["A-1"], holder="bob")).status_code == 201

    # More capacity: the next request is granted at once, not refused by a Redis that kept the old one.
    body["pools"] = [{"pool_id": "floor", "capacity": 2}]
    body["seats"] = ["A-1", "A-2"]
    assert (await put_inventory(gateway, "gig", body)).status_code == 200
    assert (await hold_items(gateway, [pool("gig", "floor", 1)], holder="carol")).status_code == 201
    assert await rejected_by(gateway, hold_items(gateway, [pool("gig", "floor", 1)], holder="dave")) == (
        409,
        1,
        0,
    )


async def test_blocked_seat_and_pool_keys_stay_under_their_events_hash_tag(
    own_gateway: Gateway, direct: redis.Redis
) -> None:
    """Cluster-ready: every key a hold of an event touches carries the event's hash tag."""
    gateway = own_gateway
    for event_id in ("day-1", "day-2"):
        body = {"seats": ["A-1", "A-2"], "pools": [{"pool_id": "floor", "capacity": 5}]}
        assert (await put_inventory(gateway, event_id, body)).status_code == 200
    await gateway.client.post("/v1/events/day-1/seats/block", json={"seats": ["A-2"]})
    items = [{"event_id": "day-1", "slots": ["A-1"]}, pool("day-2", "floor", 2)]
    assert (await hold_items(gateway, items)).status_code == 201

    prefix = gateway.settings.redis_key_prefix
    found = [key async for key in direct.scan_iter(match=f"{prefix}:*")]
    tagged = [key for key in found if key != keys.instance_key(prefix)]
    assert tagged
    assert all(key.split(":", 2)[1] in ("{day-1}", "{day-2}") for key in tagged), tagged


async def test_units_redis_lost_are_taught_back_by_the_first_refusal_postgres_makes(
    own_gateway: Gateway, direct: redis.Redis
) -> None:
    """A confirmed hold's entry gone from Redis (its confirm's stretch never arrived, and the pending entry
    lapsed): Redis thinks the units free and lets the next request through; Postgres refuses it, and has the
    event synchronized again, after which Redis refuses on its own."""
    gateway = own_gateway
    assert (
        await put_inventory(gateway, "ga", {"pools": [{"pool_id": "floor", "capacity": 2}]})
    ).status_code == 200
    hold = (await hold_items(gateway, [pool("ga", "floor", 2)])).json()
    assert (await gateway.post(f"/v1/holds/{hold['id']}/confirm", {"holder": "alice"})).status_code == 200
    prefix = gateway.settings.redis_key_prefix
    front = gateway.service.front
    assert front is not None
    lease = front.lease("ga", [], await token_of(gateway, hold["id"]), "alice", [("floor", 2)])
    assert await front.release(lease) == 1  # as if the entry had lapsed: Redis counts the units free
    assert await pool_in_redis(gateway, "ga", "floor") == (2, 0)

    assert await rejected_by(gateway, hold_items(gateway, [pool("ga", "floor", 1)], holder="bob")) == (
        409,
        0,
        1,
    )
    deadline = time.monotonic() + 30
    while await pool_in_redis(gateway, "ga", "floor") != (2, 2):
        assert time.monotonic() < deadline, await direct.hgetall(keys.pool_key(prefix, "ga", "floor"))
        await asyncio.sleep(0.05)
    assert await rejected_by(gateway, hold_items(gateway, [pool("ga", "floor", 1)], holder="carol")) == (
        409,
        1,
        0,
    )


async def test_a_frozen_redis_mid_sale_never_oversells(
    proxied_gateway: Gateway, redis_proxy: FaultProxy
) -> None:
    """Redis stops answering in time mid-sale: Postgres decides alone, the pool is sold exactly, and once
    Redis answers again it refuses the sold-out pool's losers by itself."""
    gateway = proxied_gateway
    assert (
        await put_inventory(gateway, "ga", {"pools": [{"pool_id": "floor", "capacity": 10}]})
    ).status_code == 200
    first = await released_together(
        6, lambda i: hold_items(gateway, [pool("ga", "floor", 1)], holder=f"a{i}")
    )
    redis_proxy.latency(gateway.settings.redis_timeout_s * 1000 * 3)
    frozen = await released_together(
        30, lambda i: hold_items(gateway, [pool("ga", "floor", 1)], holder=f"b{i}")
    )
    redis_proxy.heal()
    await trusted_again(gateway)

    assert statuses(first) == {201: 6}
    assert statuses(frozen) == {201: 4, 409: 26}
    assert (await live_pool_units(gateway.settings.database_url or ""))[("ga", "floor")] == 10
    deadline = time.monotonic() + 30
    while (
        status := await rejected_by(gateway, hold_items(gateway, [pool("ga", "floor", 1)], holder="c"))
    ) != (409, 1, 0):
        assert status[0] == 409, status
        assert time.monotonic() < deadline, status  # a refusal by Postgres resynchronizes the pool in Redis
        await asyncio.sleep(0.1)


async def test_a_worker_killed_after_taking_units_leaves_none_behind(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The gateway dies after Redis gave it a pool's pending units, before its claim: no hold exists, the
    units come back when the pending entry lapses, and a rival then gets the whole pool."""
    pending_ms = 1000
    env = doomed_env(database_url, redis_url, key_prefix, pending_ms)
    settings = make_settings(database_url, redis_url, key_prefix, lease_pending_ms=pending_ms)
    async with running_gateway(settings) as gateway:
        assert (
            await put_inventory(gateway, "ga", {"pools": [{"pool_id": "floor", "capacity": 3}]})
        ).status_code == 200
        assert (await hold_items(gateway, [pool("ga", "floor", 1)], holder="first")).status_code == 201
        async with doomed_gateway(env) as url, httpx.AsyncClient(timeout=10) as client:
            body = {"holder": "alice", "items": [pool("ga", "floor", 2)]}
            with pytest.raises(httpx.TransportError):
                await client.post(f"{url}/v1/holds", json=body)
        taken_by_the_dead = await pool_in_redis(gateway, "ga", "floor")
        deadline = time.monotonic() + 30
        while await pool_in_redis(gateway, "ga", "floor") != (3, 1):
            assert time.monotonic() < deadline, "the dead request's pending units never came back"
            await asyncio.sleep(0.05)
        rival = await hold_items(gateway, [pool("ga", "floor", 2)], holder="bob")

    assert taken_by_the_dead == (3, 3)
    assert rival.status_code == 201, rival.text
    rows = await fetch(database_url, "SELECT holder FROM holds ORDER BY holder")
    assert [r["holder"] for r in rows] == ["bob", "first"]
    assert (await live_pool_units(database_url))[("ga", "floor")] == 3
