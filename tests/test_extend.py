"""POST /v1/holds/{id}/extend: a live held hold's expiry moved to now + ttl_seconds, capped at created_at +
max_hold_lifetime_s, in Postgres (hold, seat rows, pool rows, the `hold.extended` event) and then in Redis
(leases and pool entries); refused whole otherwise. Both modes where the mode matters, real servers only."""

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from gateway import keys, sql
from gateway.chaos.proxy import FaultProxy
from tests.conftest import make_settings
from tests.support import Gateway, rejected_by, running_gateway, token_of, trusted_again
from tests.test_contract import HOLD_FIELDS, RFC3339_UTC
from tests.test_hostile_input import assert_problem
from tests.test_inventory import hold_items, pool, put_inventory
from tests.test_observability import delta, scrape
from tests.test_races import SecondSession, expiry, second_session, sleep_until
from tests.test_security import OPS_TOKEN, bearer, new_key

# Holds live 1 s to 60 s here; extensions are capped only by the default lifetime (2 hours).
TTL_RULES = {"min_ttl_s": 1, "max_ttl_s": 60, "default_ttl_s": 30}
# The cap where a test needs to reach it at once: a hold may live max_ttl_s from its creation, so asking for
# max_ttl_s from any later moment passes it.
CAPPED_RULES = {"min_ttl_s": 1, "max_ttl_s": 30, "default_ttl_s": 10, "max_hold_lifetime_s": 30}
NO_SWEEP = {"sweep_interval_s": 3600.0}
# Generous: a Redis call slowed down by a busy machine must not open the breaker and change the mode.
PATIENT_REDIS = {"redis_timeout_s": 3.0}


@pytest.fixture(name="either", params=["redis-front", "db-only"])
async def fx_either(
    request: pytest.FixtureRequest, database_url: str, redis_url: str, key_prefix: str
) -> AsyncIterator[Gateway]:
    """A gateway with Redis in front, or on Postgres alone; no sweeper (a lapsed hold stays `held` in its
    row, the harder case: every expiry below must hold without it)."""
    front = redis_url if request.param == "redis-front" else None
    settings = make_settings(database_url, front, key_prefix, **TTL_RULES, **NO_SWEEP, **PATIENT_REDIS)
    async with running_gateway(settings) as gateway:
        yield gateway


@pytest.fixture(name="capped", params=["redis-front", "db-only"])
async def fx_capped(
    request: pytest.FixtureRequest, database_url: str, redis_url: str, key_prefix: str
) -> AsyncIterator[Gateway]:
    """A gateway whose holds live at most 30 s from their creation, extensions included."""
    front = redis_url if request.param == "redis-front" else None
    settings = make_settings(database_url, front, key_prefix, **CAPPED_RULES, **NO_SWEEP, **PATIENT_REDIS)
    async with running_gateway(settings) as gateway:
        yield gateway


@pytest.fixture(name="fronted")
async def fx_fronted(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Gateway]:
    """Redis in front, no sweeper."""
    settings = make_settings(database_url, redis_url, key_prefix, **TTL_RULES, **NO_SWEEP, **PATIENT_REDIS)
    async with running_gateway(settings) as gateway:
        yield gateway


@pytest.fixture(name="session")
async def fx_session(database_url: str) -> AsyncIterator[SecondSession]:
    """A second Postgres session holding locks the gateway's statements need (see tests/test_races.py)."""
    async for session in second_session(database_url):
        yield session


def db_url(gateway: Gateway) -> str:
    return gateway.settings.database_url or ""


async def create(
    gateway: Gateway, slots: list[str], holder: str = "alice", ttl_s: int = 30
) -> dict[str, Any]:
    response = await gateway.post(
        "/v1/holds", {"event_id": "show-1", "slots": slots, "holder": holder, "ttl_seconds": ttl_s}
    )
    assert response.status_code == 201, response.text
    hold: dict[str, Any] = response.json()
    return hold


async def extend(
    gateway: Gateway, hold: dict[str, Any], ttl_s: object, holder: str | None = None, **headers: str
) -> httpx.Response:
    body = {"holder": hold["holder"] if holder is None else holder, "ttl_seconds": ttl_s}
    return await gateway.post(f"/v1/holds/{hold['id']}/extend", body, headers or None)


async def read(gateway: Gateway, hold: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = (await gateway.client.get(f"/v1/holds/{hold['id']}")).json()
    return body


async def db_clock(gateway: Gateway) -> datetime:
    conn = await asyncpg.connect(db_url(gateway))
    try:
        now: datetime = await conn.fetchval("SELECT clock_timestamp()")
    finally:
        await conn.close()
    return now


@dataclass(frozen=True)
class Stored:
    """A hold as Postgres keeps it: its row, the expiry of each of its seat and pool rows, its events."""

    expires_at: datetime
    extensions: int
    status: str
    seat_expiries: list[datetime]
    pool_expiries: list[datetime]
    extended_events: int  # `hold.extended` rows written for it, numbered or not


async def stored(gateway: Gateway, hold_id: str) -> Stored:
    conn = await asyncpg.connect(db_url(gateway))
    try:
        row = await conn.fetchrow("SELECT expires_at, extensions, status FROM holds WHERE id = $1", hold_id)
        seats = await conn.fetch(
            "SELECT expires_at FROM hold_slots WHERE hold_id = $1 ORDER BY event_id, slot_id", hold_id
        )
        pools = await conn.fetch(
            "SELECT expires_at FROM hold_pools WHERE hold_id = $1 ORDER BY event_id, pool_id", hold_id
        )
        events = await conn.fetchval(
            "SELECT count(*) FROM hold_events WHERE hold_id = $1 AND type = 'hold.extended'", hold_id
        )
    finally:
        await conn.close()
    assert row is not None, hold_id
    return Stored(
        row["expires_at"],
        row["extensions"],
        row["status"],
        [r["expires_at"] for r in seats],
        [r["expires_at"] for r in pools],
        events,
    )


async def feed_event(gateway: Gateway, hold_id: str, event_type: str, within_s: float = 30) -> dict[str, Any]:
    """The first event of this type for this hold in GET /v1/hold-events, waiting for it (long polls)."""
    cursor = "0"
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        response = await gateway.client.get(
            "/v1/hold-events", params={"after": cursor, "limit": 1000, "wait_seconds": 2}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        for event in page["events"]:
            if event["hold"]["id"] == hold_id and event["type"] == event_type:
                found: dict[str, Any] = event
                return found
        cursor = page["next_cursor"]
    raise AssertionError(f"no {event_type} for hold {hold_id} in the feed within {within_s} s")


# 1. What an extension does.


async def test_extend_moves_the_expiry_by_the_database_clock_and_counts_it(either: Gateway) -> None:
    """200 with the hold as GET shows it: expires_at is now + ttl_seconds by Postgres's clock (between the
    clock read before the request and after it), on the hold's row and its seat rows; `extensions` counts each
    extension; gateway_holds_extended_total counts it too."""
    gateway = either
    hold = await create(gateway, ["A-1", "A-2"], ttl_s=10)
    before_metrics = await scrape(gateway)

    clock_before = await db_clock(gateway)
    first = await extend(gateway, hold, 45)
    clock_between = await db_clock(gateway)
    second = await extend(gateway, hold, 50)
    clock_after = await db_clock(gateway)
    shown = await read(gateway, hold)
    kept = await stored(gateway, hold["id"])
    after_metrics = await scrape(gateway)

    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    body = first.json()
    assert set(body) == HOLD_FIELDS
    assert RFC3339_UTC.match(body["expires_at"]), body["expires_at"]
    first_expiry = datetime.fromisoformat(body["expires_at"])
    assert clock_before + timedelta(seconds=45) <= first_expiry <= clock_between + timedelta(seconds=45)
    assert (body["status"], body["extensions"], body["ttl_ms"]) == ("held", 1, 45_000)
    assert (body["id"], body["created_at"], body["slots"]) == (hold["id"], hold["created_at"], hold["slots"])
    second_expiry = datetime.fromisoformat(second.json()["expires_at"])
    assert clock_between + timedelta(seconds=50) <= second_expiry <= clock_after + timedelta(seconds=50)
    assert second.json()["extensions"] == 2
    # The answer is the hold as GET shows it (ttl_ms aside, which counts down).
    assert {k: v for k, v in shown.items() if k != "ttl_ms"} == {
        k: v for k, v in second.json().items() if k != "ttl_ms"
    }
    assert kept.expires_at == second_expiry
    assert kept.seat_expiries == [second_expiry, second_expiry]
    assert (kept.extensions, kept.extended_events) == (2, 2)
    assert delta(before_metrics, after_metrics, "gateway_holds_extended_total") == 2


async def test_an_extension_writes_hold_extended_with_the_new_expiry(either: Gateway) -> None:
    gateway = either
    hold = await create(gateway, ["A-1"], ttl_s=10)

    extended = await extend(gateway, hold, 40)
    event = await feed_event(gateway, hold["id"], "hold.extended")

    assert extended.status_code == 200, extended.text
    assert event["hold"]["expires_at"] == extended.json()["expires_at"]
    assert (event["hold"]["status"], event["hold"]["extensions"]) == ("held", 1)
    # Written at the moment the extension was judged: the new expiry is that moment + ttl_seconds.
    occurred_at = datetime.fromisoformat(event["occurred_at"])
    assert occurred_at + timedelta(seconds=40) == datetime.fromisoformat(extended.json()["expires_at"])
    assert event["hold"]["ttl_ms"] == 40_000


async def test_an_extension_may_move_the_expiry_earlier(either: Gateway) -> None:
    """now + ttl_seconds, as written: a hold of 60 s extended by 2 s now ends sooner, and its seat goes to a
    rival once that earlier expiry has passed."""
    gateway = either
    hold = await create(gateway, ["A-1"], ttl_s=60)

    shortened = await extend(gateway, hold, 2)
    new_expiry = datetime.fromisoformat(shortened.json()["expires_at"])

    assert shortened.status_code == 200, shortened.text
    assert new_expiry < expiry(hold) - timedelta(seconds=50)
    await sleep_until(new_expiry + timedelta(milliseconds=100))
    deadline = time.monotonic() + 30
    while (rival := await gateway.hold("show-1", ["A-1"], holder="bob")).status_code != 201:
        assert rival.status_code == 409, rival.text
        assert time.monotonic() < deadline, "the seat never came free after the earlier expiry"
        await asyncio.sleep(0.05)
    assert datetime.fromisoformat(rival.json()["created_at"]) >= new_expiry


# 2. The lifetime cap.


async def test_past_the_lifetime_cap_is_409_and_changes_nothing(capped: Gateway) -> None:
    """Holds live at most 30 s from creation here: asking for 30 s from any later moment is 409
    lifetime-exceeded with `max_expires_at` = created_at + 30 s, and nothing changes: not the hold, not its
    rows, not its Redis lease or pool entry, no event. An extension within the cap still works after."""
    gateway = capped
    assert (
        await put_inventory(
            gateway, "show-1", {"seats": ["A-1"], "pools": [{"pool_id": "floor", "capacity": 5}]}
        )
    ).status_code == 200
    created = await hold_items(
        gateway, [{"event_id": "show-1", "slots": ["A-1"]}, pool("show-1", "floor", 2)], ttl_seconds=10
    )
    assert created.status_code == 201, created.text
    hold = created.json()
    view = await RedisView.of(gateway, hold)
    try:
        before_metrics = await scrape(gateway)
        rows_before = await stored(gateway, hold["id"])
        redis_before = await view.expiries()
        refused = await extend(gateway, hold, 30)
        rows_after = await stored(gateway, hold["id"])
        redis_after = await view.expiries()
        shown_after = await read(gateway, hold)
        after_metrics = await scrape(gateway)
    finally:
        await view.close()
    within = await extend(gateway, hold, 20)
    still_refused = await extend(gateway, hold, 30)

    cap = datetime.fromisoformat(hold["created_at"]) + timedelta(seconds=30)
    assert_problem(refused, 409)
    problem = refused.json()
    assert problem["type"] == "/problems/lifetime-exceeded"
    assert RFC3339_UTC.match(problem["max_expires_at"]), problem
    assert datetime.fromisoformat(problem["max_expires_at"]) == cap
    assert rows_after == rows_before
    assert (rows_after.extensions, rows_after.extended_events) == (0, 0)
    assert redis_after.close_to(redis_before), (redis_before, redis_after)
    assert (shown_after["expires_at"], shown_after["extensions"]) == (hold["expires_at"], 0)
    assert delta(before_metrics, after_metrics, "gateway_holds_extended_total") == 0
    # 20 s from now is within the cap until 10 s after creation: 200; the cap stays where it was.
    assert within.status_code == 200, within.text
    assert datetime.fromisoformat(within.json()["expires_at"]) <= cap
    assert still_refused.status_code == 409, still_refused.text
    assert datetime.fromisoformat(still_refused.json()["max_expires_at"]) == cap


# 3. Who may extend what.


@pytest.mark.parametrize("ended", ["confirmed", "cancelled"])
async def test_a_confirmed_or_cancelled_hold_is_409_invalid_transition(either: Gateway, ended: str) -> None:
    gateway = either
    hold = await create(gateway, ["A-1"])
    verb = "confirm" if ended == "confirmed" else "cancel"
    assert (await gateway.post(f"/v1/holds/{hold['id']}/{verb}", {"holder": "alice"})).status_code == 200
    rows_before = await stored(gateway, hold["id"])

    response = await extend(gateway, hold, 40)

    assert_problem(response, 409)
    assert response.json()["type"] == "/problems/invalid-transition"
    assert response.json()["current_status"] == ended
    assert await stored(gateway, hold["id"]) == rows_before


async def test_a_lapsed_hold_is_409_expired_swept_or_not(either: Gateway) -> None:
    """Past expires_at the hold is over, whether or not the sweeper has marked it: 409 `expired` before the
    sweep (the row still says held) and after it; nothing changes, and the seat is free for a rival."""
    gateway = either
    hold = await create(gateway, ["A-1"], ttl_s=1)
    await sleep_until(expiry(hold) + timedelta(milliseconds=50))

    lapsed = await extend(gateway, hold, 40)
    rows_lapsed = await stored(gateway, hold["id"])
    conn = await asyncpg.connect(db_url(gateway))
    try:
        swept = await conn.fetchval(sql.EXPIRE_HOLDS, 100)
    finally:
        await conn.close()
    after_sweep = await extend(gateway, hold, 40)
    rival = await gateway.hold("show-1", ["A-1"], holder="bob")

    assert_problem(lapsed, 409)
    assert (lapsed.json()["type"], lapsed.json()["current_status"]) == (
        "/problems/invalid-transition",
        "expired",
    )
    assert (rows_lapsed.status, rows_lapsed.expires_at, rows_lapsed.extensions) == (
        "held",
        expiry(hold),
        0,
    )
    assert len(swept) == 1
    assert_problem(after_sweep, 409)
    assert after_sweep.json()["current_status"] == "expired"
    assert rival.status_code == 201, rival.text
    assert (await stored(gateway, hold["id"])).extended_events == 0


async def test_a_lapsed_hold_whose_seat_a_rival_took_is_409_expired(either: Gateway) -> None:
    gateway = either
    hold = await create(gateway, ["A-1", "A-2"], ttl_s=1)
    await sleep_until(expiry(hold) + timedelta(milliseconds=50))
    rival = await gateway.hold("show-1", ["A-2"], holder="bob")

    response = await extend(gateway, hold, 40)

    assert rival.status_code == 201, rival.text
    assert_problem(response, 409)
    assert response.json()["current_status"] == "expired"
    assert (await stored(gateway, hold["id"])).extensions == 0


async def test_another_holder_is_403_and_an_unknown_hold_404(either: Gateway) -> None:
    gateway = either
    hold = await create(gateway, ["A-1"])
    rows_before = await stored(gateway, hold["id"])

    other_holder = await extend(gateway, hold, 40, holder="mallory")
    unknown = await extend(gateway, {"id": "A" * 22, "holder": "alice"}, 40)
    malformed = await extend(gateway, {"id": "nope", "holder": "alice"}, 40)

    assert_problem(other_holder, 403)
    assert other_holder.json()["type"] == "/problems/not-holder"
    for response in (unknown, malformed):
        assert_problem(response, 404)
        assert response.json()["type"] == "/problems/hold-not-found"
    assert await stored(gateway, hold["id"]) == rows_before


async def test_with_client_keys_only_the_holds_own_key_extends_it(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The hold routes' key rules: no key 401, another key's hold 404 (even with the right holder), the ops
    token 401 (it reads holds, it changes none); the hold's own key 200."""
    settings = make_settings(database_url, redis_url, key_prefix, ops_token=OPS_TOKEN, **TTL_RULES)
    async with running_gateway(settings) as gateway:
        shop = await new_key(gateway, "shop")
        rival = await new_key(gateway, "rival")
        created = await gateway.post(
            "/v1/holds", {"event_id": "show-1", "slots": ["A-1"], "holder": "alice"}, bearer(shop["key"])
        )
        hold = created.json()
        anonymous = await extend(gateway, hold, 40)
        other_key = await extend(gateway, hold, 40, Authorization=f"Bearer {rival['key']}")
        ops = await extend(gateway, hold, 40, Authorization=f"Bearer {OPS_TOKEN}")
        untouched = await stored(gateway, hold["id"])
        own = await extend(gateway, hold, 40, Authorization=f"Bearer {shop['key']}")

    assert created.status_code == 201, created.text
    assert (anonymous.status_code, other_key.status_code, ops.status_code) == (401, 404, 401)
    assert anonymous.json()["type"] == "/problems/client-key-required"
    assert other_key.json()["type"] == "/problems/hold-not-found"
    assert untouched.extensions == 0
    assert own.status_code == 200, own.text
    assert own.json()["extensions"] == 1


BAD_TTLS = [
    pytest.param({"ttl_seconds": 0}, "ttl_seconds", id="below min"),
    pytest.param({"ttl_seconds": 61}, "ttl_seconds", id="above max"),
    pytest.param({"ttl_seconds": -30}, "ttl_seconds", id="negative"),
    pytest.param({"ttl_seconds": 10**20}, "ttl_seconds", id="huge"),
    pytest.param({"ttl_seconds": "30"}, "ttl_seconds", id="string"),
    pytest.param({"ttl_seconds": 30.5}, "ttl_seconds", id="float"),
    pytest.param({"ttl_seconds": True}, "ttl_seconds", id="bool"),
    pytest.param({"ttl_seconds": None}, "ttl_seconds", id="null"),
    pytest.param({}, "ttl_seconds", id="missing"),
    pytest.param({"ttl_seconds": 30, "ttl_ms": 30_000}, "ttl_ms", id="unknown field"),
]


@pytest.mark.parametrize(("fields", "named"), BAD_TTLS)
async def test_a_bad_ttl_is_422_naming_it_and_changes_nothing(
    either: Gateway, fields: dict[str, Any], named: str
) -> None:
    gateway = either
    hold = await create(gateway, ["A-1"])
    rows_before = await stored(gateway, hold["id"])

    response = await gateway.post(f"/v1/holds/{hold['id']}/extend", {"holder": "alice", **fields})

    assert_problem(response, 422, named)
    assert response.json()["type"] == "/problems/invalid-request"
    assert await stored(gateway, hold["id"]) == rows_before


# 4. Redis follows.


@dataclass(frozen=True)
class RedisExpiries:
    seat_ends_ms: list[int | None]  # each seat lease's end, by Redis's clock (None: no lease)
    pool_scores_ms: list[float | None]  # each pool entry's expiry score (None: no entry)

    def close_to(self, other: "RedisExpiries") -> bool:
        """The same expiries, give or take the rounding of reading them (1 s; extensions move them 20 s)."""
        pairs = [
            *zip(self.seat_ends_ms, other.seat_ends_ms, strict=True),
            *zip(self.pool_scores_ms, other.pool_scores_ms, strict=True),
        ]
        return all(
            (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1000)
            for a, b in pairs
        )


@dataclass(frozen=True)
class RedisView:
    """What Redis holds for one hold: its seat leases and pool entries (nothing without Redis)."""

    client: redis.Redis | None
    seat_keys: list[str]
    pool_keys: list[str]  # the pools' expiry sorted sets
    lease_value: str

    @classmethod
    async def of(cls, gateway: Gateway, hold: dict[str, Any]) -> "RedisView":
        settings = gateway.settings
        prefix = settings.redis_key_prefix
        seat_keys = [
            keys.slot_key(prefix, item["event_id"], slot)
            for item in hold["items"]
            for slot in item.get("slots") or []
        ]
        pool_keys = [
            keys.pool_expiry_key(prefix, item["event_id"], item["pool_id"])
            for item in hold["items"]
            if item.get("pool_id")
        ]
        client = (
            None
            if settings.redis_url is None
            else redis.Redis.from_url(settings.redis_url, decode_responses=True)
        )
        value = keys.lease_value(await token_of(gateway, hold["id"]), hold["holder"])
        return cls(client, seat_keys, pool_keys, value)

    async def expiries(self) -> RedisExpiries:
        if self.client is None:
            return RedisExpiries([], [])
        ends: list[int | None] = []
        for key in self.seat_keys:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.time()
                pipe.get(key)
                pipe.pttl(key)
                (seconds, micros), value, pttl = await pipe.execute()
            ends.append(
                seconds * 1000 + micros // 1000 + pttl if value == self.lease_value and pttl > 0 else None
            )
        scores = [await self.client.zscore(key, self.lease_value) for key in self.pool_keys]
        return RedisExpiries(ends, scores)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def test_the_seat_leases_and_pool_entries_follow_each_extension(fronted: Gateway) -> None:
    """A hold of a seat and 2 pool units: after each extension (later, then earlier) its seat lease in Redis
    ends, and its pool entry's expiry score lies, at the new expires_at or shortly before it (a lease ends a
    little before its hold: a rival in the gap asks Postgres), never at the old one."""
    gateway = fronted
    assert (
        await put_inventory(
            gateway, "show-1", {"seats": ["A-1"], "pools": [{"pool_id": "floor", "capacity": 5}]}
        )
    ).status_code == 200
    created = await hold_items(
        gateway, [{"event_id": "show-1", "slots": ["A-1"]}, pool("show-1", "floor", 2)], ttl_seconds=10
    )
    assert created.status_code == 201, created.text
    hold = created.json()
    view = await RedisView.of(gateway, hold)
    try:
        at_creation = await view.expiries()
        later = await extend(gateway, hold, 50)
        after_later = await view.expiries()
        earlier = await extend(gateway, hold, 20)
        after_earlier = await view.expiries()
    finally:
        await view.close()

    assert (later.status_code, earlier.status_code) == (200, 200), (later.text, earlier.text)
    for moment, seen in (
        (expiry(hold), at_creation),
        (datetime.fromisoformat(later.json()["expires_at"]), after_later),
        (datetime.fromisoformat(earlier.json()["expires_at"]), after_earlier),
    ):
        for end in [*seen.seat_ends_ms, *seen.pool_scores_ms]:
            assert end is not None, seen
            assert ms(moment) - 5000 < end <= ms(moment), (moment, seen)
    assert len(after_later.seat_ends_ms) == len(after_later.pool_scores_ms) == 1


async def test_an_extension_never_sets_again_a_lease_or_entry_that_was_released(fronted: Gateway) -> None:
    """Regression guard for a cancel overtaking an extension between its commit and its Redis step: the cancel
    releases the lease and the pool entry, and the extension's Redis step must not set them again (a lease
    of a cancelled hold would turn its seat's next buyers away for the extension's whole life). Here the
    release runs first, exactly as a cancel's (RedisFront.release); the extension then stretches only what
    is there: nothing."""
    gateway = fronted
    assert (
        await put_inventory(
            gateway, "show-1", {"seats": ["A-1"], "pools": [{"pool_id": "floor", "capacity": 5}]}
        )
    ).status_code == 200
    created = await hold_items(
        gateway, [{"event_id": "show-1", "slots": ["A-1"]}, pool("show-1", "floor", 2)], ttl_seconds=10
    )
    assert created.status_code == 201, created.text
    hold = created.json()
    front = gateway.service.front
    assert front is not None
    lease = front.lease("show-1", ["A-1"], await token_of(gateway, hold["id"]), "alice", [("floor", 2)])
    view = await RedisView.of(gateway, hold)
    try:
        held = await view.expiries()
        assert await front.release(lease) == 2  # the seat lease and the pool entry
        extended = await extend(gateway, hold, 50)
        after = await view.expiries()
    finally:
        await view.close()

    assert None not in [*held.seat_ends_ms, *held.pool_scores_ms], held
    assert extended.status_code == 200, extended.text
    assert after == RedisExpiries([None], [None])


async def test_a_redis_failure_after_the_commit_does_not_fail_the_extension(
    proxied_gateway: Gateway, redis_proxy: FaultProxy
) -> None:
    """Redis frozen when the extension's leases are stretched: the extension still answers 200 within the
    Redis budget, and Postgres has it. The lease left with its old life only sends a rival on to Postgres once
    it lapses, and Postgres refuses the rival: the seat stays the extended hold's."""
    gateway = proxied_gateway
    hold = await create(gateway, ["A-1"], ttl_s=2)
    redis_proxy.blackhole()
    started = time.monotonic()
    extended = await extend(gateway, hold, 30)
    took_s = time.monotonic() - started
    redis_proxy.heal()
    await trusted_again(gateway)
    await sleep_until(expiry(hold) + timedelta(milliseconds=200))

    status, by_redis, by_postgres = await rejected_by(gateway, gateway.hold("show-1", ["A-1"], holder="bob"))

    assert extended.status_code == 200, extended.text
    assert took_s < gateway.settings.redis_timeout_s + 2, took_s
    assert (await stored(gateway, hold["id"])).expires_at == datetime.fromisoformat(
        extended.json()["expires_at"]
    )
    assert status == 409
    assert by_redis + by_postgres == 1
    assert (await read(gateway, hold))["status"] == "held"


# 5. General admission.


async def test_an_extended_pool_hold_keeps_its_units_past_the_old_expiry(either: Gateway) -> None:
    """A hold of a pool's 2 units (of 2), extended from 3 s to 6 s at once: after the old expiry has passed by
    Postgres's clock, a rival asking for one unit is refused (by Redis, with Redis in front: the pool entry
    was stretched); the units come back only after the new expiry (the rival's hold is created after it)."""
    gateway = either
    assert (
        await put_inventory(gateway, "ga", {"pools": [{"pool_id": "floor", "capacity": 2}]})
    ).status_code == 200
    created = await hold_items(gateway, [pool("ga", "floor", 2)], ttl_seconds=3)
    assert created.status_code == 201, created.text
    hold = created.json()
    extended = await extend(gateway, hold, 6)
    assert extended.status_code == 200, extended.text
    new_expiry = datetime.fromisoformat(extended.json()["expires_at"])
    assert (await stored(gateway, hold["id"])).pool_expiries == [new_expiry]

    await sleep_until(expiry(hold) + timedelta(milliseconds=300))
    clock = await db_clock(gateway)
    status, by_redis, by_postgres = await rejected_by(
        gateway, hold_items(gateway, [pool("ga", "floor", 1)], holder="bob")
    )
    deadline = time.monotonic() + 30
    while (rival := await hold_items(gateway, [pool("ga", "floor", 2)], holder="bob")).status_code != 201:
        assert rival.status_code == 409, rival.text
        assert time.monotonic() < deadline, "the units never came back"
        await asyncio.sleep(0.05)

    assert expiry(hold) < clock < new_expiry
    assert status == 409
    fronted = gateway.settings.redis_url is not None
    assert (by_redis, by_postgres) == ((1, 0) if fronted else (0, 1))
    assert datetime.fromisoformat(rival.json()["created_at"]) >= new_expiry


# 6. Racing expiry.


async def test_extend_delayed_by_a_lock_until_after_expiry_is_409_expired(
    fronted: Gateway, session: SecondSession
) -> None:
    """The extension reaches Postgres before expires_at, but the test session holds the hold's row lock until
    after it: once it gets the lock the hold has lapsed, so 409 `expired`, nothing changed, and a rival gets
    the seat (201)."""
    gateway = fronted
    hold = await create(gateway, ["A-1"], ttl_s=1)
    await session.begin()
    await session.lock_hold(hold["id"])
    task = asyncio.create_task(extend(gateway, hold, 30))
    await session.until_waiting(1, also_done=task)
    await sleep_until(expiry(hold) + timedelta(milliseconds=50))
    await session.commit()
    response = await task
    rival = await gateway.hold("show-1", ["A-1"], holder="bob")

    assert_problem(response, 409)
    assert response.json()["current_status"] == "expired"
    kept = await stored(gateway, hold["id"])
    assert (kept.expires_at, kept.extensions, kept.extended_events) == (expiry(hold), 0, 0)
    assert rival.status_code == 201, rival.text


async def test_extend_delayed_until_a_rival_took_the_lapsed_seat_is_409_expired(
    fronted: Gateway, session: SecondSession
) -> None:
    """The extension waits on the hold's row lock past expires_at; meanwhile a rival takes the lapsed seat
    (a claim needs the seat row, not the hold's). The extension must not give the hold a seat another live
    hold owns: 409 `expired`, and the seat stays the rival's."""
    gateway = fronted
    hold = await create(gateway, ["A-1"], ttl_s=1)
    await session.begin()
    await session.lock_hold(hold["id"])
    task = asyncio.create_task(extend(gateway, hold, 30))
    await session.until_waiting(1, also_done=task)
    await sleep_until(expiry(hold) + timedelta(milliseconds=50))
    rival = await gateway.hold("show-1", ["A-1"], holder="bob")
    await session.commit()
    response = await task

    assert rival.status_code == 201, rival.text
    assert_problem(response, 409)
    assert response.json()["current_status"] == "expired"
    assert await live_holds(gateway) == {"A-1": [rival.json()["id"]]}


async def test_extend_that_gets_the_lock_before_expiry_wins_for_good(
    fronted: Gateway, session: SecondSession
) -> None:
    """The extension waits on the hold's row lock and gets it 300 ms before expires_at: 200. Past the old
    expiry the sweeper's expire query leaves the hold alone and a rival is refused."""
    gateway = fronted
    hold = await create(gateway, ["A-1"], ttl_s=1)
    await session.begin()
    await session.lock_hold(hold["id"])
    task = asyncio.create_task(extend(gateway, hold, 30))
    await session.until_waiting(1, also_done=task)
    await sleep_until(expiry(hold) - timedelta(milliseconds=300))
    await session.commit()
    response = await task
    await sleep_until(expiry(hold) + timedelta(milliseconds=50))
    swept = await session.conn.fetchval(sql.EXPIRE_HOLDS, 1000)
    rival = await gateway.hold("show-1", ["A-1"], holder="bob")

    assert response.status_code == 200, response.text
    assert swept == []
    assert rival.status_code == 409, rival.text
    assert await live_holds(gateway) == {"A-1": [hold["id"]]}


async def live_holds(gateway: Gateway) -> dict[str, list[str]]:
    """Seat -> the live holds on it (held and not lapsed, or confirmed), by their seat rows."""
    conn = await asyncpg.connect(db_url(gateway))
    try:
        rows = await conn.fetch(
            """
            SELECT slot_id, hold_id FROM hold_slots
            WHERE status = 'confirmed' OR (status = 'held' AND expires_at > clock_timestamp())
            ORDER BY slot_id, hold_id
            """
        )
    finally:
        await conn.close()
    seats: dict[str, list[str]] = {}
    for row in rows:
        seats.setdefault(row["slot_id"], []).append(row["hold_id"])
    return seats


@pytest.fixture(name="any_gateway", params=["redis-front", "db-only"])
async def fx_any_gateway(
    request: pytest.FixtureRequest, database_url: str, redis_url: str, key_prefix: str
) -> AsyncIterator[Gateway]:
    """Either mode, with the sweeper running as in production (it must leave an extended hold alone)."""
    front = redis_url if request.param == "redis-front" else None
    settings = make_settings(database_url, front, key_prefix, **TTL_RULES, **PATIENT_REDIS)
    async with running_gateway(settings) as gateway:
        yield gateway


def spread(first_s: float, last_s: float, count: int) -> list[float]:
    return [first_s + (last_s - first_s) * k / (count - 1) for k in range(count)]


# Each round fires at its hold's expires_at + its offset: 24 of them within 50 ms of it, 4 ms apart, where
# the two requests meet at the edge; 8 from 400 ms before and 8 to 200 ms after. A request that reaches
# Postgres late (a busy machine) only moves its round's outcome towards the rival, so the earliest rounds
# still see extensions win and the latest always see rivals win.
OFFSETS_S = [*spread(-0.4, -0.06, 8), *spread(-0.05, 0.05, 24), *spread(0.06, 0.2, 8)]
ROUNDS = len(OFFSETS_S)
ROUNDS_PER_S = 10
# A rival refused at the barrier asks again this long after the old expiry: by then the seat is free unless
# the extension won, so every round has exactly one winner, not also "both refused" (a rival that asked just
# before expiry, an extension that arrived just after).
RIVAL_AGAIN_AFTER = timedelta(milliseconds=300)


@dataclass(frozen=True)
class Round:
    hold_id: str
    offset_s: float
    extension: httpx.Response
    rival_at_barrier: httpx.Response
    rival_again: httpx.Response | None

    @property
    def rival_won(self) -> httpx.Response | None:
        for response in (self.rival_at_barrier, self.rival_again):
            if response is not None and response.status_code == 201:
                return response
        return None


async def test_extend_racing_a_rival_at_expiry_has_exactly_one_winner(any_gateway: Gateway) -> None:
    """40 rounds, each on a seat of its own: a hold of 1 s, then at its expiry (from 400 ms before to 200 ms
    after, most within 50 ms of it) an extension and a rival's claim of the seat released together behind a
    barrier; a rival refused asks again once the old expiry has passed. In every round exactly one wins: the
    extension (200, and every rival 409) or the rival (201, and the extension 409 `expired`); never both,
    never neither. Postgres then shows one live hold per seat, the winner's."""
    gateway = any_gateway

    async def one(k: int) -> Round:
        seat = f"R-{k}"
        hold = await create(gateway, [seat], holder=f"h{k}", ttl_s=1)
        await sleep_until(expiry(hold) + timedelta(seconds=OFFSETS_S[k]))
        barrier = asyncio.Barrier(2)

        async def extension() -> httpx.Response:
            await barrier.wait()
            return await extend(gateway, hold, 30)

        async def rival() -> httpx.Response:
            await barrier.wait()
            return await gateway.hold("show-1", [seat], holder=f"r{k}", ttl_seconds=30)

        extended, at_barrier = await asyncio.gather(extension(), rival())
        again = None
        if at_barrier.status_code != 201:
            await sleep_until(expiry(hold) + RIVAL_AGAIN_AFTER)
            again = await gateway.hold("show-1", [seat], holder=f"r{k}", ttl_seconds=30)
        return Round(hold["id"], OFFSETS_S[k], extended, at_barrier, again)

    tasks = []
    for k in range(ROUNDS):
        tasks.append(asyncio.create_task(one(k)))
        await asyncio.sleep(1 / ROUNDS_PER_S)
    rounds = await asyncio.gather(*tasks)
    seats = await live_holds(gateway)

    outcomes = Counter(
        (r.extension.status_code, r.rival_at_barrier.status_code, r.rival_again and r.rival_again.status_code)
        for r in rounds
    )
    print(f"outcomes (extension, rival at the barrier, rival again): {sorted(outcomes.items(), key=str)}")
    for k, r in enumerate(rounds):
        context = (
            k,
            r.offset_s,
            r.extension.text,
            r.rival_at_barrier.text,
            r.rival_again and r.rival_again.text,
        )
        assert r.extension.status_code in (200, 409), context
        assert r.rival_at_barrier.status_code in (201, 409), context
        won = r.rival_won
        assert (r.extension.status_code == 200) != (won is not None), context
        if won is None:
            assert seats[f"R-{k}"] == [r.hold_id], context
        else:
            assert r.extension.json()["current_status"] == "expired", context
            assert seats[f"R-{k}"] == [won.json()["id"]], context
    # The rounds straddled the expiry: each side won some.
    extensions_won = sum(r.extension.status_code == 200 for r in rounds)
    assert 0 < extensions_won < ROUNDS, outcomes
