"""Redis never lies once trusted (gateway.lease_sync): after SCRIPT FLUSH at every entry point, a restart
(empty or from an old snapshot), FLUSHALL, and cancels whose release did not reach Redis, no request is
judged by a Redis out of line with Postgres, and the leases of live holds come back."""

import asyncio
import signal
import time

import pytest
import redis.asyncio as redis

from gateway import keys
from gateway.chaos.proxy import FaultProxy
from gateway.embedded import LocalRedis
from gateway.redis_front import SCRIPT_NAMES
from tests.conftest import make_settings
from tests.support import (
    Gateway,
    lease_of,
    rejected_by,
    running_gateway,
    token_of,
    trusted_again,
)


async def wait_for_lease(
    direct: redis.Redis, gateway: Gateway, event_id: str, slot_id: str, *, present: bool, within_s: float = 30
) -> str | None:
    """Wait until the slot's lease is there (or gone); the value at that moment."""
    deadline = time.monotonic() + within_s
    while True:
        value = await lease_of(direct, gateway, event_id, slot_id)
        if (value is not None) == present or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


def lease_value(token: str, holder: str) -> str:
    return keys.lease_value(token, holder)


async def refused_by_redis(
    gateway: Gateway, event_id: str, slot_id: str, holder: str
) -> tuple[int, int, int]:
    """A rival's request: its status, and how many rejections Redis and Postgres counted for it."""
    return await rejected_by(gateway, gateway.hold(event_id, [slot_id], holder=holder))


# SCRIPT FLUSH, at every entry point


async def test_script_flush_then_acquire_still_turns_losers_away_in_redis(
    own_gateway: Gateway, direct: redis.Redis
) -> None:
    gateway = own_gateway
    assert (await gateway.hold("show-1", ["A-1"], holder="alice")).status_code == 201
    await direct.script_flush()

    assert await refused_by_redis(gateway, "show-1", "A-1", "bob") == (409, 1, 0)


async def test_script_flush_then_the_commit_still_stretches_its_lease(
    own_gateway: Gateway, direct: redis.Redis
) -> None:
    """The post-commit extend runs a script too: after SCRIPT FLUSH the lease still lives the hold's life,
    not the pending TTL."""
    gateway = own_gateway
    await gateway.hold("show-1", ["A-0"], holder="alice")  # the event is synchronized, scripts loaded
    await direct.script_flush()
    hold = (await gateway.hold("show-1", ["A-1"], holder="alice", ttl_seconds=120)).json()
    pttl_ms = await direct.pttl(keys.slot_key(gateway.settings.redis_key_prefix, "show-1", "A-1"))

    assert await lease_of(direct, gateway, "show-1", "A-1") == lease_value(
        await token_of(gateway, hold["id"]), "alice"
    )
    assert pttl_ms > gateway.settings.lease_pending_ms


async def test_script_flush_then_cancel_still_releases_at_once(
    own_gateway: Gateway, direct: redis.Redis
) -> None:
    gateway = own_gateway
    hold = (await gateway.hold("show-1", ["A-1"], holder="alice")).json()
    await direct.script_flush()
    cancelled = await gateway.client.post(f"/v1/holds/{hold['id']}/cancel", json={"holder": "alice"})

    assert cancelled.status_code == 200
    assert await lease_of(direct, gateway, "show-1", "A-1") is None
    assert (await gateway.hold("show-1", ["A-1"], holder="bob")).status_code == 201


async def test_script_flush_with_a_pending_outbox_does_not_keep_the_gateway_in_db_only_mode(
    proxied_gateway: Gateway, redis_proxy: FaultProxy, direct: redis.Redis
) -> None:
    """Regression: a cancel whose release failed while Redis was unreachable, then SCRIPT FLUSH, then Redis
    back. The outbox drain ran EVALSHA in a pipeline with no NOSCRIPT fallback, before any script reload,
    so every recovery failed the same way and the worker stayed in db-only mode until restarted."""
    gateway = proxied_gateway
    hold = (await gateway.hold("show-1", ["A-1"], holder="alice")).json()
    redis_proxy.refuse()
    cancelled = await gateway.client.post(f"/v1/holds/{hold['id']}/cancel", json={"holder": "alice"})
    left_behind = await lease_of(direct, gateway, "show-1", "A-1")
    await direct.script_flush()
    redis_proxy.heal()
    await trusted_again(gateway)

    assert cancelled.status_code == 200
    assert left_behind is not None, "the cancel should not have reached Redis"
    assert await lease_of(direct, gateway, "show-1", "A-1") is None
    assert (await gateway.hold("show-1", ["A-1"], holder="bob")).status_code == 201


async def test_script_flush_during_an_outage_then_recovery_loads_the_scripts(
    proxied_gateway: Gateway, redis_proxy: FaultProxy, direct: redis.Redis
) -> None:
    gateway = proxied_gateway
    assert (await gateway.hold("show-1", ["A-1"], holder="alice")).status_code == 201
    redis_proxy.refuse()
    assert (await gateway.hold("show-1", ["A-2"], holder="alice")).status_code == 201  # Postgres alone
    await direct.script_flush()
    redis_proxy.heal()
    await trusted_again(gateway)

    assert await refused_by_redis(gateway, "show-1", "A-1", "bob") == (409, 1, 0)
    shas = [s.sha for s in gateway.service.front._scripts.values()]  # type: ignore[union-attr]
    assert len(shas) == len(SCRIPT_NAMES)
    assert await direct.script_exists(*shas) == [True] * len(SCRIPT_NAMES)


# Restarts and flushes: caught in-band


async def test_redis_restarted_empty_while_holds_live_gets_their_leases_back(
    own_gateway: Gateway, own_redis: LocalRedis, direct: redis.Redis
) -> None:
    """Restarted empty while holds live (held and confirmed): the first request after it is not judged by
    the empty Redis (409 from Postgres at worst), the leases of live holds are rebuilt before Redis is
    trusted again, and no rebuilt lease outlives its hold."""
    gateway = own_gateway
    held = (await gateway.hold("show-1", ["A-1", "A-2"], holder="alice", ttl_seconds=30)).json()
    confirmed = (await gateway.hold("show-1", ["B-1"], holder="bob")).json()
    await gateway.client.post(f"/v1/holds/{confirmed['id']}/confirm", json={"holder": "bob"})

    own_redis.kill(signal.SIGKILL)
    own_redis.start()
    first = await gateway.hold("show-1", ["A-1"], holder="mallory")
    await trusted_again(gateway)
    values = [await lease_of(direct, gateway, "show-1", s) for s in ("A-1", "A-2", "B-1")]
    held_pttl_ms = await direct.pttl(keys.slot_key(gateway.settings.redis_key_prefix, "show-1", "A-1"))
    rivals = [await refused_by_redis(gateway, "show-1", s, "carol") for s in ("A-2", "B-1")]

    assert first.status_code == 409
    held_value = lease_value(await token_of(gateway, held["id"]), "alice")
    assert values == [held_value, held_value, lease_value(await token_of(gateway, confirmed["id"]), "bob")]
    assert 0 < held_pttl_ms <= 30_000
    assert rivals == [(409, 1, 0), (409, 1, 0)]


@pytest.mark.parametrize("attempt", range(3))
async def test_redis_restarted_from_an_old_snapshot_judges_no_request(
    own_gateway: Gateway, own_redis: LocalRedis, direct: redis.Redis, attempt: int
) -> None:
    """Regression: Redis saved a snapshot holding a confirmed hold's hour-long lease, the hold was then
    cancelled (lease dropped), and Redis restarted from that snapshot. The very next request for the seat
    got 409 from the stale lease (the recovery dropped it only later). Now the restart is met on the
    connection, so that request is not judged by the restarted Redis: 201, at once, every time."""
    gateway = own_gateway
    hold = (await gateway.hold("show-1", ["A-1"], holder="alice")).json()
    await gateway.client.post(f"/v1/holds/{hold['id']}/confirm", json={"holder": "alice"})
    await direct.save()
    cancelled = await gateway.client.post(f"/v1/holds/{hold['id']}/cancel", json={"holder": "alice"})
    assert await lease_of(direct, gateway, "show-1", "A-1") is None

    own_redis.kill(signal.SIGKILL)
    own_redis.start()  # loads dump.rdb: the confirmed hold's hour-long lease is there again
    stale = await lease_of(direct, gateway, "show-1", "A-1")
    rival = await gateway.hold("show-1", ["A-1"], holder=f"bob-{attempt}")
    await trusted_again(gateway)

    assert cancelled.status_code == 200
    assert stale is not None, "the snapshot should have brought the lease back"
    assert rival.status_code == 201, rival.json()
    assert await wait_for_lease(direct, gateway, "show-1", "A-1", present=True) == lease_value(
        await token_of(gateway, rival.json()["id"]), f"bob-{attempt}"
    )


async def test_flushall_is_met_by_the_next_request_which_redis_still_turns_away(
    own_gateway: Gateway, direct: redis.Redis
) -> None:
    """FLUSHALL keeps the connections and the run_id, but takes every event's sync marker: the next
    request for an event makes it synchronized first (its live leases rebuilt), so the loser is still
    refused by Redis, not Postgres."""
    gateway = own_gateway
    hold = (await gateway.hold("show-1", ["A-1"], holder="alice")).json()
    await direct.flushall()

    assert await refused_by_redis(gateway, "show-1", "A-1", "bob") == (409, 1, 0)
    assert await lease_of(direct, gateway, "show-1", "A-1") == lease_value(
        await token_of(gateway, hold["id"]), "alice"
    )


async def test_flushall_with_no_request_is_rebuilt_by_the_sweeper(
    own_gateway: Gateway, direct: redis.Redis
) -> None:
    """Without any request asking, the sweeper notices the flush (the instance marker is gone) and rebuilds
    the live leases of every event."""
    gateway = own_gateway
    holds = [(await gateway.hold(f"show-{i}", ["A-1"], holder="alice")).json() for i in range(3)]
    await direct.flushall()

    for i, hold in enumerate(holds):
        assert await wait_for_lease(direct, gateway, f"show-{i}", "A-1", present=True) == lease_value(
            await token_of(gateway, hold["id"]), "alice"
        )


async def test_gateways_agree_once_one_has_synchronized_an_event(
    database_url: str, own_redis: LocalRedis, key_prefix: str, direct: redis.Redis
) -> None:
    """Two gateways on one Redis: after FLUSHALL, the first to meet the event synchronizes it, and the other
    trusts that (the marker holds the instance's run_id, which both checked), turning its loser away in
    Redis too."""
    settings = make_settings(database_url, own_redis.url, key_prefix)
    async with running_gateway(settings) as first, running_gateway(settings) as second:
        hold = (await first.hold("show-1", ["A-1"], holder="alice")).json()
        await direct.flushall()
        first_rival = await refused_by_redis(first, "show-1", "A-1", "bob")
        marker = await direct.get(keys.sync_key(key_prefix, "show-1"))
        second_rival = await refused_by_redis(second, "show-1", "A-1", "carol")

    assert first_rival == (409, 1, 0)
    assert marker == (await direct.info("server"))["run_id"]
    assert second_rival == (409, 1, 0)
    assert hold["status"] == "held"


# The release outbox


@pytest.mark.parametrize("confirm_first", [False, True], ids=["held", "confirmed"])
async def test_hold_cancelled_while_redis_unreachable_leaves_no_false_409(
    proxied_gateway: Gateway, redis_proxy: FaultProxy, direct: redis.Redis, confirm_first: bool
) -> None:
    """Cancelled while the gateway cannot reach Redis, so its lease stays there: once the gateway trusts Redis
    again the lease is gone (the release outbox is drained first), and the slot goes to the next asker."""
    gateway = proxied_gateway
    hold = (await gateway.hold("show-1", ["A-1"], holder="alice")).json()
    if confirm_first:
        await gateway.client.post(f"/v1/holds/{hold['id']}/confirm", json={"holder": "alice"})
    redis_proxy.refuse()
    cancelled = await gateway.client.post(f"/v1/holds/{hold['id']}/cancel", json={"holder": "alice"})
    left_behind = await lease_of(direct, gateway, "show-1", "A-1")
    ready_during = (await gateway.client.get("/ready")).json()
    redis_proxy.heal()
    await trusted_again(gateway)
    rival = await gateway.hold("show-1", ["A-1"], holder="bob")

    assert cancelled.status_code == 200
    assert left_behind is not None, "the cancel should not have reached Redis"
    assert ready_during["mode"] == "db-only"
    assert ready_during["mode_reason"]
    assert rival.status_code == 201, rival.json()


async def test_another_gateway_drains_the_outbox_of_one_cut_off_from_redis(
    database_url: str,
    redis_proxy: FaultProxy,
    own_redis: LocalRedis,
    key_prefix: str,
    direct: redis.Redis,
) -> None:
    """A gateway cut off from Redis cancels a hold; another gateway, which still reaches Redis, drops the
    lease left behind within a sweep, while the first is still cut off."""
    cut_off = make_settings(database_url, redis_proxy.redis_url(own_redis.url), key_prefix)
    reaching = make_settings(database_url, own_redis.url, key_prefix, sweep_interval_s=0.2)
    async with running_gateway(cut_off) as first, running_gateway(reaching) as second:
        hold = (await first.hold("show-1", ["A-1"], holder="alice")).json()
        redis_proxy.refuse()
        cancelled = await first.client.post(f"/v1/holds/{hold['id']}/cancel", json={"holder": "alice"})
        left_behind = await lease_of(direct, first, "show-1", "A-1")
        gone = await wait_for_lease(direct, second, "show-1", "A-1", present=False)
        rival = await second.hold("show-1", ["A-1"], holder="bob")
        first_mode = (await first.client.get("/ready")).json()["mode"]

    assert cancelled.status_code == 200
    assert left_behind is not None, "the cancel should not have reached Redis"
    assert gone is None
    assert rival.status_code == 201
    assert first_mode == "db-only"
