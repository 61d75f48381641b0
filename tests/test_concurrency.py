"""One winner per slot under real concurrent requests, with Redis in front and with Postgres alone."""

import asyncio
import random

import httpx
import pytest

from tests.conftest import make_settings
from tests.support import (
    Gateway,
    active_holds_per_slot,
    hold_on_slot,
    released_together,
    running_gateway,
    statuses,
)


@pytest.fixture(params=["redis-front", "db-only"], name="any_gateway")
def fx_any_gateway(request: pytest.FixtureRequest) -> Gateway:
    gateway: Gateway = request.getfixturevalue(
        "gateway" if request.param == "redis-front" else "db_only_gateway"
    )
    return gateway


@pytest.mark.parametrize("contenders", [2, 50, 200])
async def test_concurrent_holds_on_one_slot_have_exactly_one_winner(
    any_gateway: Gateway, contenders: int
) -> None:
    responses = await released_together(
        contenders, lambda i: any_gateway.hold("show-1", ["A-1"], holder=f"user-{i}")
    )

    assert statuses(responses) == {201: 1, 409: contenders - 1}
    winner = next(r.json() for r in responses if r.status_code == 201)
    for loser in (r for r in responses if r.status_code == 409):
        assert loser.json()["conflicts"] == ["A-1"]
    assert await hold_on_slot(any_gateway, "show-1", "A-1") == winner["id"]
    assert await active_holds_per_slot(any_gateway.settings.database_url or "") == {("show-1", "A-1"): 1}


async def test_overlapping_multi_slot_holds_never_share_a_slot_or_half_win(any_gateway: Gateway) -> None:
    seats = [f"S-{i:02d}" for i in range(12)]
    rng = random.Random(7)
    requests = [rng.sample(seats, rng.randint(1, 4)) for _ in range(150)]

    responses = await released_together(
        len(requests), lambda i: any_gateway.hold("show-1", requests[i], holder=f"user-{i}")
    )

    assert set(statuses(responses)) <= {201, 409}
    won = [r.json() for r in responses if r.status_code == 201]
    assert won
    taken: dict[str, str] = {}
    for hold in won:
        for slot in hold["slots"]:
            assert slot not in taken, f"{slot} is in holds {taken[slot]} and {hold['id']}"
            taken[slot] = hold["id"]
    # Every slot is owned (per Postgres) by exactly the hold that won it: no partial holds anywhere.
    per_slot = await active_holds_per_slot(any_gateway.settings.database_url or "")
    assert per_slot == {("show-1", slot): 1 for slot in taken}
    for slot in seats:
        assert await hold_on_slot(any_gateway, "show-1", slot) == taken.get(slot)
    # Each 409 names slots that a winner holds.
    for response in responses:
        if response.status_code == 409:
            assert set(response.json()["conflicts"]) <= set(taken)


async def test_concurrent_duplicates_with_one_idempotency_key_create_one_hold(any_gateway: Gateway) -> None:
    payload = {"event_id": "show-1", "slots": ["A-1", "A-2"], "holder": "alice"}

    responses = await released_together(
        20,
        lambda _: any_gateway.client.post("/v1/holds", json=payload, headers={"Idempotency-Key": "order-1"}),
    )

    assert statuses(responses) == {201: 20}
    assert len({r.json()["id"] for r in responses}) == 1
    assert await active_holds_per_slot(any_gateway.settings.database_url or "") == {
        ("show-1", "A-1"): 1,
        ("show-1", "A-2"): 1,
    }


async def test_idempotency_key_replays_after_the_hold_changed_and_rejects_another_body(
    any_gateway: Gateway,
) -> None:
    payload = {"event_id": "show-1", "slots": ["A-1"], "holder": "alice", "ttl_seconds": 60}
    headers = {"Idempotency-Key": "order-7"}
    first = await any_gateway.client.post("/v1/holds", json=payload, headers=headers)
    await any_gateway.client.post(f"/v1/holds/{first.json()['id']}/cancel", json={"holder": "alice"})
    taken_by_bob = await any_gateway.hold("show-1", ["A-1"], holder="bob")

    replay = await any_gateway.client.post("/v1/holds", json=payload, headers=headers)
    reused = await any_gateway.client.post("/v1/holds", json={**payload, "slots": ["A-2"]}, headers=headers)

    assert (first.status_code, taken_by_bob.status_code) == (201, 201)
    assert replay.status_code == 201
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["idempotent-replayed"] == "true"
    assert reused.status_code == 422
    assert reused.json()["type"].endswith("/idempotency-key-reused")
    assert (await any_gateway.client.get("/v1/events/show-1/slots/A-2")).json()["state"] == "free"


async def test_idempotency_key_is_scoped_to_the_holder(any_gateway: Gateway) -> None:
    headers = {"Idempotency-Key": "same-key"}
    alice = await any_gateway.client.post(
        "/v1/holds", json={"event_id": "show-1", "slots": ["A-1"], "holder": "alice"}, headers=headers
    )
    bob = await any_gateway.client.post(
        "/v1/holds", json={"event_id": "show-1", "slots": ["A-2"], "holder": "bob"}, headers=headers
    )
    assert (alice.status_code, bob.status_code) == (201, 201)
    assert alice.json()["id"] != bob.json()["id"]


async def test_a_key_whose_request_lost_is_not_recorded(any_gateway: Gateway) -> None:
    """A 409 creates nothing, so the same key may try again once the slot is free."""
    blocker = (await any_gateway.hold("show-1", ["A-1"], holder="bob")).json()
    payload = {"event_id": "show-1", "slots": ["A-1"], "holder": "alice"}
    headers = {"Idempotency-Key": "try-1"}

    lost = await any_gateway.client.post("/v1/holds", json=payload, headers=headers)
    await any_gateway.client.post(f"/v1/holds/{blocker['id']}/cancel", json={"holder": "bob"})
    retried = await any_gateway.client.post("/v1/holds", json=payload, headers=headers)

    assert (lost.status_code, retried.status_code) == (409, 201)


async def test_concurrent_confirm_and_cancel_agree_on_one_outcome(any_gateway: Gateway) -> None:
    holds = [(await any_gateway.hold("show-1", [f"A-{i}"])).json() for i in range(20)]

    async def race(hold_id: str) -> tuple[httpx.Response, httpx.Response]:
        confirm, cancel = await asyncio.gather(
            any_gateway.client.post(f"/v1/holds/{hold_id}/confirm", json={"holder": "alice"}),
            any_gateway.client.post(f"/v1/holds/{hold_id}/cancel", json={"holder": "alice"}),
        )
        return confirm, cancel

    results = await asyncio.gather(*(race(h["id"]) for h in holds))

    for hold, (confirm, cancel) in zip(holds, results, strict=True):
        final = (await any_gateway.client.get(f"/v1/holds/{hold['id']}")).json()
        # Cancel is allowed from held and from confirmed, so it always ends cancelled; confirm either ran
        # first (200) or found the hold cancelled (409 with current_status).
        assert cancel.status_code == 200
        assert final["status"] == "cancelled"
        if confirm.status_code == 200:
            assert final["confirmed_at"] is not None
        else:
            assert confirm.status_code == 409
            assert confirm.json()["current_status"] == "cancelled"
            assert final["confirmed_at"] is None


async def test_creates_beyond_the_queue_budget_are_shed_with_503(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The create bulkhead: one request at the Redis step at a time and almost no patience, so a burst
    must shed load as 503 Overloaded with Retry-After, never hang or fail otherwise, and keep one winner."""
    settings = make_settings(
        database_url, redis_url, key_prefix, create_concurrency=1, create_queue_timeout_s=0.001
    )
    async with running_gateway(settings) as gateway:
        responses = await released_together(
            60, lambda i: gateway.post("/v1/holds", {"event_id": "e", "slots": ["s"], "holder": f"h{i}"})
        )
    counts = statuses(responses)
    shed = [r for r in responses if r.status_code == 503]

    assert set(counts) <= {201, 409, 503}, counts
    assert counts[201] == 1
    assert shed, counts
    assert all(r.json()["type"] == "/problems/overloaded" and r.headers["retry-after"] for r in shed)
    assert await active_holds_per_slot(database_url) == {("e", "s"): 1}
