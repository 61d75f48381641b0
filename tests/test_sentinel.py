"""Redis behind Sentinel: the gateway finds the master through the Sentinels, and follows a failover.

Real servers, started here: a master, a replica that replicates through a fault proxy (so a test can hold
back what reaches it), and three Sentinels that judge the master down after a second.
"""

import asyncio
import inspect
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis

from gateway import keys
from gateway.chaos.proxy import FaultProxy
from gateway.config import ConfigError, Settings, settings_from_env
from gateway.embedded import LocalRedis, LocalSentinel
from tests.conftest import make_settings
from tests.support import Gateway, counters, fetch, running_gateway, trusted_again

MASTER_NAME = "gateway-main"
# Every wait here is for a condition, with a deadline generous for a busy 2-core machine: Sentinel needs
# about 2 s to start and agree, and about 2 s more to fail over.
DEADLINE_S = 60.0
STORM_SEATS = 8
CONTENDERS_PER_SEAT = 3


@dataclass
class SentinelRedis:
    master: LocalRedis
    replica: LocalRedis
    sentinels: list[LocalSentinel]
    replication: FaultProxy  # the replica's link to the master

    def gateway_settings(self, database_url: str, key_prefix: str, **overrides: object) -> Settings:
        """A gateway's settings that find the master through these Sentinels."""
        sentinels = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return make_settings(
            database_url,
            None,
            key_prefix,
            redis_sentinels=sentinels,
            redis_sentinel_master=MASTER_NAME,
            **overrides,
        )


async def _until(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await _value(check()):
        assert time.monotonic() < deadline, f"still not {what} after {DEADLINE_S} s"
        await asyncio.sleep(0.05)


async def _until_trusted_elsewhere(gateway: Gateway, old_run_id: str | None) -> None:
    """Until the gateway is back in redis-front mode on another Redis instance than `old_run_id` (the
    promoted replica), rebuilt."""
    front = gateway.service.front
    assert front is not None

    async def promoted_and_trusted() -> bool:
        if (await gateway.client.get("/ready")).json()["mode"] != "redis-front":
            return False
        return front.run_id not in (None, old_run_id)

    await _until(promoted_and_trusted, "back to redis-front on the promoted replica")


async def _info(port: int, section: str) -> dict[str, object]:
    client = redis.Redis(port=port, socket_timeout=5)
    try:
        info: dict[str, object] = await client.info(section)
        return info
    finally:
        await client.aclose()


@asynccontextmanager
async def sentinel_redis(tmp_path: Path) -> AsyncIterator[SentinelRedis]:
    """A master, its replica and three Sentinels, ready: each Sentinel knows the replica and the two others
    (so that a majority can elect a leader and fail over)."""
    async with AsyncExitStack() as stack:
        master = stack.enter_context(LocalRedis(tmp_path / "master"))
        replication = await stack.enter_async_context(FaultProxy("127.0.0.1", master.port))
        replica = stack.enter_context(
            LocalRedis(tmp_path / "replica", extra_args=["--replicaof", "127.0.0.1", str(replication.port)])
        )
        sentinels = [
            stack.enter_context(
                LocalSentinel(tmp_path / f"sentinel-{i}", MASTER_NAME, master.port, failover_timeout_ms=3_000)
            )
            for i in range(3)
        ]

        async def ready() -> bool:
            if (await _info(replica.port, "replication")).get("master_link_status") != "up":
                return False
            for sentinel in sentinels:
                client = redis.Redis(port=sentinel.port, socket_timeout=5, decode_responses=True)
                try:
                    replicas = await client.sentinel_slaves(MASTER_NAME)
                    others = await client.sentinel_sentinels(MASTER_NAME)
                finally:
                    await client.aclose()
                if not isinstance(replicas, list) or not isinstance(others, list):
                    return False
                if len(replicas) != 1 or len(others) != len(sentinels) - 1:
                    return False
            return True

        await _until(ready, "a master, a replica and three Sentinels that know each other")
        yield SentinelRedis(master, replica, sentinels, replication)


def test_sentinel_settings_are_checked_and_named() -> None:
    ok = settings_from_env(
        {"GATEWAY_REDIS_SENTINELS": "10.0.0.1:26379,sentinel-b:26380", "GATEWAY_REDIS_SENTINEL_MASTER": "m"}
    )
    assert ok.sentinel_addresses == [("10.0.0.1", 26379), ("sentinel-b", 26380)]
    assert ok.redis_configured
    refused = {
        "GATEWAY_REDIS_SENTINELS": {"GATEWAY_REDIS_SENTINELS": "10.0.0.1"},
        "GATEWAY_REDIS_SENTINEL_MASTER": {"GATEWAY_REDIS_SENTINELS": "a:1"},
        "not both": {
            "GATEWAY_REDIS_SENTINELS": "a:1",
            "GATEWAY_REDIS_SENTINEL_MASTER": "m",
            "GATEWAY_REDIS_URL": "redis://a:6379/0",
        },
        "GATEWAY_REDIS_DB": {"GATEWAY_REDIS_URL": "redis://a:6379/0", "GATEWAY_REDIS_DB": "2"},
    }
    for named, environ in refused.items():
        with pytest.raises(ConfigError, match=named):
            settings_from_env(environ)


async def test_a_master_killed_under_a_storm_is_followed_with_one_winner_per_seat(
    database_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """The master is killed while holders storm fresh seats: Sentinel promotes the replica, the gateway
    spends a short spell db-only, then trusts the promoted replica only after rebuilding from Postgres.
    Throughout: one winner per seat, no 5xx but 503. After it: a hold from before the failover still turns
    rivals away in Redis, and the lease of a hold cancelled just before it (a cancel the replica never
    received) is gone, so that seat is free at once."""
    async with sentinel_redis(tmp_path) as servers:
        settings = servers.gateway_settings(database_url, key_prefix, create_concurrency=64)
        async with running_gateway(settings) as gateway:
            await trusted_again(gateway)
            front = gateway.service.front
            assert front is not None
            old_run_id = front.run_id
            assert (await gateway.hold("fo", ["A-1"], "alice")).status_code == 201
            bob = await gateway.hold("fo", ["A-2"], "bob")
            assert bob.status_code == 201
            bob_key = keys.slot_key(key_prefix, "fo", "A-2")
            replica = redis.Redis(port=servers.replica.port, decode_responses=True)
            master = redis.Redis(port=servers.master.port, decode_responses=True)
            try:

                async def bob_on_replica() -> bool:
                    return await replica.get(bob_key) is not None

                await _until(bob_on_replica, "bob's lease on the replica")
                bob_lease = await replica.get(bob_key)
                servers.replication.blackhole()  # from here on, the replica hears nothing from the master
                cancelled = await gateway.post(f"/v1/holds/{bob.json()['id']}/cancel", {"holder": "bob"})
                assert cancelled.status_code == 200
                assert await master.get(bob_key) is None
                assert await replica.get(bob_key) == bob_lease
            finally:
                await master.aclose()

            answers: list[tuple[str, httpx.Response]] = []
            rounds = Counter[str]()
            phase = "before the kill"
            stop = asyncio.Event()

            async def storm() -> None:
                round_no = 0
                while not stop.is_set():
                    round_no += 1
                    seats = [f"S-{round_no}-{seat}" for seat in range(STORM_SEATS)]

                    async def one(seat: str, holder: str) -> tuple[str, httpx.Response]:
                        return seat, await gateway.hold("fo", [seat], holder)

                    answers.extend(
                        await asyncio.gather(
                            *(
                                one(seat, f"h-{seat}-{n}")
                                for seat in seats
                                for n in range(CONTENDERS_PER_SEAT)
                            )
                        )
                    )
                    rounds[phase] += 1

            storming = asyncio.create_task(storm())
            try:
                await _until(lambda: rounds[phase] >= 2, "two rounds of the storm")
                servers.master.kill(signal.SIGKILL)
                phase = "during the failover"

                await _until_trusted_elsewhere(gateway, old_run_id)
                phase = "after the failover"
                await _until(lambda: rounds[phase] >= 2, "two rounds after the failover")
            finally:
                stop.set()
                await storming

            new_master = await _info(servers.replica.port, "replication")
            assert new_master["role"] == "master"
            assert front.run_id == (await _info(servers.replica.port, "server"))["run_id"]
            assert rounds["during the failover"] + rounds["after the failover"] >= 2

            statuses = Counter(response.status_code for _, response in answers)
            print(f"storm rounds: {dict(rounds)}; answers: {dict(statuses)}")
            assert set(statuses) <= {201, 409, 503}, statuses
            winners: dict[str, list[str]] = defaultdict(list)
            for seat, response in answers:
                if response.status_code == 201:
                    winners[seat].append(response.json()["id"])
            assert all(len(ids) == 1 for ids in winners.values()), winners
            live = await fetch(
                database_url,
                "SELECT slot_id, hold_id FROM hold_slots WHERE event_id = 'fo' AND slot_id LIKE 'S-%' "
                "AND status IN ('held', 'confirmed')",
            )
            assert {row["slot_id"]: [row["hold_id"]] for row in live} == dict(winners)

            # The promoted replica, rebuilt: alice's hold still turns rivals away in Redis, and bob's
            # cancelled hold left no lease behind (his seat is free at once).
            refused_before = (await counters(gateway))["rejected_by_redis"]
            assert (await gateway.hold("fo", ["A-1"], "mallory")).status_code == 409
            assert (await counters(gateway))["rejected_by_redis"] == refused_before + 1
            carol = await gateway.hold("fo", ["A-2"], "carol")
            assert carol.status_code == 201
            now_on_a2 = await replica.get(bob_key)
            await replica.aclose()
            assert isinstance(now_on_a2, str)
            assert keys.parse_lease_value(now_on_a2).holder_fingerprint == keys.holder_fingerprint("carol")


async def _value(answer: Awaitable[bool] | bool) -> bool:
    return await answer if inspect.isawaitable(answer) else answer


async def test_a_demoted_master_that_stays_up_is_left_for_the_promoted_one(
    database_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """A coordinated failover (SENTINEL FAILOVER): the old master stays up as a replica, so connections to it
    stay open and answer READONLY. The gateway drops them, asks Sentinel again and, once it has rebuilt the
    new master from Postgres, turns rivals away in Redis there."""
    async with sentinel_redis(tmp_path) as servers:
        servers.replication.heal()
        async with running_gateway(servers.gateway_settings(database_url, key_prefix)) as gateway:
            await trusted_again(gateway)
            front = gateway.service.front
            assert front is not None
            old_run_id = front.run_id
            assert (await gateway.hold("co", ["A-1"], "alice")).status_code == 201
            sentinel = redis.Redis(port=servers.sentinels[0].port)
            try:
                assert await sentinel.sentinel_failover(MASTER_NAME)
            finally:
                await sentinel.aclose()

            async def promoted() -> bool:
                return (await _info(servers.replica.port, "replication"))["role"] == "master"

            await _until(promoted, "the replica promoted")
            # Sentinel turns the old master into a replica at its next look (up to 10 s): do it now.
            old_master = redis.Redis(port=servers.master.port)
            try:
                await old_master.replicaof("127.0.0.1", servers.replica.port)
            finally:
                await old_master.aclose()
            answers = [await gateway.hold("co", [f"B-{n}"], "bob") for n in range(3)]  # meets READONLY

            await _until_trusted_elsewhere(gateway, old_run_id)
            assert front.run_id == (await _info(servers.replica.port, "server"))["run_id"]
            assert [answer.status_code for answer in answers] == [201, 201, 201]
            refused_before = (await counters(gateway))["rejected_by_redis"]
            assert (await gateway.hold("co", ["A-1"], "mallory")).status_code == 409
            assert (await counters(gateway))["rejected_by_redis"] == refused_before + 1
