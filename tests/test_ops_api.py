"""The operations reads: the holds listing, an event's slots, /v1/stats, and the ops token."""

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
import redis.asyncio as redis

from gateway import keys
from tests.conftest import make_settings
from tests.support import Gateway, running_gateway

NO_SWEEP = {"sweep_interval_s": 3600.0}
OPS_TOKEN = "ops-token-" + "s3cr3t" * 4


@pytest.fixture(name="unswept_gateway")
async def fx_unswept_gateway(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Gateway]:
    async with running_gateway(make_settings(database_url, redis_url, key_prefix, **NO_SWEEP)) as gateway:
        await asyncio.sleep(0.05)  # the sweeper's pass at start
        yield gateway


async def created(
    gateway: Gateway, event_id: str, slots: list[str], holder: str, ttl_s: int
) -> dict[str, str]:
    response = await gateway.hold(event_id, slots, holder=holder, ttl_seconds=ttl_s)
    assert response.status_code == 201, response.text
    hold: dict[str, str] = response.json()
    return hold


async def listed_ids(gateway: Gateway, query: str) -> list[str]:
    response = await gateway.client.get(f"/v1/holds?{query}")
    assert response.status_code == 200, response.text
    return [hold["id"] for hold in response.json()["holds"]]


async def test_listing_orders_by_expiry_and_filters(unswept_gateway: Gateway) -> None:
    gateway = unswept_gateway
    late = await created(gateway, "show-1", ["A-1"], "alice", 300)
    soon = await created(gateway, "show-1", ["A-2"], "bob", 30)
    other_event = await created(gateway, "show-2", ["A-1"], "alice", 120)
    confirmed = await created(gateway, "show-1", ["A-3"], "carol", 200)
    cancelled = await created(gateway, "show-1", ["A-4"], "dave", 100)
    lapsing = await created(gateway, "show-1", ["A-5"], "erin", 1)
    await gateway.client.post(f"/v1/holds/{confirmed['id']}/confirm", json={"holder": "carol"})
    await gateway.client.post(f"/v1/holds/{cancelled['id']}/cancel", json={"holder": "dave"})
    await asyncio.sleep(
        1.1
    )  # `lapsing` is past its expiry; the sweeper is off, so it is still 'held' in rows

    everything = (await gateway.client.get("/v1/holds")).json()
    assert [h["id"] for h in everything["holds"]] == [
        lapsing["id"],
        soon["id"],
        cancelled["id"],
        other_event["id"],
        confirmed["id"],
        late["id"],
    ]
    assert everything["next_cursor"] is None
    by_id = {h["id"]: h for h in everything["holds"]}
    assert by_id[lapsing["id"]]["status"] == "expired"
    assert by_id[lapsing["id"]]["ttl_ms"] is None
    assert 0 < by_id[soon["id"]]["ttl_ms"] <= 30_000

    assert await listed_ids(gateway, "status=held") == [soon["id"], other_event["id"], late["id"]]
    assert await listed_ids(gateway, "status=expired") == [lapsing["id"]]
    assert await listed_ids(gateway, "status=confirmed") == [confirmed["id"]]
    assert await listed_ids(gateway, "status=cancelled") == [cancelled["id"]]
    assert await listed_ids(gateway, "event_id=show-2") == [other_event["id"]]
    assert await listed_ids(gateway, "holder=alice&status=held") == [other_event["id"], late["id"]]
    assert await listed_ids(gateway, "expiring_within_seconds=60") == [soon["id"]]
    assert await listed_ids(gateway, "expiring_within_seconds=150&event_id=show-1") == [soon["id"]]


async def test_listing_pages_with_a_cursor_without_gaps_or_repeats(gateway: Gateway) -> None:
    # Holds created in one burst share expiry instants often enough to exercise the id tiebreak.
    responses = await asyncio.gather(*(gateway.hold("show-1", [f"S-{i}"], holder="h") for i in range(23)))
    assert {r.status_code for r in responses} == {201}
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "limit=5" + (f"&cursor={cursor}" if cursor else "")
        page = (await gateway.client.get(f"/v1/holds?{query}")).json()
        seen += [h["id"] for h in page["holds"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    everything = await listed_ids(gateway, "limit=100")
    assert pages == 5
    assert seen == everything
    assert sorted(seen) == sorted(r.json()["id"] for r in responses)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("status=active", "status"),
        ("event_id=has%20space", "event_id"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=WyJub3QtYS1kYXRlIiwiaWQiXQ", "cursor"),
        ("expiring_within_seconds=0", "expiring_within_seconds"),
        ("expiring_within_seconds=60&status=confirmed", "expiring_within_seconds"),
    ],
)
async def test_listing_rejects_bad_parameters_naming_them(gateway: Gateway, query: str, field: str) -> None:
    response = await gateway.client.get(f"/v1/holds?{query}")

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert f"`{field}`" in response.json()["detail"]


async def test_event_slots_show_each_slot_state_without_holders(unswept_gateway: Gateway) -> None:
    gateway = unswept_gateway
    held = await created(gateway, "show-1", ["B-2", "B-1"], "alice", 60)
    confirmed = await created(gateway, "show-1", ["C-1"], "bob", 60)
    cancelled = await created(gateway, "show-1", ["D-1"], "carol", 60)
    await created(gateway, "show-1", ["E-1"], "dave", 1)
    await created(gateway, "show-2", ["B-1"], "erin", 60)
    await gateway.client.post(f"/v1/holds/{confirmed['id']}/confirm", json={"holder": "bob"})
    await gateway.client.post(f"/v1/holds/{cancelled['id']}/cancel", json={"holder": "carol"})
    retaken = await created(gateway, "show-1", ["D-1"], "frank", 60)
    await asyncio.sleep(1.1)

    response = await gateway.client.get("/v1/events/show-1/slots")
    page = response.json()
    states = {s["slot_id"]: (s["state"], s["hold_id"]) for s in page["slots"]}

    assert response.status_code == 200
    assert "holder" not in response.text
    # Live slots only: E-1's hold lapsed, so it is free, and like any free slot it is not listed.
    assert [s["slot_id"] for s in page["slots"]] == ["B-1", "B-2", "C-1", "D-1"]
    assert states == {
        "B-1": ("held", held["id"]),
        "B-2": ("held", held["id"]),
        "C-1": ("confirmed", confirmed["id"]),
        "D-1": ("held", retaken["id"]),
    }
    b1 = page["slots"][0]
    assert 0 < b1["ttl_ms"] <= 60_000
    assert b1["expires_at"] == held["expires_at"]
    assert page["slots"][2]["ttl_ms"] is None

    free = (await gateway.client.get("/v1/events/show-1/slots?state=free")).json()
    confirmed_only = (await gateway.client.get("/v1/events/show-1/slots?state=confirmed")).json()
    first = (await gateway.client.get("/v1/events/show-1/slots?limit=2")).json()
    rest = (await gateway.client.get(f"/v1/events/show-1/slots?cursor={first['next_cursor']}")).json()
    bad_state = await gateway.client.get("/v1/events/show-1/slots?state=taken")

    assert free["slots"] == []
    assert [s["slot_id"] for s in confirmed_only["slots"]] == ["C-1"]
    assert [s["slot_id"] for s in first["slots"] + rest["slots"]] == ["B-1", "B-2", "C-1", "D-1"]
    assert rest["next_cursor"] is None
    assert bad_state.status_code == 422
    assert "`state`" in bad_state.json()["detail"]


async def test_stats_count_holds_and_the_sweeper_lag(unswept_gateway: Gateway, database_url: str) -> None:
    gateway = unswept_gateway
    await created(gateway, "show-1", ["A-1"], "alice", 5)
    await created(gateway, "show-1", ["A-2", "A-3"], "bob", 30)
    await created(gateway, "show-1", ["A-4"], "carol", 300)
    confirmed = await created(gateway, "show-1", ["A-5", "A-6"], "dave", 300)
    await created(gateway, "show-2", ["A-1"], "erin", 1)
    await gateway.client.post(f"/v1/holds/{confirmed['id']}/confirm", json={"holder": "dave"})
    await asyncio.sleep(1.2)  # show-2's hold lapses; the sweeper is off

    overall = (await gateway.client.get("/v1/stats")).json()
    show_1 = (await gateway.client.get("/v1/events/show-1/stats")).json()

    assert overall["holds"] == {
        "active": 3,
        "confirmed": 1,
        "confirmed_slots": 2,
        "expiring_within_10s": 1,
        "expiring_within_60s": 2,
        "expired_last_minute": 1,
    }
    assert show_1["event_id"] == "show-1"
    assert show_1["holds"]["expired_last_minute"] == 0
    assert show_1["holds"]["active"] == 3
    assert show_1["sweeper"] == {"lag_ms": 0, "oldest_lapsed_expires_at": None}
    assert overall["sweeper"]["lag_ms"] >= 150
    assert overall["sweeper"]["oldest_lapsed_expires_at"] is not None
    assert overall["mode"] == "redis-front"
    assert overall["mode_reason"] is None
    assert overall["round_trip_ms"]["postgres_ms"] > 0
    assert overall["round_trip_ms"]["redis_ms"] > 0
    # Live slots: show-1's A-1..A-6 (A-5, A-6 confirmed), each leased in Redis by its own hold.
    assert overall["agreement"] == {
        "checked_slots": 6,
        "complete": True,
        "leased": 6,
        "missing": 0,
        "other_token": 0,
    }
    generated = datetime.fromisoformat(overall["generated_at"])
    assert abs((generated - datetime.now(UTC)).total_seconds()) < 5


async def test_stats_agreement_sees_missing_and_foreign_leases(
    gateway: Gateway, redis_url: str, key_prefix: str
) -> None:
    await created(gateway, "show-1", ["A-1"], "alice", 60)
    await created(gateway, "show-1", ["A-2"], "bob", 60)
    await created(gateway, "show-1", ["A-3"], "carol", 60)
    client = redis.Redis.from_url(redis_url)
    try:
        await client.delete(keys.slot_key(key_prefix, "show-1", "A-1"))
        await client.set(keys.slot_key(key_prefix, "show-1", "A-2"), "0" * 32 + ":" + "f" * 16, px=60_000)
    finally:
        await client.aclose()

    agreement = (await gateway.client.get("/v1/events/show-1/stats")).json()["agreement"]

    assert agreement == {"checked_slots": 3, "complete": True, "leased": 1, "missing": 1, "other_token": 1}


async def test_stats_say_why_the_gateway_is_db_only(db_only_gateway: Gateway) -> None:
    stats = (await db_only_gateway.client.get("/v1/stats")).json()

    assert stats["mode"] == "db-only"
    assert stats["mode_reason"] == "redis not configured"
    assert stats["agreement"] is None
    assert stats["round_trip_ms"]["redis_ms"] is None


async def test_stats_counters_add_up_rejections_by_layer(gateway: Gateway, db_only_gateway: Gateway) -> None:
    before = (await gateway.client.get("/v1/stats")).json()["counters"]
    await created(gateway, "show-1", ["A-1"], "alice", 60)
    losers = await asyncio.gather(*(gateway.hold("show-1", ["A-1"], holder=f"l{i}") for i in range(5)))
    await created(db_only_gateway, "show-9", ["A-1"], "alice", 60)
    db_losers = await asyncio.gather(
        *(db_only_gateway.hold("show-9", ["A-1"], holder=f"l{i}") for i in range(3))
    )
    after = (await gateway.client.get("/v1/stats")).json()["counters"]

    assert {r.status_code for r in losers + db_losers} == {409}
    # One process serves both gateways here, so the counters hold both.
    assert after["holds_created"] - before["holds_created"] == 2
    assert after["rejected_by_redis"] - before["rejected_by_redis"] == 5
    assert after["rejected_by_postgres"] - before["rejected_by_postgres"] == 3


@pytest.fixture(name="either", params=["redis-front", "db-only"])
async def fx_either(
    request: pytest.FixtureRequest, database_url: str, redis_url: str, key_prefix: str
) -> AsyncIterator[Gateway]:
    """A gateway with Redis in front, or on Postgres alone: each refuses by reason in its own place."""
    redis_or_none = redis_url if request.param == "redis-front" else None
    async with running_gateway(make_settings(database_url, redis_or_none, key_prefix)) as gateway:
        yield gateway


def rejection_series(exposition: str) -> dict[str, int]:
    """The gateway_hold_rejections_total samples of /metrics, by their labels."""
    found = re.findall(r"^gateway_hold_rejections_total\{(.*)\} (\S+)$", exposition, re.MULTILINE)
    return {labels: int(float(value)) for labels, value in found}


async def test_stats_and_metrics_count_rejections_by_reason(either: Gateway) -> None:
    gateway = either
    inventory = {
        "seats": ["A-1", "A-2", "A-3", "A-4"],
        "pools": [{"pool_id": "floor", "capacity": 2}],
        "limits": {"per_holder": 2},
    }
    assert (await gateway.client.put("/v1/events/gig/inventory", json=inventory)).status_code == 200
    blocked = await gateway.client.post("/v1/events/gig/seats/block", json={"seats": ["A-3"]})
    assert blocked.status_code == 200, blocked.text
    before = (await gateway.client.get("/v1/stats")).json()["counters"]

    floor = {"event_id": "gig", "pool_id": "floor", "quantity": 2}
    assert (await gateway.post("/v1/holds", {"holder": "alice", "items": [floor]})).status_code == 201
    sold_out = await gateway.post("/v1/holds", {"holder": "bob", "items": [{**floor, "quantity": 1}]})
    on_blocked = await gateway.hold("gig", ["A-3"], holder="carol")
    assert (await gateway.hold("gig", ["A-1", "A-2"], holder="dave")).status_code == 201
    over_limit = await gateway.hold("gig", ["A-4"], holder="dave")
    after = (await gateway.client.get("/v1/stats")).json()["counters"]
    exposition = (await gateway.client.get("/metrics")).text

    assert [r.json()["type"].rpartition("/")[2] for r in (sold_out, on_blocked, over_limit)] == [
        "slot-unavailable",
        "slot-unavailable",
        "holder-limit",
    ]
    assert on_blocked.json()["conflicts"] == ["A-3"]
    reasons = ["rejected_taken", "rejected_sold_out", "rejected_holder_limit", "rejected_blocked"]
    assert {name: after[name] - before[name] for name in reasons} == {
        "rejected_taken": 0,
        "rejected_sold_out": 1,
        "rejected_holder_limit": 1,
        "rejected_blocked": 1,
    }
    assert after["holds_created"] - before["holds_created"] == 2
    # /metrics has the same totals, labelled by reason alone: never by event.
    assert rejection_series(exposition) == {
        'reason="taken"': after["rejected_taken"],
        'reason="sold_out"': after["rejected_sold_out"],
        'reason="holder_limit"': after["rejected_holder_limit"],
        'reason="blocked"': after["rejected_blocked"],
    }


@pytest.fixture(name="guarded_gateway")
async def fx_guarded_gateway(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Gateway]:
    settings = make_settings(database_url, redis_url, key_prefix, ops_token=OPS_TOKEN)
    async with running_gateway(settings) as gateway:
        yield gateway


OPS_ROUTES = ["/v1/holds", "/v1/stats", "/v1/events/show-1/stats", "/metrics", "/ops", "/ops/ops.js"]


@pytest.mark.parametrize("path", OPS_ROUTES)
async def test_ops_routes_need_the_token(guarded_gateway: Gateway, path: str) -> None:
    client = guarded_gateway.client
    basic = base64.b64encode(f"ops:{OPS_TOKEN}".encode()).decode()

    missing = await client.get(path)
    wrong = await client.get(path, headers={"Authorization": "Bearer " + OPS_TOKEN[:-1] + "x"})
    wrong_scheme = await client.get(path, headers={"Authorization": "Token " + OPS_TOKEN})
    bearer = await client.get(path, headers={"Authorization": "Bearer " + OPS_TOKEN})
    basic_auth = await client.get(path, headers={"Authorization": "Basic " + basic})

    for refused in (missing, wrong, wrong_scheme):
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert "Bearer" in refused.headers["www-authenticate"]
    assert bearer.status_code == 200
    assert basic_auth.status_code == 200


async def test_frontend_routes_stay_open_with_a_token(guarded_gateway: Gateway) -> None:
    """The ops token guards the operations routes only; the seat map is one, since it shows hold ids."""
    hold = await guarded_gateway.hold("show-1", ["A-1"])
    slot = await guarded_gateway.client.get("/v1/events/show-1/slots/A-1")
    read = await guarded_gateway.client.get(f"/v1/holds/{hold.json()['id']}")
    slots_anonymous = await guarded_gateway.client.get("/v1/events/show-1/slots")
    slots = await guarded_gateway.client.get(
        "/v1/events/show-1/slots", headers={"Authorization": f"Bearer {OPS_TOKEN}"}
    )

    assert hold.status_code == 201
    assert slot.status_code == 200
    assert read.status_code == 200
    assert slots_anonymous.status_code == 401
    assert slots.status_code == 200
    assert "holder" not in slots.text


async def test_ops_reads_use_their_indexes(database_url: str) -> None:
    """The listing and the seat map are keyset scans on their indexes, not scans of every hold."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET enable_seqscan = off")
        plans = [
            await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query}")
            for query in (
                "SELECT id FROM holds WHERE event_id = 'e' AND (expires_at, id) > (now(), 'x') "
                "ORDER BY expires_at, id LIMIT 10",
                "SELECT id FROM holds WHERE holder = 'h' ORDER BY expires_at, id LIMIT 10",
                "SELECT slot_id FROM hold_slots WHERE event_id = 'e' AND slot_id > 'a' "
                "ORDER BY slot_id LIMIT 10",
            )
        ]
    finally:
        await conn.close()
    assert "holds_event_id_expires_at_id_idx" in plans[0]
    assert "holds_holder_expires_at_id_idx" in plans[1]
    assert "hold_slots_event_id_slot_id_idx" in plans[2]
