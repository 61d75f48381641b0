"""PostgreSQL failover, and a replica for the operations reads.

Failover: a primary with a synchronous streaming standby (made by pg_basebackup), the gateway on a multi-host
URL (`target_session_attrs=read-write`), the primary killed and the standby promoted while holders storm
fresh seats and winners confirm. Synchronous replication is what makes "no confirmed hold lost" hold: a
commit is acknowledged only once the standby has it. (With asynchronous replication the last commits before
a crash can be lost: that is the database's promise, not the gateway's to keep.)
"""

import asyncio
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx

from gateway.embedded import LocalPostgres
from tests.conftest import make_settings
from tests.support import QUIET_BACKGROUND, fetch, migrated_database, running_gateway

DEADLINE_S = 60.0
STORM_SEATS = 6
CONTENDERS_PER_SEAT = 3


async def _until_true(query: str, dsn: str, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not (rows := await _fetch_quietly(dsn, query)) or not rows[0][0]:
        assert time.monotonic() < deadline, f"still not {what} after {DEADLINE_S} s"
        await asyncio.sleep(0.05)


async def _fetch_quietly(dsn: str, query: str) -> list[asyncpg.Record]:
    try:
        return await fetch(dsn, query)
    except (OSError, asyncpg.PostgresError):
        return []


async def test_a_primary_killed_under_load_is_followed_to_its_promoted_standby(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    """No 500; every 201 names a hold the promoted standby has, every confirmed hold is there confirmed, one
    winner per seat; and once the standby is promoted the gateway creates and confirms on it."""
    with LocalPostgres(tmp_path / "primary", durable=False) as primary:
        database = await migrated_database(primary, "failover")
        with primary.standby(tmp_path / "standby") as standby:
            await _until_true(
                "SELECT count(*) = 1 FROM pg_stat_replication WHERE state = 'streaming'",
                primary.dsn,
                "a streaming standby",
            )
            admin = await asyncpg.connect(primary.dsn)
            try:
                await admin.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
                await admin.execute("SELECT pg_reload_conf()")
            finally:
                await admin.close()
            await _until_true(
                "SELECT sync_state = 'sync' FROM pg_stat_replication", primary.dsn, "a synchronous standby"
            )
            hosts = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
            multi_host_url = f"postgresql://postgres@{hosts}/failover?target_session_attrs=read-write"
            standby_url = database.replace(f":{primary.port}/", f":{standby.port}/")
            settings = make_settings(multi_host_url, redis_url, key_prefix, **QUIET_BACKGROUND)

            async with running_gateway(settings) as gateway:
                created: list[tuple[str, httpx.Response]] = []
                confirmed: list[str] = []
                confirm_statuses: Counter[int] = Counter()
                rounds: Counter[str] = Counter()
                phase = "before the kill"
                stop = asyncio.Event()

                async def contend(seat: str, holder: str) -> None:
                    answer = await gateway.hold("pf", [seat], holder)
                    created.append((seat, answer))
                    if answer.status_code == 201:
                        hold_id = answer.json()["id"]
                        confirm = await gateway.post(f"/v1/holds/{hold_id}/confirm", {"holder": holder})
                        confirm_statuses[confirm.status_code] += 1
                        if confirm.status_code == 200:
                            confirmed.append(hold_id)

                async def storm() -> None:
                    round_no = 0
                    while not stop.is_set():
                        round_no += 1
                        seats = [f"S-{round_no}-{n}" for n in range(STORM_SEATS)]
                        asks = [(seat, f"h-{seat}-{n}") for seat in seats for n in range(CONTENDERS_PER_SEAT)]
                        await asyncio.gather(*(contend(seat, holder) for seat, holder in asks))
                        rounds[phase] += 1

                storming = asyncio.create_task(storm())
                try:
                    deadline = time.monotonic() + DEADLINE_S
                    while rounds[phase] < 2:
                        assert time.monotonic() < deadline, "the storm made no progress"
                        await asyncio.sleep(0.02)
                    primary.kill(signal.SIGKILL)
                    phase = "during the failover"
                    promoter = await asyncpg.connect(standby.dsn)
                    try:
                        assert await promoter.fetchval("SELECT pg_promote(wait => true)")
                    finally:
                        await promoter.close()
                    confirmed_at_promotion = len(confirmed)
                    while len(confirmed) < confirmed_at_promotion + STORM_SEATS:
                        assert time.monotonic() < deadline + DEADLINE_S, "no confirm on the promoted standby"
                        await asyncio.sleep(0.02)
                    phase = "after the failover"
                finally:
                    stop.set()
                    await storming

            statuses = Counter(answer.status_code for _, answer in created)
            assert set(statuses) <= {201, 409, 503}, statuses
            assert set(confirm_statuses) <= {200, 503}, confirm_statuses
            assert rounds["before the kill"] >= 2
            winners: dict[str, list[str]] = defaultdict(list)
            for seat, answer in created:
                if answer.status_code == 201:
                    winners[seat].append(answer.json()["id"])
            assert all(len(ids) == 1 for ids in winners.values()), winners
            created_ids = [hold_id for ids in winners.values() for hold_id in ids]
            rows = await fetch(
                standby_url, "SELECT id, status FROM holds WHERE id = ANY($1::text[])", created_ids
            )
            status_of = {row["id"]: row["status"] for row in rows}
            assert set(status_of) == set(created_ids), "a 201 named a hold the promoted standby lacks"
            assert all(status_of[hold_id] == "confirmed" for hold_id in confirmed)
            live = await fetch(
                standby_url,
                "SELECT slot_id, count(*) AS holds FROM hold_slots WHERE event_id = 'pf' "
                "AND status IN ('held', 'confirmed') GROUP BY slot_id HAVING count(*) > 1",
            )
            assert live == []


async def test_the_operations_listings_read_a_replica_and_nothing_that_decides_does(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    """With GATEWAY_DATABASE_READ_URL on a standby whose replay is paused: a new hold reads back at once by
    its id, is confirmed and turns a rival away (all on the primary), while the listing, the seat map and
    the counts of /v1/stats do not show it yet; once replay resumes, they do."""
    with LocalPostgres(tmp_path / "primary", durable=False) as primary:
        database = await migrated_database(primary, "reads")
        with primary.standby(tmp_path / "standby") as standby:
            standby_url = database.replace(f":{primary.port}/", f":{standby.port}/")
            settings = make_settings(
                database, redis_url, key_prefix, **QUIET_BACKGROUND, database_read_url=standby_url
            )
            async with running_gateway(settings) as gateway:
                created = await gateway.hold("rr", ["A-1"], "alice")
                assert created.status_code == 201

                async def listed() -> list[str]:
                    page = (await gateway.client.get("/v1/holds", params={"event_id": "rr"})).json()
                    return [hold["id"] for hold in page["holds"]]

                await _until(listed, created.json()["id"], "the first hold listed from the replica")
                await fetch(standby.dsn, "SELECT pg_wal_replay_pause()")
                second = await gateway.hold("rr", ["A-2"], "bob")
                assert second.status_code == 201
                hold_id = second.json()["id"]
                assert (await gateway.client.get(f"/v1/holds/{hold_id}")).status_code == 200
                confirmed = await gateway.post(f"/v1/holds/{hold_id}/confirm", {"holder": "bob"})
                assert confirmed.status_code == 200
                assert (await gateway.hold("rr", ["A-2"], "mallory")).status_code == 409
                assert hold_id not in await listed()
                slots = (await gateway.client.get("/v1/events/rr/slots")).json()["slots"]
                assert [slot["slot_id"] for slot in slots] == ["A-1"]
                assert (await gateway.client.get("/v1/events/rr/stats")).json()["holds"]["active"] == 1

                await fetch(standby.dsn, "SELECT pg_wal_replay_resume()")
                await _until(listed, hold_id, "the second hold listed once replay resumed")
                counts = (await gateway.client.get("/v1/events/rr/stats")).json()["holds"]
                assert (counts["active"], counts["confirmed"]) == (1, 1)


async def _until(listed: Callable[[], Awaitable[list[str]]], hold_id: str, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while hold_id not in await listed():
        assert time.monotonic() < deadline, f"still not {what} after {DEADLINE_S} s"
        await asyncio.sleep(0.05)
