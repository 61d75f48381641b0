"""Inventories: known seats, blocked seats, general-admission pools, buyer limits and multi-event holds, in
both modes, against real servers. Every guarantee gets a test that fails if it breaks: no pool oversold,
no holder over its limit, all or nothing across events, units back at once on cancel and on time at expiry."""

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest

from gateway import metrics
from tests.conftest import make_settings
from tests.support import Gateway, released_together, running_gateway, statuses


@pytest.fixture(name="either", params=["redis-front", "db-only"])
async def fx_either(
    request: pytest.FixtureRequest, database_url: str, redis_url: str, key_prefix: str
) -> AsyncIterator[Gateway]:
    """A gateway with Redis in front, or on Postgres alone; the sweeper kept out of the way (every expiry
    below must happen without it)."""
    redis = redis_url if request.param == "redis-front" else None
    settings = make_settings(database_url, redis, key_prefix, sweep_interval_s=3600.0, redis_timeout_s=3.0)
    async with running_gateway(settings) as gateway:
        yield gateway


async def put_inventory(gateway: Gateway, event_id: str, body: dict[str, Any]) -> httpx.Response:
    return await gateway.client.put(f"/v1/events/{event_id}/inventory", json=body)


async def hold_items(
    gateway: Gateway, items: list[dict[str, Any]], holder: str = "alice", **extra: Any
) -> httpx.Response:
    return await gateway.post("/v1/holds", {"holder": holder, "items": items, **extra})


def pool(event_id: str, pool_id: str, quantity: int) -> dict[str, Any]:
    return {"event_id": event_id, "pool_id": pool_id, "quantity": quantity}


async def live_pool_units(database_url: str) -> dict[tuple[str, str], int]:
    """(event, pool) -> units of live holds (held and not lapsed, or confirmed), per Postgres's rows."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """
            SELECT hp.event_id, hp.pool_id, sum(hp.quantity) AS units
            FROM hold_pools AS hp JOIN holds AS h ON h.id = hp.hold_id
            WHERE h.status = 'confirmed' OR (h.status = 'held' AND h.expires_at > now())
            GROUP BY hp.event_id, hp.pool_id
            """
        )
    finally:
        await conn.close()
    return {(r["event_id"], r["pool_id"]): r["units"] for r in rows}


async def test_an_inventory_is_defined_read_back_and_replaced_atomically(either: Gateway) -> None:
    body = {
        "seats": ["A-2", "A-1", "A-3"],
        "pools": [{"pool_id": "floor", "capacity": 5}, {"pool_id": "balcony", "capacity": 2}],
        "limits": {"per_holder": 4, "per_hold": 3},
    }
    put = await put_inventory(either, "gig", body)
    assert put.status_code == 200, put.text
    assert put.json() == {
        "event_id": "gig",
        "seats_total": 3,
        "pools": [{"pool_id": "floor", "capacity": 5}, {"pool_id": "balcony", "capacity": 2}],
        "limits": {"per_holder": 4, "per_hold": 3},
    }
    got = (await either.client.get("/v1/events/gig/inventory")).json()
    assert got["seats"] == ["A-1", "A-2", "A-3"]
    assert got["blocked"] == []
    assert (await either.client.get("/v1/events/other/inventory")).status_code == 404

    held = await hold_items(either, [{"event_id": "gig", "slots": ["A-1"]}, pool("gig", "floor", 2)])
    assert held.status_code == 201, held.text
    # Dropping the held seat, or shrinking the pool under its held units, is refused whole, naming them.
    refused = await put_inventory(
        either, "gig", {"seats": ["A-2"], "pools": [{"pool_id": "floor", "capacity": 1}]}
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"].endswith("/inventory-in-use")
    assert refused.json()["seats"] == ["A-1"]
    assert refused.json()["pools"] == ["floor"]
    assert (await either.client.get("/v1/events/gig/inventory")).json() == got
    # A replacement that keeps what is held goes through.
    kept = await put_inventory(
        either, "gig", {"seats": ["A-1", "B-1"], "pools": [{"pool_id": "floor", "capacity": 2}]}
    )
    assert kept.status_code == 200, kept.text
    assert (await either.client.get("/v1/events/gig/availability")).status_code == 200


async def test_unknown_seats_and_pools_are_refused_and_open_events_stay_open(either: Gateway) -> None:
    assert (
        await put_inventory(either, "gig", {"seats": ["A-1"], "pools": [{"pool_id": "floor", "capacity": 5}]})
    ).status_code == 200

    unknown_seat = await hold_items(either, [{"event_id": "gig", "slots": ["Z-9"]}])
    unknown_pool = await hold_items(either, [pool("gig", "pit", 1)])
    old_form_unknown = await either.hold("gig", ["Z-9"])
    assert [r.status_code for r in (unknown_seat, unknown_pool, old_form_unknown)] == [422, 422, 422]
    assert "Z-9" in unknown_seat.json()["detail"]
    assert "pit" in unknown_pool.json()["detail"]
    assert (await either.client.get("/v1/events/gig/slots/Z-9")).status_code == 404
    # An event with no inventory takes any seat id, as before.
    assert (await either.hold("open-show", ["Q-17"])).status_code == 201
    assert (await either.client.get("/v1/events/open-show/availability")).status_code == 404


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([{"event_id": "e", "slots": ["A-1"], "pool_id": "p", "quantity": 1}], "items[0]"),
        ([{"event_id": "e", "pool_id": "p", "quantity": 0}], "items[0].quantity"),
        ([{"event_id": "e", "slots": ["A-1"]}, {"event_id": "e", "slots": ["A-1"]}], "items[1].slots"),
        ([pool("e", "p", 1), pool("e", "p", 2)], "items[1].pool_id"),
        ([{"event_id": "e"}], "items[0]"),
        ([pool("e", f"p{i}", 1) for i in range(21)], "items"),
    ],
)
async def test_malformed_items_are_refused_naming_the_field(
    gateway: Gateway, items: list[dict[str, Any]], field: str
) -> None:
    response = await hold_items(gateway, items)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"], response.json()["detail"]


async def test_mixing_the_two_forms_is_refused(gateway: Gateway) -> None:
    response = await gateway.post(
        "/v1/holds", {"holder": "alice", "event_id": "e", "slots": ["A-1"], "items": [pool("e", "p", 1)]}
    )
    assert response.status_code == 422, response.text


async def test_a_pool_is_never_oversold_by_concurrent_quantity_holds(either: Gateway) -> None:
    capacity = 25
    assert (
        await put_inventory(either, "ga", {"pools": [{"pool_id": "floor", "capacity": capacity}]})
    ).status_code == 200

    responses = await released_together(
        120, lambda i: hold_items(either, [pool("ga", "floor", 1 + i % 3)], holder=f"u{i}")
    )

    granted = sum(r.json()["items"][0]["quantity"] for r in responses if r.status_code == 201)
    assert statuses(responses).keys() <= {201, 409}
    assert capacity - 2 <= granted <= capacity  # at most what is left fits no request of 3
    assert (await live_pool_units(either.settings.database_url or ""))[("ga", "floor")] == granted
    refused = next(r for r in responses if r.status_code == 409).json()
    assert refused["type"].endswith("/slot-unavailable")
    assert refused["conflicts"] == []
    (short,) = refused["unavailable"]
    assert short["event_id"] == "ga"
    assert short["pool_id"] == "floor"
    assert short["available"] < short["requested"]


async def test_a_multi_event_hold_is_all_or_nothing(either: Gateway) -> None:
    for event_id in ("day-1", "day-2"):
        body = {"seats": ["A-1", "A-2"], "pools": [{"pool_id": "floor", "capacity": 2}]}
        assert (await put_inventory(either, event_id, body)).status_code == 200
    assert (await hold_items(either, [pool("day-2", "floor", 2)], holder="bob")).status_code == 201

    both = [{"event_id": "day-1", "slots": ["A-1"]}, pool("day-1", "floor", 1), pool("day-2", "floor", 1)]
    refused = await hold_items(either, both)
    assert refused.status_code == 409, refused.text
    assert refused.json()["unavailable"] == [
        {"event_id": "day-2", "pool_id": "floor", "requested": 1, "available": 0}
    ]
    # Nothing of day-1 was kept: its seat and its units are still there for anyone.
    rival = await hold_items(
        either, [{"event_id": "day-1", "slots": ["A-1"]}, pool("day-1", "floor", 2)], holder="carol"
    )
    assert rival.status_code == 201, rival.text

    pass_ = await hold_items(
        either, [{"event_id": "day-2", "slots": ["A-1"]}, {"event_id": "day-1", "slots": ["A-2"]}]
    )
    assert pass_.status_code == 201, pass_.text
    hold = pass_.json()
    assert hold["event_id"] is None
    assert hold["slots"] == []
    assert hold["items"] == [{"event_id": "day-1", "slots": ["A-2"]}, {"event_id": "day-2", "slots": ["A-1"]}]
    cancelled = await either.post(f"/v1/holds/{hold['id']}/cancel", {"holder": "alice"})
    assert cancelled.status_code == 200
    assert (await either.hold("day-1", ["A-2"], holder="dave")).status_code == 201


async def test_the_holder_limit_holds_under_concurrency(either: Gateway) -> None:
    limits = {"per_holder": 4, "per_hold": 3}
    assert (
        await put_inventory(
            either, "ga", {"pools": [{"pool_id": "floor", "capacity": 1000}], "limits": limits}
        )
    ).status_code == 200

    responses = await released_together(
        50, lambda _: hold_items(either, [pool("ga", "floor", 1)], holder="scalper")
    )

    assert statuses(responses) == {201: 4, 409: 46}
    assert (await live_pool_units(either.settings.database_url or ""))[("ga", "floor")] == 4
    refused = next(r for r in responses if r.status_code == 409).json()
    assert refused["type"].endswith("/holder-limit")
    assert (refused["event_id"], refused["limit"], refused["held"], refused["requested"]) == ("ga", 4, 4, 1)
    over_per_hold = await hold_items(either, [pool("ga", "floor", 4)], holder="someone")
    assert over_per_hold.status_code == 422, over_per_hold.text
    # Another holder is not affected.
    assert (await hold_items(either, [pool("ga", "floor", 3)], holder="fan")).status_code == 201


async def test_blocked_seats_cannot_be_held_and_held_seats_cannot_be_blocked(either: Gateway) -> None:
    assert (await put_inventory(either, "hall", {"seats": ["A-1", "A-2", "A-3"]})).status_code == 200
    assert (await either.hold("hall", ["A-3"])).status_code == 201

    blocked = await either.client.post(
        "/v1/events/hall/seats/block", json={"seats": ["A-1"], "reason": "broken"}
    )
    assert blocked.status_code == 200, blocked.text
    assert blocked.json() == {"event_id": "hall", "changed": 1, "blocked_total": 1}
    again = await either.client.post("/v1/events/hall/seats/block", json={"seats": ["A-1"]})
    assert again.json()["changed"] == 0
    in_use = await either.client.post("/v1/events/hall/seats/block", json={"seats": ["A-2", "A-3"]})
    assert in_use.status_code == 409
    assert in_use.json()["seats"] == ["A-3"]
    outside = await either.client.post("/v1/events/hall/seats/block", json={"seats": ["Z-1"]})
    assert outside.status_code == 422

    refused = await either.hold("hall", ["A-1", "A-2"], holder="bob")
    assert refused.status_code == 409, refused.text
    assert refused.json()["conflicts"] == ["A-1"]
    assert refused.json()["unavailable"] == [{"event_id": "hall", "slot_id": "A-1"}]
    assert (await either.client.get("/v1/events/hall/slots/A-1")).json()["state"] == "blocked"
    assert (await either.client.get("/v1/events/hall/slots/A-2")).json()["state"] == "free"

    unblocked = await either.client.post("/v1/events/hall/seats/unblock", json={"seats": ["A-1"]})
    assert unblocked.json() == {"event_id": "hall", "changed": 1, "blocked_total": 0}
    assert (await either.hold("hall", ["A-1", "A-2"], holder="bob")).status_code == 201


async def test_a_cancel_gives_units_back_at_once(either: Gateway) -> None:
    assert (
        await put_inventory(either, "ga", {"pools": [{"pool_id": "floor", "capacity": 3}]})
    ).status_code == 200
    first = (await hold_items(either, [pool("ga", "floor", 3)])).json()
    assert (await hold_items(either, [pool("ga", "floor", 1)], holder="bob")).status_code == 409

    assert (await either.post(f"/v1/holds/{first['id']}/cancel", {"holder": "alice"})).status_code == 200
    assert (await hold_items(either, [pool("ga", "floor", 3)], holder="bob")).status_code == 201


async def test_lapsed_units_come_back_at_expires_at_without_the_sweeper(either: Gateway) -> None:
    assert (
        await put_inventory(either, "ga", {"pools": [{"pool_id": "floor", "capacity": 2}]})
    ).status_code == 200
    short_lived = await hold_items(either, [pool("ga", "floor", 2)], ttl_seconds=1)
    assert short_lived.status_code == 201
    assert (await hold_items(either, [pool("ga", "floor", 1)], holder="bob")).status_code == 409

    deadline = time.monotonic() + 30
    while True:  # the first request after expires_at gets the units (the sweeper runs once an hour here)
        response = await hold_items(either, [pool("ga", "floor", 2)], holder="bob")
        if response.status_code == 201:
            break
        assert response.status_code == 409, response.text
        assert time.monotonic() < deadline, "the units did not come back"
        await asyncio.sleep(0.1)
    assert (await live_pool_units(either.settings.database_url or ""))[("ga", "floor")] == 2


async def test_a_confirmed_hold_keeps_its_units(either: Gateway) -> None:
    assert (
        await put_inventory(either, "ga", {"pools": [{"pool_id": "floor", "capacity": 2}]})
    ).status_code == 200
    hold = (await hold_items(either, [pool("ga", "floor", 2)], ttl_seconds=1)).json()
    assert (await either.post(f"/v1/holds/{hold['id']}/confirm", {"holder": "alice"})).status_code == 200
    availability = await wait_for_availability(either, "ga", lambda a: a["pools"][0]["confirmed"] == 2)
    assert availability["pools"][0] == {
        "pool_id": "floor",
        "capacity": 2,
        "available": 0,
        "held": 0,
        "confirmed": 2,
        "next_release_at": None,
    }
    await asyncio.sleep(1.2)  # past the hold's original expiry: confirmed units must not come back
    assert (await hold_items(either, [pool("ga", "floor", 1)], holder="bob")).status_code == 409


async def wait_for_availability(
    gateway: Gateway, event_id: str, condition: Any, within_s: float = 10
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        availability = (await gateway.client.get(f"/v1/events/{event_id}/availability")).json()
        if condition(availability):
            return availability  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, availability
        await asyncio.sleep(0.05)


async def test_availability_counts_seats_and_pools_and_says_when_units_come_back(either: Gateway) -> None:
    body = {
        "seats": ["A-1", "A-2", "A-3", "A-4"],
        "pools": [{"pool_id": "floor", "capacity": 10}],
        "limits": {"per_holder": 6},
    }
    assert (await put_inventory(either, "gig", body)).status_code == 200
    await either.client.post("/v1/events/gig/seats/block", json={"seats": ["A-4"], "reason": "press"})
    held = (
        await hold_items(
            either, [{"event_id": "gig", "slots": ["A-1"]}, pool("gig", "floor", 3)], ttl_seconds=300
        )
    ).json()
    confirmed = (
        await hold_items(
            either, [{"event_id": "gig", "slots": ["A-2"]}, pool("gig", "floor", 2)], holder="bob"
        )
    ).json()
    await either.post(f"/v1/holds/{confirmed['id']}/confirm", {"holder": "bob"})

    availability = await wait_for_availability(either, "gig", lambda a: a["seats"]["confirmed"] == 1)
    assert availability["seats"] == {"total": 4, "free": 1, "held": 1, "confirmed": 1, "blocked": 1}
    (floor,) = availability["pools"]
    assert {k: floor[k] for k in ("capacity", "available", "held", "confirmed")} == {
        "capacity": 10,
        "available": 5,
        "held": 3,
        "confirmed": 2,
    }
    assert datetime.fromisoformat(floor["next_release_at"]) == datetime.fromisoformat(held["expires_at"])
    assert availability["limits"] == {"per_holder": 6, "per_hold": None}
    assert "alice" not in str(availability)
    assert "bob" not in str(availability)


async def test_an_availability_read_storm_costs_postgres_almost_nothing(gateway: Gateway) -> None:
    assert (
        await put_inventory(gateway, "ga", {"pools": [{"pool_id": "floor", "capacity": 10}]})
    ).status_code == 200

    def reads_sent() -> float:
        return sum(
            sample.value
            for family in metrics.POSTGRES_QUERY_SECONDS.collect()
            for sample in family.samples
            if sample.name.endswith("_count") and sample.labels.get("query") == "event_availability"
        )

    before = reads_sent()
    started = time.monotonic()
    reads = 0
    while reads < 2000:
        batch = await asyncio.gather(*(gateway.client.get("/v1/events/ga/availability") for _ in range(100)))
        assert all(r.status_code == 200 for r in batch)
        reads += len(batch)
    elapsed_s = time.monotonic() - started
    statements = reads_sent() - before
    # One read per event per 0.9 s, per worker: the storm's length bounds it, whatever the machine's speed.
    assert statements <= elapsed_s / 0.9 + 1
    assert statements / reads <= 0.01 or elapsed_s > 20, (statements, reads, elapsed_s)


async def test_the_new_form_retries_and_replays(either: Gateway) -> None:
    assert (
        await put_inventory(either, "gig", {"seats": ["A-1"], "pools": [{"pool_id": "floor", "capacity": 5}]})
    ).status_code == 200
    items = [{"event_id": "gig", "slots": ["A-1"]}, pool("gig", "floor", 2)]
    first = await hold_items(either, items)
    retry = await hold_items(either, items)
    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json()["id"] == first.json()["id"]

    keyed = [pool("gig", "floor", 1)]
    headers = {"Idempotency-Key": "order-7"}
    made = await either.post("/v1/holds", {"holder": "bob", "items": keyed}, headers)
    replayed = await either.post("/v1/holds", {"holder": "bob", "items": keyed}, headers)
    other = await either.post("/v1/holds", {"holder": "bob", "items": [pool("gig", "floor", 2)]}, headers)
    assert (made.status_code, replayed.status_code, other.status_code) == (201, 201, 422)
    assert replayed.json()["id"] == made.json()["id"]
    # The one-event form and its one-item equivalent are the same request.
    old = await either.post(
        "/v1/holds", {"holder": "carol", "event_id": "open", "slots": ["B-1"]}, {"Idempotency-Key": "k"}
    )
    new = await either.post(
        "/v1/holds",
        {"holder": "carol", "items": [{"event_id": "open", "slots": ["B-1"]}]},
        {"Idempotency-Key": "k"},
    )
    assert (old.status_code, new.status_code) == (201, 201)
    assert new.json()["id"] == old.json()["id"]


async def test_confirm_racing_expiry_of_a_pool_hold_never_has_two_winners(either: Gateway) -> None:
    """Confirm at the instant a pool hold of the last unit lapses, with a rival asking for that unit: the
    confirm wins and the rival is refused, or the rival wins and the confirm is refused, or (a rival whose
    claim began just before expires_at) both are refused; never both granted, never the pool oversold."""
    assert (
        await put_inventory(either, "ga", {"pools": [{"pool_id": "floor", "capacity": 1}]})
    ).status_code == 200
    outcomes = set()
    for round_ in range(6):
        hold = (await hold_items(either, [pool("ga", "floor", 1)], holder=f"a{round_}", ttl_seconds=1)).json()
        expires_at = datetime.fromisoformat(hold["expires_at"]).timestamp()
        await asyncio.sleep(max(0.0, expires_at - time.time() + (round_ % 3 - 1) * 0.01))
        confirm, rival = await asyncio.gather(
            either.post(f"/v1/holds/{hold['id']}/confirm", {"holder": f"a{round_}"}),
            hold_items(either, [pool("ga", "floor", 1)], holder=f"r{round_}", ttl_seconds=1),
        )
        outcome = (confirm.status_code, rival.status_code)
        assert outcome in {(200, 409), (409, 201), (409, 409)}, (confirm.text, rival.text)
        outcomes.add(outcome)
        assert (await live_pool_units(either.settings.database_url or "")).get(("ga", "floor"), 0) <= 1
        if confirm.status_code == 200:
            await either.post(f"/v1/holds/{hold['id']}/cancel", {"holder": f"a{round_}"})
        elif rival.status_code == 201:
            await either.post(f"/v1/holds/{rival.json()['id']}/cancel", {"holder": f"r{round_}"})
