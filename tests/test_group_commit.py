"""Group commit: a worker's concurrent one-seat claims go to Postgres as one claim_holds_batch statement, and
each request still gets exactly the outcome it would get alone (created, or lost naming the live owner), with
lost replies resolved member by member and batch-level errors sent back one by one."""

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
import redis.asyncio as redis
from prometheus_client import Histogram

from gateway import keys, metrics
from gateway.chaos.proxy import FaultProxy
from gateway.items import EventPart
from gateway.store import ClaimRequest, Store
from tests.conftest import make_settings
from tests.support import QUIET_BACKGROUND, Gateway, eventually, fetch, running_gateway

SEATS = 40
CONTENDERS_PER_SEAT = 3


@dataclass(frozen=True)
class BatchSizes:
    batches: float
    members: float
    alone: float  # batches of one member


def batch_sizes(histogram: Histogram = metrics.CLAIM_BATCH_SIZE) -> BatchSizes:
    """What a group committer of the worker reported so far (this process's histogram): claims by default."""
    values: dict[str, float] = {}
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("le") == "1.0":
                values["alone"] = sample.value
            elif sample.name.endswith(("_count", "_sum")):
                values[sample.name.rpartition("_")[2]] = sample.value
    return BatchSizes(values["count"], values["sum"], values["alone"])


def fallbacks() -> float:
    return metrics.CLAIM_BATCH_FALLBACKS._value.get()  # prometheus-client's one reader


async def storm(gateways: list[Gateway], event_id: str) -> list[tuple[str, httpx.Response]]:
    """CONTENDERS_PER_SEAT holders for each of SEATS fresh seats, spread over the gateways, all released at
    one barrier; (seat, response) each."""
    asks = [(f"S-{seat}", f"holder-{seat}-{n}") for seat in range(SEATS) for n in range(CONTENDERS_PER_SEAT)]
    barrier = asyncio.Barrier(len(asks))

    async def one(index: int) -> tuple[str, httpx.Response]:
        seat, holder = asks[index]
        await barrier.wait()
        return seat, await gateways[index % len(gateways)].hold(event_id, [seat], holder)

    return await asyncio.gather(*(one(i) for i in range(len(asks))))


@pytest.fixture(name="two_workers", params=["redis-front", "db-only"])
async def fx_two_workers(
    request: pytest.FixtureRequest, database_url: str, redis_url: str, key_prefix: str
) -> AsyncIterator[list[Gateway]]:
    """Two gateways on one database, each with its own pool and group committer (two workers)."""
    redis = redis_url if request.param == "redis-front" else None
    settings = make_settings(database_url, redis, key_prefix, **QUIET_BACKGROUND, create_concurrency=64)
    async with running_gateway(settings) as first, running_gateway(settings) as second:
        yield [first, second]


async def test_one_winner_per_seat_and_every_outcome_exact(two_workers: list[Gateway]) -> None:
    """Three holders per fresh seat over two workers at once: one 201 per seat, each a committed hold with its
    one hold.created; every 409 names its seat, whose live owner is that seat's winner."""
    dsn = two_workers[0].settings.database_url
    answers = await storm(two_workers, "gc")

    assert Counter(r.status_code for _, r in answers) == {201: SEATS, 409: SEATS * (CONTENDERS_PER_SEAT - 1)}
    winners = {seat: r.json()["id"] for seat, r in answers if r.status_code == 201}
    assert sorted(winners) == sorted(f"S-{seat}" for seat in range(SEATS))  # one per seat
    for seat, response in answers:
        if response.status_code == 409:
            assert response.json()["conflicts"] == [seat], response.text
    live = await fetch(
        dsn,
        "SELECT slot_id, hold_id FROM hold_slots WHERE event_id = 'gc' AND status = 'held'",
    )
    assert {r["slot_id"]: r["hold_id"] for r in live} == winners
    holds = await fetch(dsn, "SELECT id, status FROM holds WHERE event_id = 'gc'")
    assert {r["id"]: r["status"] for r in holds} == dict.fromkeys(winners.values(), "held")
    created = await fetch(dsn, "SELECT hold_id FROM hold_events WHERE type = 'hold.created'")
    assert Counter(r["hold_id"] for r in created) == Counter(winners.values())


async def test_claims_of_one_pass_share_a_statement(database_url: str, key_prefix: str) -> None:
    """The control for batching: a storm on one db-only worker sends fewer claim statements than claims (a
    committer that silently sent each claim alone fails here), and a seat asked three times is never twice in
    one batch (its rivals ride later ones and lose to the winner)."""
    before = batch_sizes()
    settings = make_settings(database_url, None, key_prefix, **QUIET_BACKGROUND)
    async with running_gateway(settings) as gateway:
        answers = await storm([gateway], "one-worker")
    after = batch_sizes()

    assert Counter(r.status_code for _, r in answers) == {201: SEATS, 409: SEATS * (CONTENDERS_PER_SEAT - 1)}
    members = after.members - before.members
    batches = after.batches - before.batches
    assert members == SEATS * CONTENDERS_PER_SEAT  # db-only: every claim reached the committer
    assert batches < members / 2, (batches, members)
    assert after.alone - before.alone < batches  # some batch had several members


@pytest.fixture(name="pg_proxy")
async def fx_pg_proxy(database_url: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.in_front_of(database_url, protocol="postgres") as proxy:
        yield proxy


BATCH_SQL = b"WITH ORDINALITY AS r (hold_id"  # a piece of claim_holds_batch only


async def test_a_lost_reply_to_a_batch_resolves_every_member(
    pg_proxy: FaultProxy, database_url: str, key_prefix: str
) -> None:
    """The batch commits but its answer is lost: every member resolves by its own token (its claim run again
    finds the committed hold) and answers 201 naming the one hold Postgres has for it."""
    settings = make_settings(
        pg_proxy.url(database_url),
        None,
        key_prefix,
        **QUIET_BACKGROUND,
        claim_resolve_budget_s=10.0,
        claim_batches_in_flight=1,  # the first batch takes everything that arrived in the first pass
    )
    async with running_gateway(settings) as gateway:
        before = batch_sizes()
        pg_proxy.drop_reply(BATCH_SQL)
        count = 12
        barrier = asyncio.Barrier(count)

        async def one(i: int) -> httpx.Response:
            await barrier.wait()
            return await gateway.hold("lost", [f"L-{i}"], f"holder-{i}")

        answers = await asyncio.gather(*(one(i) for i in range(count)))
        after = batch_sizes()

    assert pg_proxy.commands_seen(BATCH_SQL) >= 1
    assert [a.status_code for a in answers] == [201] * count, [a.text for a in answers]
    rows = await fetch(database_url, "SELECT id, holder FROM holds WHERE event_id = 'lost'")
    assert {r["holder"]: r["id"] for r in rows} == {
        f"holder-{i}": a.json()["id"] for i, a in enumerate(answers)
    }
    assert after.alone - before.alone < after.batches - before.batches  # a batch had several members
    created = await fetch(database_url, "SELECT hold_id FROM hold_events WHERE type = 'hold.created'")
    assert sorted(r["hold_id"] for r in created) == sorted(r["id"] for r in rows)


def claim_request(event_id: str, seat: str, holder: str) -> ClaimRequest:
    return ClaimRequest(
        hold_id=secrets.token_urlsafe(16),
        token=secrets.token_hex(16),
        holder=holder,
        parts=[EventPart(event_id=event_id, seats=(seat,))],
        ttl_ms=60_000,
        idempotency_key=None,
        request_hash=None,
        client_key_id="",
    )


async def test_a_batch_that_deadlocks_runs_its_members_alone(database_url: str, key_prefix: str) -> None:
    """A batch takes over lapsed seats A then B while another session holds B and then asks for A: Postgres
    ends the batch as a deadlock victim (rolled back), and each member runs again alone with its same hold id
    and token, and gets its seat once the session is gone. Nothing of the failed batch remains."""
    dsn = database_url
    old = [claim_request("dl", seat, "old") for seat in ("A", "B")]
    conn = await asyncpg.connect(dsn)
    for request in old:  # two lapsed holds: their seat rows are still 'held', past expires_at
        await conn.execute(
            "INSERT INTO holds (id, token, event_id, holder, slots, status, created_at, expires_at) VALUES"
            " ($1, $2, 'dl', 'old', $3, 'held', now() - interval '1 hour', now() - interval '1 minute')",
            request.hold_id,
            request.token,
            [request.parts[0].seats[0]],
        )
        await conn.execute(
            "INSERT INTO hold_slots (hold_id, event_id, slot_id, status, expires_at)"
            " VALUES ($1, 'dl', $2, 'held', now() - interval '1 minute')",
            request.hold_id,
            request.parts[0].seats[0],
        )
    store = await Store.open(make_settings(dsn, None, key_prefix, claim_batches_in_flight=1))
    rival = await asyncpg.connect(dsn)
    try:
        await rival.execute("SET deadlock_timeout = '60s'")  # the batch, not the rival, is the victim
        rival_tx = rival.transaction()
        await rival_tx.start()
        await rival.execute("SELECT 1 FROM hold_slots WHERE event_id = 'dl' AND slot_id = 'B' FOR UPDATE")
        before = fallbacks()
        requests = [claim_request("dl", "A", "alice"), claim_request("dl", "B", "bob")]
        claims = asyncio.gather(*(store.claim(r) for r in requests))  # one pass: one batch

        async def batch_waits_for_b() -> bool:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%WITH ORDINALITY AS r (hold_id%'"
            )
            return bool(waiting)

        deadline = time.monotonic() + 30
        while not await batch_waits_for_b():
            assert time.monotonic() < deadline, "the batch never waited for seat B"
            await asyncio.sleep(0.02)
        # The rival now asks for A, which the batch holds: a cycle, which the batch's own check ends.
        await rival.execute("SELECT 1 FROM hold_slots WHERE event_id = 'dl' AND slot_id = 'A' FOR UPDATE")
        await eventually(lambda: fallbacks() > before, 30, "the batch never fell back")
        await rival_tx.commit()
        results = await asyncio.wait_for(claims, 30)
    finally:
        await rival.close()
        await store.close()

    assert [r.created for r in results] == [True, True]
    holds = await conn.fetch("SELECT id, holder, token FROM holds WHERE event_id = 'dl' AND holder <> 'old'")
    await conn.close()
    assert {(r["id"], r["holder"], r["token"]) for r in holds} == {
        (request.hold_id, request.holder, request.token) for request in requests
    }


async def test_winners_extensions_ride_together_and_each_lease_takes_its_holds_life(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """With Redis in front, the post-commit extensions of a storm's winners share extend.lua calls (fewer
    calls than winners, one member each), and every winner's lease then lives for its hold's TTL, far past
    the pending TTL its acquire gave it."""
    settings = make_settings(database_url, redis_url, key_prefix, **QUIET_BACKGROUND, create_concurrency=64)
    before = batch_sizes(metrics.EXTEND_BATCH_SIZE)
    async with running_gateway(settings) as gateway:
        answers = await storm([gateway], "xb")
    after = batch_sizes(metrics.EXTEND_BATCH_SIZE)
    winners = [seat for seat, r in answers if r.status_code == 201]

    assert len(winners) == SEATS
    assert after.members - before.members == SEATS
    assert after.batches - before.batches < SEATS
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        ttls = [await client.pttl(keys.slot_key(key_prefix, "xb", seat)) for seat in winners]
    finally:
        await client.aclose()
    assert all(ttl > settings.lease_pending_ms for ttl in ttls), ttls


async def test_a_storms_acquisitions_ride_together_and_are_judged_one_after_another(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """With Redis in front, the creates of a storm ask Redis in shared acquire.lua calls (fewer calls than
    creates); the script judges the members of a call in turn, so a seat's rivals in the very call that
    leased it are refused there: one winner per seat, and every loser turned away by Redis, none by
    Postgres."""
    settings = make_settings(database_url, redis_url, key_prefix, **QUIET_BACKGROUND, create_concurrency=64)
    async with running_gateway(settings) as gateway:
        # The event's first create has Redis synchronize it (and ask again): that is not the storm's.
        assert (await gateway.hold("ab", ["warm-up"], "someone")).status_code == 201
        before = batch_sizes(metrics.ACQUIRE_BATCH_SIZE)
        refused_before = metrics.HOLDS_REJECTED_BY_REDIS._value.get()
        refused_by_postgres_before = metrics.HOLDS_REJECTED_BY_POSTGRES._value.get()
        answers = await storm([gateway], "ab")
    after = batch_sizes(metrics.ACQUIRE_BATCH_SIZE)
    statuses = Counter(r.status_code for _, r in answers)

    assert statuses == {201: SEATS, 409: SEATS * (CONTENDERS_PER_SEAT - 1)}
    assert sorted(seat for seat, r in answers if r.status_code == 201) == sorted(
        f"S-{s}" for s in range(SEATS)
    )
    assert after.members - before.members == SEATS * CONTENDERS_PER_SEAT
    assert after.batches - before.batches < SEATS * CONTENDERS_PER_SEAT / 2
    assert metrics.HOLDS_REJECTED_BY_REDIS._value.get() - refused_before == SEATS * (CONTENDERS_PER_SEAT - 1)
    assert metrics.HOLDS_REJECTED_BY_POSTGRES._value.get() == refused_by_postgres_before
