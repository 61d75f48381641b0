"""The hold event feed: every committed state change of a hold has exactly one event, and nothing else has
one; `hold.expired` once per expired hold, whoever wrote it first; ids in commit order, so a reader following
the feed never misses an event; GET /v1/hold-events long-polls."""

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from gateway.config import Settings
from gateway.sweeper import sweep_once
from tests.conftest import make_settings
from tests.support import Gateway, running_gateway

# Long enough for any wait in these tests on a busy machine; the waits end as soon as their condition holds.
DEADLINE_S = 30.0


@pytest.fixture(name="feed_gateway", params=["redis-front", "db-only"])
async def fx_feed_gateway(
    request: pytest.FixtureRequest, database_url: str, redis_url: str, key_prefix: str
) -> AsyncIterator[Gateway]:
    redis = redis_url if request.param == "redis-front" else None
    settings = make_settings(database_url, redis, key_prefix, sweep_interval_s=0.2)
    async with running_gateway(settings) as gateway:
        yield gateway


async def feed_after(gateway: Gateway, after: int | str = 0, **params: Any) -> dict[str, Any]:
    response = await gateway.client.get(
        "/v1/hold-events", params={"after": str(after), **params}, timeout=DEADLINE_S + 35
    )
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def whole_feed(gateway: Gateway) -> list[dict[str, Any]]:
    """Every event numbered so far, in order."""
    events: list[dict[str, Any]] = []
    cursor = 0
    while True:
        page = await feed_after(gateway, cursor, limit=1000)
        events += page["events"]
        if not page["events"]:
            return events
        cursor = int(page["next_cursor"])


async def feed_until(gateway: Gateway, done: Any, what: str) -> list[dict[str, Any]]:
    """The whole feed, read again until `done(events)` holds (the sequencer numbers events within a pass)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        events = await whole_feed(gateway)
        if done(events):
            return events
        assert time.monotonic() < deadline, f"the feed never had {what}: {events[-10:]}"
        await asyncio.sleep(0.05)


async def unnumbered_and_all(database_url: str) -> tuple[int, int]:
    """hold_events rows not yet numbered, and all of them (committed)."""
    conn = await asyncpg.connect(database_url)
    try:
        record = await conn.fetchrow("SELECT count(*) FILTER (WHERE id IS NULL), count(*) FROM hold_events")
    finally:
        await conn.close()
    assert record is not None
    return record[0], record[1]


def seats_of(hold: dict[str, Any], event_id: str) -> list[str]:
    return [seat for item in hold["items"] if item["event_id"] == event_id for seat in item.get("slots", [])]


def types_of(events: list[dict[str, Any]], hold_id: str) -> list[str]:
    return [e["type"] for e in events if e["hold"]["id"] == hold_id]


async def sleep_until(moment: str) -> None:
    due = datetime.fromisoformat(moment)
    await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.05)


async def test_every_state_change_has_exactly_one_event_with_the_hold_as_get_shows_it(
    feed_gateway: Gateway,
) -> None:
    gateway = feed_gateway
    await gateway.client.put(
        "/v1/events/ga/inventory", json={"pools": [{"pool_id": "floor", "capacity": 10}]}
    )
    confirmed = (await gateway.hold("show-1", ["A-1", "A-2"], holder="alice")).json()
    cancelled = (await gateway.hold("show-1", ["A-3"], holder="bob")).json()
    expiring = (await gateway.hold("show-1", ["A-4"], holder="carol", ttl_seconds=1)).json()
    spanning = await gateway.post(
        "/v1/holds",
        {
            "holder": "dan",
            "items": [
                {"event_id": "ga", "pool_id": "floor", "quantity": 3},
                {"event_id": "show-2", "slots": ["B-1"]},
            ],
        },
    )
    assert spanning.status_code == 201, spanning.text
    keyed = await gateway.post(
        "/v1/holds", {"event_id": "show-1", "slots": ["A-5"], "holder": "erin"}, {"Idempotency-Key": "k-1"}
    )
    # Changes that are not changes: a retry replayed, a second confirm and a second cancel (200, unchanged).
    replayed = await gateway.post(
        "/v1/holds", {"event_id": "show-1", "slots": ["A-5"], "holder": "erin"}, {"Idempotency-Key": "k-1"}
    )
    assert replayed.status_code == 201
    assert replayed.headers["Idempotent-Replayed"] == "true"
    for _ in range(2):
        assert (
            await gateway.post(f"/v1/holds/{confirmed['id']}/confirm", {"holder": "alice"})
        ).status_code == 200
        assert (
            await gateway.post(f"/v1/holds/{cancelled['id']}/cancel", {"holder": "bob"})
        ).status_code == 200
    await sleep_until(expiring["expires_at"])

    events = await feed_until(
        gateway, lambda es: "hold.expired" in types_of(es, expiring["id"]), "the sweeper's hold.expired"
    )

    assert types_of(events, confirmed["id"]) == ["hold.created", "hold.confirmed"]
    assert types_of(events, cancelled["id"]) == ["hold.created", "hold.cancelled"]
    assert types_of(events, expiring["id"]) == ["hold.created", "hold.expired"]
    assert types_of(events, spanning.json()["id"]) == ["hold.created"]
    assert types_of(events, keyed.json()["id"]) == ["hold.created"]
    assert len(events) == 8
    assert [e["id"] for e in events] == list(range(events[0]["id"], events[0]["id"] + 8))
    assert {e["hold"]["id"] for e in events} == {
        confirmed["id"],
        cancelled["id"],
        expiring["id"],
        spanning.json()["id"],
        keyed.json()["id"],
    }
    # Each event's hold is the hold as GET showed it right after the change.
    by_type = {(e["hold"]["id"], e["type"]): e for e in events}
    now_confirmed = (await gateway.client.get(f"/v1/holds/{confirmed['id']}")).json()
    shown = by_type[confirmed["id"], "hold.confirmed"]["hold"]
    assert {k: v for k, v in shown.items() if k != "ttl_ms"} == {
        k: v for k, v in now_confirmed.items() if k != "ttl_ms"
    }
    assert by_type[confirmed["id"], "hold.confirmed"]["occurred_at"] == now_confirmed["confirmed_at"]
    created = by_type[cancelled["id"], "hold.created"]["hold"]
    assert created["status"] == "held"
    assert created["slots"] == ["A-3"]
    assert created["holder"] == "bob"
    assert 0 < created["ttl_ms"] <= 300_000
    assert by_type[cancelled["id"], "hold.cancelled"]["hold"]["status"] == "cancelled"
    assert by_type[expiring["id"], "hold.expired"]["hold"]["status"] == "expired"
    assert by_type[expiring["id"], "hold.expired"]["hold"]["ttl_ms"] is None
    assert by_type[spanning.json()["id"], "hold.created"]["hold"]["items"] == spanning.json()["items"]
    assert "token" not in shown
    assert set(shown) == set(now_confirmed)


async def test_a_refused_or_rolled_back_claim_writes_no_event(feed_gateway: Gateway) -> None:
    gateway = feed_gateway
    database_url = gateway.settings.database_url or ""
    await gateway.client.put(
        "/v1/events/ga/inventory",
        json={"pools": [{"pool_id": "floor", "capacity": 2}], "limits": {"per_holder": 2}},
    )
    taken = (await gateway.hold("show-1", ["A-2"], holder="alice")).json()
    pooled = await gateway.post(
        "/v1/holds", {"holder": "bob", "items": [{"event_id": "ga", "pool_id": "floor", "quantity": 2}]}
    )
    assert pooled.status_code == 201
    await feed_until(gateway, lambda es: len(es) == 2, "the two holds")
    before = await unnumbered_and_all(database_url)

    refused = [
        # A multi-seat claim whose second seat is taken: its first seat was claimed, then rolled back.
        await gateway.hold("show-1", ["A-1", "A-2"], holder="carol"),
        # A pool short of units, and a holder over the limit.
        await gateway.post(
            "/v1/holds",
            {
                "holder": "carol",
                "items": [
                    {"event_id": "show-1", "slots": ["A-9"]},
                    {"event_id": "ga", "pool_id": "floor", "quantity": 1},
                ],
            },
        ),
        await gateway.post(
            "/v1/holds", {"holder": "bob", "items": [{"event_id": "ga", "pool_id": "floor", "quantity": 1}]}
        ),
        await gateway.post(f"/v1/holds/{taken['id']}/confirm", {"holder": "mallory"}),
        await gateway.post(f"/v1/holds/{taken['id']}/cancel", {"holder": "mallory"}),
    ]
    await asyncio.sleep(0)

    assert [r.status_code for r in refused] == [409, 409, 409, 403, 403]
    assert await unnumbered_and_all(database_url) == before
    assert (await gateway.client.get("/v1/events/show-1/slots/A-1")).json()["state"] == "free"


async def test_hold_expired_is_written_once_whoever_comes_first(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The sweeper, and claims taking over the lapsed seats (two seats of one hold by two rivals at once: each
    writes the old hold's hold.expired) and pool units, race for every lapsed hold: each gets exactly one
    hold.expired, and the holds that ended otherwise none. Regression: with a unique index that made a claim
    wait on another's uncommitted hold.expired, two such rivals deadlocked (503)."""
    settings = make_settings(database_url, redis_url, key_prefix, sweep_interval_s=0.05)
    holds_n = 40
    async with running_gateway(settings) as gateway:
        await gateway.client.put(
            "/v1/events/ga/inventory", json={"pools": [{"pool_id": "floor", "capacity": holds_n}]}
        )
        lapsing: list[dict[str, Any]] = []
        for i in range(holds_n):
            body = {
                "holder": f"h{i}",
                "ttl_seconds": 1,
                "items": [
                    {"event_id": "race", "slots": [f"S{i}-a", f"S{i}-b"]},
                    {"event_id": "ga", "pool_id": "floor", "quantity": 1},
                ],
            }
            created = await gateway.post("/v1/holds", body)
            assert created.status_code == 201, created.text
            lapsing.append(created.json())
        ended = [(await gateway.hold("race", [f"E{i}"], holder=f"e{i}")).json() for i in range(4)]
        await gateway.post(f"/v1/holds/{ended[0]['id']}/confirm", {"holder": "e0"})
        await gateway.post(f"/v1/holds/{ended[1]['id']}/cancel", {"holder": "e1"})
        await gateway.post(f"/v1/holds/{ended[2]['id']}/confirm", {"holder": "e2"})
        await gateway.post(f"/v1/holds/{ended[2]['id']}/cancel", {"holder": "e2"})
        await sleep_until(max(h["expires_at"] for h in lapsing))

        def rivals(i: int) -> list[Any]:
            return [
                gateway.hold("race", [f"S{i}-a"], holder=f"ra{i}"),
                gateway.hold("race", [f"S{i}-b"], holder=f"rb{i}"),
                gateway.post(
                    "/v1/holds",
                    {"holder": f"rp{i}", "items": [{"event_id": "ga", "pool_id": "floor", "quantity": 1}]},
                ),
            ]

        order = list(range(holds_n))
        random.shuffle(order)
        answers = await asyncio.gather(*(call for i in order for call in rivals(i)))
        assert Counter(r.status_code for r in answers) == {201: 3 * holds_n}, [
            r.text for r in answers if r.status_code != 201
        ][:3]
        lapsed_ids = {h["id"] for h in lapsing}
        events = await feed_until(
            gateway,
            lambda es: {e["hold"]["id"] for e in es if e["type"] == "hold.expired"} >= lapsed_ids,
            "hold.expired for every lapsed hold",
        )
        # The sweeper has marked every one by now too: nothing left for a second copy to come from.
        conn = await asyncpg.connect(database_url)
        try:
            deadline = time.monotonic() + DEADLINE_S
            while await conn.fetchval(
                "SELECT count(*) FROM holds WHERE status = 'held' AND id = ANY($1)", list(lapsed_ids)
            ):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
        # ...and the sequencer has been through every copy it wrote.
        deadline = time.monotonic() + DEADLINE_S
        while (await unnumbered_and_all(database_url))[0]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        events = await whole_feed(gateway)

    expired = Counter(e["hold"]["id"] for e in events if e["type"] == "hold.expired")
    assert expired == dict.fromkeys(lapsed_ids, 1)
    for hold in ended:
        assert "hold.expired" not in types_of(events, hold["id"])
    # Each rival's hold.created comes after the hold.expired of the hold whose seat it took.
    position = {(e["hold"]["id"], e["type"]): e["id"] for e in events}
    for answer in answers:
        new = answer.json()
        if new["event_id"] == "race":
            old = next(h for h in lapsing if new["slots"][0] in seats_of(h, "race"))
            assert position[old["id"], "hold.expired"] < position[new["id"], "hold.created"]


async def test_a_reader_following_the_feed_under_concurrent_writers_misses_nothing(
    feed_gateway: Gateway,
) -> None:
    """Ids are given in commit order: a follower that long-polls from its cursor while 200 holds are made,
    confirmed and cancelled concurrently sees every event exactly once, in the feed's order."""
    gateway = feed_gateway
    seen: list[dict[str, Any]] = []
    writers_done = asyncio.Event()

    async def follow() -> None:
        cursor = 0
        while True:
            page = await feed_after(gateway, cursor, limit=50, wait_seconds=1)
            seen.extend(page["events"])
            cursor = int(page["next_cursor"])
            if writers_done.is_set() and not page["events"]:
                return

    async def write(i: int) -> None:
        created = await gateway.hold("flow", [f"F{i}"], holder=f"w{i}")
        assert created.status_code == 201
        action = ("confirm", "cancel")[i % 2]
        done = await gateway.post(f"/v1/holds/{created.json()['id']}/{action}", {"holder": f"w{i}"})
        assert done.status_code == 200

    follower = asyncio.create_task(follow())
    await asyncio.gather(*(write(i) for i in range(200)))
    final = await feed_until(gateway, lambda es: len(es) >= 400, "400 events")
    writers_done.set()
    await asyncio.wait_for(follower, DEADLINE_S)

    assert len(final) == 400
    assert seen == final
    assert [e["id"] for e in seen] == sorted(e["id"] for e in seen)
    for hold_id in {e["hold"]["id"] for e in final}:
        assert types_of(final, hold_id)[0] == "hold.created"


async def test_a_long_poll_returns_when_an_event_arrives_and_empty_after_its_wait(gateway: Gateway) -> None:
    head = await feed_after(gateway, 0)
    assert head == {"events": [], "next_cursor": "0"}

    started = time.monotonic()
    empty = await feed_after(gateway, 0, wait_seconds=0.5)
    waited_s = time.monotonic() - started
    assert empty == {"events": [], "next_cursor": "0"}
    assert waited_s >= 0.5

    waiting = asyncio.create_task(feed_after(gateway, 0, wait_seconds=30))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    created = (await gateway.hold("show-1", ["A-1"])).json()
    page = await asyncio.wait_for(waiting, DEADLINE_S)
    assert [(e["type"], e["hold"]["id"]) for e in page["events"]] == [("hold.created", created["id"])]
    assert page["next_cursor"] == str(page["events"][0]["id"])

    latest = await feed_after(gateway, "latest")
    assert latest == {"events": [], "next_cursor": page["next_cursor"]}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after": "-1"}, "after"),
        ({"after": "abc"}, "after"),
        ({"after": "1e3"}, "after"),
        ({"after": "9" * 30}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"wait_seconds": "31"}, "wait_seconds"),
        ({"wait_seconds": "-1"}, "wait_seconds"),
    ],
)
async def test_bad_feed_parameters_are_refused_naming_the_field(
    gateway: Gateway, params: dict[str, str], field: str
) -> None:
    response = await gateway.client.get("/v1/hold-events", params=params)
    assert response.status_code in {400, 422}, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in response.json()["detail"]


async def test_the_feed_requires_the_ops_token_when_one_is_set(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    token = "t" * 32
    settings: Settings = make_settings(database_url, redis_url, key_prefix, ops_token=token)
    async with running_gateway(settings) as gateway:
        refused = await gateway.client.get("/v1/hold-events")
        allowed = await gateway.client.get("/v1/hold-events", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401
    assert allowed.status_code == 200


async def test_events_past_their_retention_are_purged_and_newer_ones_kept(gateway: Gateway) -> None:
    old = (await gateway.hold("show-1", ["A-1"])).json()
    new = (await gateway.hold("show-1", ["A-2"])).json()
    await feed_until(gateway, lambda es: len(es) == 2, "both holds")
    conn = await asyncpg.connect(gateway.settings.database_url or "")
    try:
        await conn.execute(
            "UPDATE hold_events SET occurred_at = now() - $2 * interval '1 second' WHERE hold_id = $1",
            old["id"],
            gateway.settings.hold_events_retention_s + 60,
        )
    finally:
        await conn.close()

    await sweep_once(gateway.service.store, gateway.settings)

    assert [e["hold"]["id"] for e in await whole_feed(gateway)] == [new["id"]]
