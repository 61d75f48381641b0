"""Races with a forced order, then many random ones: confirm vs expiry, cancel vs confirm, idempotent retries.

The forced tests put a second Postgres session beside the gateway: it takes the lock that a confirm, cancel or
the sweeper's expire query needs, waits until the gateway's statement is seen waiting on that lock
(pg_stat_activity), lets the hold's expires_at pass (holds live 1 s: `min_ttl_s` is 1 in tests) and only then
lets go. So each side of a race runs at an exact point instead of at a lucky one.
"""

import asyncio
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from gateway import sql
from gateway.embedded import free_port
from gateway.keys import slot_key
from tests.conftest import make_settings
from tests.support import (
    Gateway,
    active_holds_per_slot,
    claim_args,
    hold_on_slot,
    redis_keys,
    released_together,
    row_counts,
    running_gateway,
    statuses,
)

HOLD_STATUSES = {"held", "confirmed", "cancelled", "expired"}  # the README's, and no other
NO_SWEEP = {"sweep_interval_s": 3600.0}


@pytest.fixture(name="forced_gateway")
async def fx_forced_gateway(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Gateway]:
    """A gateway with Redis in front whose own sweeper stays out of the way: in these tests the test session
    is the sweeper. (The locks these tests force are the same statements' in db-only mode; Redis in front
    adds the leases that a rival must get past, so that is the mode they run in, to keep the file fast.)"""
    async with running_gateway(make_settings(database_url, redis_url, key_prefix, **NO_SWEEP)) as gateway:
        await asyncio.sleep(0.05)  # the sweeper's first pass runs at start; let it finish
        yield gateway


@pytest.fixture(name="any_gateway", params=["redis-front", "db-only"])
def fx_any_gateway(request: pytest.FixtureRequest) -> Gateway:
    gateway: Gateway = request.getfixturevalue(
        "gateway" if request.param == "redis-front" else "db_only_gateway"
    )
    return gateway


def db_url(gateway: Gateway) -> str:
    return gateway.settings.database_url or ""


async def sleep_until(moment: datetime) -> None:
    await asyncio.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def expiry(hold: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(hold["expires_at"])


class SecondSession:
    """A Postgres session of the test's own, holding locks inside one transaction from `begin()` to
    `commit()`. Begin it only when needed: now() in it is the time of `begin()`."""

    def __init__(self, conn: asyncpg.Connection, observer: asyncpg.Connection) -> None:
        self.conn = conn
        self._observer = observer  # outside the transaction: pg_stat_activity is snapshotted per transaction
        self._transaction = conn.transaction()

    async def begin(self) -> None:
        await self._transaction.start()

    async def lock_hold(self, hold_id: str) -> None:
        """Take the hold row's lock, the first lock confirm and cancel need (their `target` CTE)."""
        assert await self.conn.fetchval("SELECT id FROM holds WHERE id = $1 FOR UPDATE", hold_id) == hold_id

    async def commit(self) -> None:
        await self._transaction.commit()

    async def until_waiting(self, count: int, also_done: asyncio.Task[Any] | None = None) -> None:
        """Return once `count` gateway statements wait on a lock held by this session."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            waiting = await self._observer.fetchval(
                """
                SELECT count(*) FROM pg_stat_activity
                WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> $1
                """,
                self.conn.get_server_pid(),
            )
            if waiting == count:
                return
            assert also_done is None or not also_done.done(), "the request finished instead of waiting"
            await asyncio.sleep(0.005)
        raise AssertionError(f"{count} statement(s) never waited on the test session's lock")


async def second_session(database_url: str) -> AsyncIterator[SecondSession]:
    conn = await asyncpg.connect(database_url)
    observer = await asyncpg.connect(database_url)
    session = SecondSession(conn, observer)
    try:
        yield session
    finally:
        await conn.close()  # an open transaction is rolled back
        await observer.close()


@pytest.fixture(name="session")
async def fx_session(database_url: str) -> AsyncIterator[SecondSession]:
    """A second Postgres session; a test calls `begin()` at the moment its now() must be taken."""
    async for session in second_session(database_url):
        yield session


def action(gateway: Gateway, hold: dict[str, Any], verb: str) -> "asyncio.Task[httpx.Response]":
    return asyncio.create_task(
        gateway.post(f"/v1/holds/{hold['id']}/{verb}", {"holder": hold["holder"]}), name=verb
    )


async def create(gateway: Gateway, slots: list[str], holder: str, ttl_seconds: int = 1) -> dict[str, Any]:
    response = await gateway.post(
        "/v1/holds", {"event_id": "race", "slots": slots, "holder": holder, "ttl_seconds": ttl_seconds}
    )
    assert response.status_code == 201, response.text
    hold: dict[str, Any] = response.json()
    return hold


async def read(gateway: Gateway, hold: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = (await gateway.client.get(f"/v1/holds/{hold['id']}")).json()
    return body


async def slot_state(gateway: Gateway, slot: str) -> dict[str, Any]:
    body: dict[str, Any] = (await gateway.client.get(f"/v1/events/race/slots/{slot}")).json()
    return body


async def leases(gateway: Gateway, slots: list[str]) -> list[str]:
    """The Redis lease keys of these slots that exist now (always none without Redis)."""
    settings = gateway.settings
    if settings.redis_url is None:
        return []
    wanted = {slot_key(settings.redis_key_prefix, "race", slot) for slot in slots}
    return [key for key in await redis_keys(settings.redis_url, settings.redis_key_prefix) if key in wanted]


# 1. Confirm racing expiry, both orders forced.


async def test_confirm_delayed_by_a_lock_until_after_expiry_is_409_expired(
    forced_gateway: Gateway, session: SecondSession
) -> None:
    """Confirm first, but made to wait: the confirm reaches Postgres 1 s before expires_at, the test session
    holds the hold's row lock until after expires_at. Meanwhile the hold reads `expired` and its slot `free`,
    so when the lock goes the confirm must find the hold lapsed: 409 `expired`, never a 200 that turns an
    expired hold back into a confirmed one. The slot stays free and a rival takes it (201)."""
    gateway = forced_gateway
    hold = await create(gateway, ["A-1"], "alice")
    await session.begin()
    await session.lock_hold(hold["id"])
    confirm = action(gateway, hold, "confirm")
    await session.until_waiting(1, also_done=confirm)

    await sleep_until(expiry(hold) + timedelta(milliseconds=50))
    read_while_waiting = await read(gateway, hold)
    slot_while_waiting = await slot_state(gateway, "A-1")
    await session.commit()
    confirmed = await confirm
    rival = await gateway.post("/v1/holds", {"event_id": "race", "slots": ["A-1"], "holder": "bob"})

    assert (read_while_waiting["status"], slot_while_waiting["state"]) == ("expired", "free")
    assert confirmed.status_code == 409, confirmed.text
    assert confirmed.json()["current_status"] == "expired"
    assert (await read(gateway, hold))["status"] == "expired"
    assert rival.status_code == 201, rival.text
    assert await active_holds_per_slot(db_url(gateway)) == {("race", "A-1"): 1}


async def test_cancel_delayed_by_a_lock_until_after_expiry_is_409_expired(
    forced_gateway: Gateway, session: SecondSession
) -> None:
    """The same for cancel: sent 1 s before expires_at, held back by the hold's row lock until after it. The
    hold has read `expired` meanwhile, and the README's cancel answers 409 when expired: 409 `expired`, and
    the hold stays expired (no `cancelled_at` stamped before a moment at which the hold was already gone)."""
    gateway = forced_gateway
    hold = await create(gateway, ["A-1"], "alice")
    await session.begin()
    await session.lock_hold(hold["id"])
    cancel = action(gateway, hold, "cancel")
    await session.until_waiting(1, also_done=cancel)

    await sleep_until(expiry(hold) + timedelta(milliseconds=50))
    read_while_waiting = await read(gateway, hold)
    await session.commit()
    cancelled = await cancel

    assert read_while_waiting["status"] == "expired"
    assert cancelled.status_code == 409, cancelled.text
    assert cancelled.json()["current_status"] == "expired"
    assert (await read(gateway, hold))["status"] == "expired"


async def test_confirm_delayed_until_a_rival_took_the_lapsed_slot_is_409_expired(
    forced_gateway: Gateway, session: SecondSession
) -> None:
    """Confirm first, made to wait on the hold's row lock past expires_at; meanwhile a rival claims the lapsed
    slot (the row lock does not stop a claim, which takes over the slot row). When the lock goes the confirm
    must not confirm a hold whose slot another live hold owns: 409 with current_status `expired` (the
    README's statuses for a 409 confirm are `expired` and `cancelled`), and the rival keeps the slot."""
    gateway = forced_gateway
    hold = await create(gateway, ["A-1"], "alice")
    await session.begin()
    await session.lock_hold(hold["id"])
    confirm = action(gateway, hold, "confirm")
    await session.until_waiting(1, also_done=confirm)

    await sleep_until(expiry(hold) + timedelta(milliseconds=50))
    rival = await gateway.post("/v1/holds", {"event_id": "race", "slots": ["A-1"], "holder": "bob"})
    await session.commit()
    confirmed = await confirm

    assert rival.status_code == 201, rival.text
    assert confirmed.status_code == 409, confirmed.text
    assert confirmed.json()["current_status"] == "expired", confirmed.json()
    assert (await read(gateway, hold))["status"] == "expired"
    assert await hold_on_slot(gateway, "race", "A-1") == rival.json()["id"]
    assert await active_holds_per_slot(db_url(gateway)) == {("race", "A-1"): 1}


async def test_confirm_that_gets_the_lock_just_before_expiry_wins_for_good(
    forced_gateway: Gateway, session: SecondSession
) -> None:
    """Confirm waits on the hold's row lock and gets it 150 ms before expires_at: it confirms (200). After
    expires_at has passed, the sweeper's expire query leaves the hold alone and a rival gets 409: a confirmed
    hold owns its slot for good."""
    gateway = forced_gateway
    hold = await create(gateway, ["A-1", "A-2"], "alice")
    await session.begin()
    await session.lock_hold(hold["id"])
    confirm = action(gateway, hold, "confirm")
    await session.until_waiting(1, also_done=confirm)

    await sleep_until(expiry(hold) - timedelta(milliseconds=150))
    await session.commit()
    confirmed = await confirm
    await sleep_until(expiry(hold) + timedelta(milliseconds=50))
    swept = await session.conn.fetchval(sql.EXPIRE_HOLDS, 1000)
    rival = await gateway.post("/v1/holds", {"event_id": "race", "slots": ["A-2"], "holder": "bob"})

    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "confirmed"
    assert swept == []
    assert rival.status_code == 409, rival.text
    assert rival.json()["conflicts"] == ["A-2"]
    assert (await read(gateway, hold))["status"] == "confirmed"
    assert (await slot_state(gateway, "A-1"))["state"] == "confirmed"
    assert await active_holds_per_slot(db_url(gateway)) == {("race", "A-1"): 1, ("race", "A-2"): 1}


async def test_sweeper_expires_first_then_the_waiting_confirm_is_409_expired(
    forced_gateway: Gateway, session: SecondSession
) -> None:
    """Expiry first: after expires_at the test session runs the sweeper's expire query (expire_holds) and
    keeps its transaction open, so the hold row stays locked; a confirm and a cancel sent now wait for it.
    Once it commits, both must answer 409 `expired`, and the slot is free for a rival (201)."""
    gateway = forced_gateway
    hold = await create(gateway, ["A-1"], "alice")
    await sleep_until(expiry(hold) + timedelta(milliseconds=50))

    await session.begin()
    swept = await session.conn.fetchval(sql.EXPIRE_HOLDS, 1000)
    confirm = action(gateway, hold, "confirm")
    await session.until_waiting(1, also_done=confirm)
    cancel = action(gateway, hold, "cancel")
    await session.until_waiting(2, also_done=cancel)
    await session.commit()
    confirmed, cancelled = await confirm, await cancel
    rival = await gateway.post("/v1/holds", {"event_id": "race", "slots": ["A-1"], "holder": "bob"})

    assert len(swept) == 1
    assert (confirmed.status_code, cancelled.status_code) == (409, 409)
    assert confirmed.json()["current_status"] == cancelled.json()["current_status"] == "expired"
    assert (await read(gateway, hold))["status"] == "expired"
    assert rival.status_code == 201, rival.text
    assert await active_holds_per_slot(db_url(gateway)) == {("race", "A-1"): 1}


async def test_rival_claim_commits_first_then_confirm_is_409_expired(
    forced_gateway: Gateway, session: SecondSession
) -> None:
    """Expiry first, through a takeover: after expires_at the test session runs the gateway's own claim query
    for a rival hold and keeps it uncommitted (the slot row is the rival's, locked). A confirm sent now must
    never end `confirmed` on a slot another live hold owns: 409 `expired`, and the slot is the rival's."""
    gateway = forced_gateway
    hold = await create(gateway, ["A-1"], "alice")
    await sleep_until(expiry(hold) + timedelta(milliseconds=50))

    rival_id = secrets.token_urlsafe(16)
    await session.begin()
    claim = await session.conn.fetchrow(
        sql.CLAIM_HOLD,
        *claim_args(rival_id, secrets.token_hex(16), "race", "bob", ["A-1"], 60_000, None, None, ""),
    )
    assert claim["created"], dict(claim)
    confirm = action(gateway, hold, "confirm")
    # The confirm waits on the slot row if it gets that far; seeing the hold lapsed, it may not.
    for _ in range(20):
        if confirm.done():
            break
        await asyncio.sleep(0.01)
    await session.commit()
    confirmed = await confirm

    assert confirmed.status_code == 409, confirmed.text
    assert confirmed.json()["current_status"] == "expired"
    assert (await read(gateway, hold))["status"] == "expired"
    assert await hold_on_slot(gateway, "race", "A-1") == rival_id
    assert await active_holds_per_slot(db_url(gateway)) == {("race", "A-1"): 1}


# 2. Cancel racing confirm, both orders forced.


async def test_confirm_then_cancel_forced_ends_cancelled_and_frees_the_slot(
    forced_gateway: Gateway, session: SecondSession
) -> None:
    """Confirm first: with the hold row locked by the test session, the confirm is sent and seen waiting, then
    the cancel is sent and seen waiting behind it; Postgres hands the lock over in that order. The confirm
    answers 200 `confirmed`, the cancel 200 `cancelled` (allowed from confirmed) with confirmed_at kept; the
    hold ends cancelled, no Redis lease is left on its slots and a rival takes them (201)."""
    gateway = forced_gateway
    hold = await create(gateway, ["A-1", "A-2"], "alice", ttl_seconds=60)
    await session.begin()
    await session.lock_hold(hold["id"])
    confirm = action(gateway, hold, "confirm")
    await session.until_waiting(1, also_done=confirm)
    cancel = action(gateway, hold, "cancel")
    await session.until_waiting(2, also_done=cancel)
    await session.commit()
    confirmed, cancelled = await confirm, await cancel

    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "confirmed"
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["confirmed_at"] == confirmed.json()["confirmed_at"]
    final = await read(gateway, hold)
    assert (final["status"], final["confirmed_at"]) == ("cancelled", confirmed.json()["confirmed_at"])
    assert await leases(gateway, ["A-1", "A-2"]) == []
    rival = await gateway.post("/v1/holds", {"event_id": "race", "slots": ["A-1", "A-2"], "holder": "bob"})
    assert rival.status_code == 201, rival.text
    assert await active_holds_per_slot(db_url(gateway)) == {("race", "A-1"): 1, ("race", "A-2"): 1}


async def test_cancel_then_confirm_forced_is_409_for_the_confirm(
    forced_gateway: Gateway, session: SecondSession
) -> None:
    """Cancel first: the cancel is sent and seen waiting on the test session's lock, then the confirm behind
    it. The cancel answers 200, the confirm 409 with current_status `cancelled`; the hold ends cancelled
    with no confirmed_at, no Redis lease is left and a rival takes the slots (201)."""
    gateway = forced_gateway
    hold = await create(gateway, ["A-1", "A-2"], "alice", ttl_seconds=60)
    await session.begin()
    await session.lock_hold(hold["id"])
    cancel = action(gateway, hold, "cancel")
    await session.until_waiting(1, also_done=cancel)
    confirm = action(gateway, hold, "confirm")
    await session.until_waiting(2, also_done=confirm)
    await session.commit()
    cancelled, confirmed = await cancel, await confirm

    assert cancelled.status_code == 200, cancelled.text
    assert confirmed.status_code == 409, confirmed.text
    assert confirmed.json()["type"] == "/problems/invalid-transition"
    assert confirmed.json()["current_status"] == "cancelled"
    final = await read(gateway, hold)
    assert (final["status"], final["confirmed_at"]) == ("cancelled", None)
    assert await leases(gateway, ["A-1", "A-2"]) == []
    rival = await gateway.post("/v1/holds", {"event_id": "race", "slots": ["A-2"], "holder": "bob"})
    assert rival.status_code == 201, rival.text
    assert await active_holds_per_slot(db_url(gateway)) == {("race", "A-2"): 1}


async def test_cancel_while_redis_is_unreachable_frees_the_slot_for_the_redis_front(
    database_url: str, key_prefix: str, gateway: Gateway
) -> None:
    """A confirmed hold (its Redis lease stretched to confirmed_lease_ms, an hour) is cancelled through a
    gateway that cannot reach Redis (its URL points at a closed port), as happens to any worker whose breaker
    is open. The cancel answers 200 and Postgres frees the slot; within two sweeps (sweep_interval_s is 1 s)
    the lease must be gone from Redis too and a rival served by the Redis-front gateway must get the slot
    (201), not a 409 from a lease of a cancelled hold for the rest of the hour."""
    hold = await create(gateway, ["A-1"], "alice", ttl_seconds=60)
    confirmed = await gateway.post(f"/v1/holds/{hold['id']}/confirm", {"holder": "alice"})
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    async with running_gateway(make_settings(database_url, nothing_listens, key_prefix)) as no_redis:
        cancelled = await no_redis.post(f"/v1/holds/{hold['id']}/cancel", {"holder": "alice"})

    for _ in range(int((2 * gateway.settings.sweep_interval_s + 0.5) / 0.05)):
        left = await leases(gateway, ["A-1"])
        if not left:
            break
        await asyncio.sleep(0.05)
    rival = await gateway.post("/v1/holds", {"event_id": "race", "slots": ["A-1"], "holder": "bob"})

    assert (confirmed.status_code, cancelled.status_code) == (200, 200), (confirmed.text, cancelled.text)
    assert (await read(gateway, hold))["status"] == "cancelled"
    assert left == [], "the cancelled hold's lease is still in Redis"
    assert rival.status_code == 201, rival.text


# 3. A thousand random races around expiry.


@dataclass
class Outcome:
    kind: str  # confirm | cancel | rival
    hold: int  # index of the original hold
    status: int
    body: dict[str, Any]
    slots: list[str]


RACES = 1000
# The client shares the gateway's event loop and the machine's cores (and sends on raw connections, see
# Gateway.post: httpx's client manages ~150 requests/s here). Holds are created at a steady rate so that the
# races around each expiry come at a rate the gateway answers on time; at most IN_FLIGHT requests are in
# flight at once, past which requests would wait for a database connection longer than db_acquire_timeout_s
# and be shed with 503 (the documented answer to overload, not a race).
CREATE_RATE_PER_S = 150
IN_FLIGHT = 64


@dataclass
class Plan:
    kind: str  # confirm | cancel | rival
    offset_s: float  # from the hold's expires_at
    slots: list[str]  # a rival's slots


async def test_a_thousand_random_races_around_expiry_keep_every_invariant(any_gateway: Gateway) -> None:
    """1,000 holds of 1 s, one or two slots each; for each, a random mix of confirm, cancel and one or two
    rival holds on some of its slots, each fired at a random offset within ±150 ms of its expires_at,
    concurrently (the sweeper runs too). Afterwards, from Postgres: at most one live hold per slot; every
    rival 201 is a stored hold on its slots; every confirm 200 is confirmed (or cancelled by a cancel that
    answered 200); every cancel 200 is cancelled; no 5xx and no answer outside the documented ones; no two
    winners per slot; and every slot that Postgres says is free can be taken at once (no stale Redis lease)
    while every taken one answers 409. The seed is printed; GATEWAY_RACE_SEED replays the same plan."""
    gateway = any_gateway
    seed = int(os.environ.get("GATEWAY_RACE_SEED") or random.randrange(2**32))
    print(f"race seed: {seed} (GATEWAY_RACE_SEED={seed} replays it)")
    rng = random.Random(seed)
    slot_sets = [[f"s{k}a", f"s{k}b"] if rng.random() < 0.3 else [f"s{k}a"] for k in range(RACES)]
    plans = [
        [
            Plan(kind, rng.uniform(-0.15, 0.15), rng.sample(slots, rng.randint(1, len(slots))))
            for kind in [k for k in ("confirm", "cancel", "rival", "rival") if rng.random() < 0.5]
            or ["rival"]
        ]
        for slots in slot_sets
    ]
    gate = asyncio.Semaphore(IN_FLIGHT)
    late_s: list[float] = []
    overdue = 0  # racing requests past their time, waiting for a place in flight
    caught_up = asyncio.Event()  # set while none is overdue
    caught_up.set()
    holds: list[dict[str, Any]] = [{} for _ in range(RACES)]

    async def post(path: str, body: dict[str, Any], due: datetime | None = None) -> httpx.Response:
        nonlocal overdue
        if due is not None:
            overdue += 1
            caught_up.clear()
        async with gate:
            if due is not None:
                overdue -= 1
                if not overdue:
                    caught_up.set()
                late_s.append((datetime.now(UTC) - due).total_seconds())
            return await gateway.post(path, body)

    async def fire(k: int, j: int, plan: Plan) -> Outcome:
        due = expiry(holds[k]) + timedelta(seconds=plan.offset_s)
        await sleep_until(due)
        if plan.kind == "rival":
            body = {"event_id": "race", "slots": plan.slots, "holder": f"r{k}-{j}", "ttl_seconds": 60}
            response = await post("/v1/holds", body, due)
        else:
            response = await post(f"/v1/holds/{holds[k]['id']}/{plan.kind}", {"holder": f"h{k}"}, due)
        return Outcome(plan.kind, k, response.status_code, response.json(), plan.slots)

    async def race(k: int) -> list[Outcome]:
        body = {"event_id": "race", "slots": slot_sets[k], "holder": f"h{k}", "ttl_seconds": 1}
        created = await post("/v1/holds", body)
        assert created.status_code == 201, (seed, created.text)
        holds[k] = created.json()
        return list(await asyncio.gather(*(fire(k, j, plan) for j, plan in enumerate(plans[k]))))

    started = time.monotonic()
    races: list[asyncio.Task[list[Outcome]]] = []
    next_at = started
    for k in range(RACES):
        # At most CREATE_RATE_PER_S, and slower while races are overdue: a slow (shared) machine then takes
        # longer instead of firing the races late, after the expiry they are meant to straddle.
        next_at = max(next_at + 1 / CREATE_RATE_PER_S, time.monotonic())
        await asyncio.sleep(next_at - time.monotonic())
        await caught_up.wait()
        races.append(asyncio.create_task(race(k)))
    outcomes = [o for mine in await asyncio.gather(*races) for o in mine]
    raced_s = time.monotonic() - started
    context = f"seed {seed}"
    answers = Counter((o.kind, o.status) for o in outcomes)
    late_s.sort()
    print(
        f"{len(outcomes)} racing requests over {RACES} holds in {raced_s:.1f} s; sent late by "
        f"p50 {late_s[len(late_s) // 2] * 1000:.0f} ms, p90 {late_s[len(late_s) * 9 // 10] * 1000:.0f} ms, "
        f"p99 {late_s[len(late_s) * 99 // 100] * 1000:.0f} ms; "
        f"answers {sorted(answers.items())}"
    )

    # The races straddled expiry: each side won some of them.
    assert all(answers[a] for a in (("confirm", 200), ("confirm", 409), ("rival", 201), ("rival", 409))), (
        context,
        answers,
    )
    # Answers: only the documented ones.
    allowed = {"confirm": {200, 409}, "cancel": {200, 409}, "rival": {201, 409}}
    bad = [(o.kind, o.status, o.body) for o in outcomes if o.status not in allowed[o.kind]]
    assert not bad, (context, bad[:5])
    for o in outcomes:
        if o.kind in ("confirm", "cancel") and o.status == 409:
            documented = {"expired", "cancelled"} if o.kind == "confirm" else {"expired"}
            assert o.body["current_status"] in documented, (context, o)
        if o.status in (200, 201):
            assert o.body["status"] in HOLD_STATUSES, (context, o)

    await sleep_until(max(expiry(h) for h in holds) + timedelta(milliseconds=100))
    conn = await asyncpg.connect(db_url(gateway))
    try:
        rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM holds")}
        stored_statuses = {r["status"] for r in await conn.fetch("SELECT DISTINCT status FROM hold_slots")}
    finally:
        await conn.close()
    assert {r["status"] for r in rows.values()} | stored_statuses <= HOLD_STATUSES, context

    per_slot = await active_holds_per_slot(db_url(gateway))
    assert set(per_slot.values()) <= {1}, (context, {s: n for s, n in per_slot.items() if n > 1})

    by_hold: dict[int, list[Outcome]] = {}
    for o in outcomes:
        by_hold.setdefault(o.hold, []).append(o)
    for k, hold in enumerate(holds):
        mine = by_hold.get(k, [])
        row = rows[hold["id"]]
        answered = {o.kind: o.status for o in mine if o.kind != "rival"}
        won_rivals = [o for o in mine if o.kind == "rival" and o.status == 201]
        for o in won_rivals:
            stored = rows.get(o.body["id"])
            assert stored is not None, (context, o)
            assert sorted(stored["slots"]) == sorted(o.slots), (context, o)
            assert stored["status"] == "held", (context, o)
        if answered.get("confirm") == 200:
            assert row["status"] == "confirmed" or (
                row["status"] == "cancelled" and answered.get("cancel") == 200
            ), (context, hold["id"], answered, row["status"])
            assert row["confirmed_at"] is not None, (context, hold["id"])
            # Cancel is allowed from confirmed; a cancel that lost to a confirm cannot have seen it expired.
            assert answered.get("cancel", 200) == 200, (context, hold["id"], answered)
        if answered.get("cancel") == 200:
            assert row["status"] == "cancelled", (context, hold["id"], answered, row["status"])
        if row["status"] == "confirmed":
            assert not won_rivals, (context, hold["id"], answered, won_rivals)
        # Two rivals on overlapping slots never both win.
        won_slots = [slot for o in won_rivals for slot in o.slots]
        assert len(won_slots) == len(set(won_slots)), (context, won_rivals)

    # Postgres and Redis agree: a slot free in Postgres can be taken now, a taken one cannot.
    all_slots = [slot for slots in slot_sets for slot in slots]

    async def probe(i: int) -> httpx.Response:
        body = {"event_id": "race", "slots": [all_slots[i]], "holder": "prober", "ttl_seconds": 60}
        return await gateway.post("/v1/holds", body)

    live = set(await active_holds_per_slot(db_url(gateway)))
    probes = await gather_limited(len(all_slots), probe, IN_FLIGHT)
    wrong = [
        (slot, p.status_code, p.text[:200])
        for slot, p in zip(all_slots, probes, strict=True)
        if p.status_code != (409 if ("race", slot) in live else 201)
    ]
    explained = [await explain(gateway, slot, rows, by_hold) for slot, _, _ in wrong[:5]]
    assert not wrong, (context, len(wrong), wrong[:5], explained)


async def explain(
    gateway: Gateway, slot: str, rows: dict[str, asyncpg.Record], by_hold: dict[int, list["Outcome"]]
) -> dict[str, Any]:
    """What the races did to a slot, and the Redis lease on it: whose token, how long it has left."""
    k = int(slot[1:-1])
    holds = [dict(r) for r in rows.values() if slot in r["slots"]]
    lease: tuple[Any, Any] | None = None
    settings = gateway.settings
    if settings.redis_url is not None:
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            key = slot_key(settings.redis_key_prefix, "race", slot)
            lease = (await client.get(key), await client.pttl(key))
        finally:
            await client.aclose()
    owner = [h["id"] for h in holds if lease and lease[0] and lease[0].startswith(h["token"])]
    return {
        "answers": [
            (o.kind, o.status, o.body.get("status") or o.body.get("current_status")) for o in by_hold[k]
        ],
        "holds": [(h["id"], h["holder"], h["status"], h["confirmed_at"], h["cancelled_at"]) for h in holds],
        "lease": lease,
        "lease_of": owner,
    }


async def gather_limited(count: int, request: Callable[[int], Awaitable[Any]], limit: int) -> list[Any]:
    """Run request(0..count-1) concurrently, at most `limit` at a time, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with gate:
            return await request(i)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


# 4. Idempotent retries.


async def test_fifty_concurrent_retries_with_one_key_create_one_hold(any_gateway: Gateway) -> None:
    """50 requests with one Idempotency-Key and the same body, released at once: one hold is created and every
    answer is 201 with its id (the README: a replay has the first response's status), 49 of them marked
    `Idempotent-Replayed: true`; Postgres has one hold and one idempotency record."""
    gateway = any_gateway
    body = {"event_id": "race", "slots": ["A-2", "A-1"], "holder": "alice", "ttl_seconds": 60}
    headers = {"Idempotency-Key": "order-50"}

    responses = await released_together(50, lambda _: gateway.post("/v1/holds", body, headers))

    assert statuses(responses) == {201: 50}, [r.text for r in responses if r.status_code != 201][:3]
    assert len({r.json()["id"] for r in responses}) == 1
    assert Counter(r.headers.get("idempotent-replayed") for r in responses) == {"true": 49, None: 1}
    assert await row_counts(db_url(gateway)) == {"holds": 1, "hold_slots": 2, "idempotency_keys": 1}
    assert await active_holds_per_slot(db_url(gateway)) == {("race", "A-1"): 1, ("race", "A-2"): 1}


async def test_same_key_with_another_body_is_422_and_writes_nothing(any_gateway: Gateway) -> None:
    """After a hold was created with a key, 20 concurrent requests reuse the key with other bodies (other
    slots, another TTL): each is 422 `idempotency-key-reused`, and nothing is written: the same rows in
    Postgres, the same keys in Redis, and the other slots free for anyone at once."""
    gateway = any_gateway
    settings = gateway.settings
    body = {"event_id": "race", "slots": ["A-1"], "holder": "alice", "ttl_seconds": 60}
    headers = {"Idempotency-Key": "order-1"}
    first = await gateway.post("/v1/holds", body, headers)
    rows_before = await row_counts(db_url(gateway))
    redis_url = settings.redis_url
    keys_before = (
        await redis_keys(settings.redis_url, settings.redis_key_prefix) if settings.redis_url else []
    )
    others = [{**body, "slots": [f"B-{i}"]} if i % 2 else {**body, "ttl_seconds": 30 + i} for i in range(20)]

    reused = await released_together(20, lambda i: gateway.post("/v1/holds", others[i], headers))

    assert first.status_code == 201
    assert statuses(reused) == {422: 20}, [r.text for r in reused][:3]
    assert {r.json()["type"] for r in reused} == {"/problems/idempotency-key-reused"}
    assert await row_counts(db_url(gateway)) == rows_before
    if redis_url:
        assert await redis_keys(redis_url, settings.redis_key_prefix) == keys_before
    for i in range(1, 20, 2):
        taken = await gateway.post("/v1/holds", {**body, "slots": [f"B-{i}"], "holder": "bob"})
        assert taken.status_code == 201, (i, taken.text)


async def test_reused_key_leaves_no_lease_when_redis_never_saw_the_first_request(
    database_url: str, key_prefix: str, gateway: Gateway
) -> None:
    """Regression guard: the first request with a key was served while Redis was unreachable, so only
    Postgres recorded the key. Reusing the key with another body through a gateway whose Redis is up must be
    422 and write nothing, in Redis either: no lease may be left on the other body's slot, which a rival
    must be able to take at once (201), not be turned away by Redis (409) for the pending lease's 5 s."""
    body = {"event_id": "race", "slots": ["A-1"], "holder": "alice", "ttl_seconds": 60}
    headers = {"Idempotency-Key": "order-1"}
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    async with running_gateway(make_settings(database_url, nothing_listens, key_prefix)) as no_redis:
        first = await no_redis.post("/v1/holds", body, headers)

    reused = await gateway.post("/v1/holds", {**body, "slots": ["B-1"]}, headers)
    left = await leases(gateway, ["B-1"])
    rival = await gateway.post("/v1/holds", {**body, "slots": ["B-1"], "holder": "bob"})

    assert first.status_code == 201, first.text
    assert reused.status_code == 422, reused.text
    assert reused.json()["type"] == "/problems/idempotency-key-reused"
    assert left == [], "the 422 left a pending lease on B-1"
    assert rival.status_code == 201, rival.text


async def test_retry_while_redis_is_unreachable_replays_the_committed_hold(
    database_url: str, key_prefix: str, gateway: Gateway
) -> None:
    """The first request commits through a gateway with Redis in front; 10 concurrent retries with the same
    key and body then reach a gateway whose Redis URL points at a closed port (db-only): each replays the
    same hold, 201 with `Idempotent-Replayed: true`, and Postgres still has one hold."""
    body = {"event_id": "race", "slots": ["A-1", "A-2"], "holder": "alice", "ttl_seconds": 60}
    headers = {"Idempotency-Key": "order-1"}
    first = await gateway.post("/v1/holds", body, headers)

    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    async with running_gateway(make_settings(database_url, nothing_listens, key_prefix)) as no_redis:
        mode = (await no_redis.client.get("/ready")).json()["mode"]
        retries = await released_together(10, lambda _: no_redis.post("/v1/holds", body, headers))

    assert first.status_code == 201, first.text
    assert mode == "db-only"
    assert statuses(retries) == {201: 10}, [r.text for r in retries][:3]
    assert {r.json()["id"] for r in retries} == {first.json()["id"]}
    assert {r.headers.get("idempotent-replayed") for r in retries} == {"true"}
    assert await row_counts(database_url) == {"holds": 1, "hold_slots": 2, "idempotency_keys": 1}
