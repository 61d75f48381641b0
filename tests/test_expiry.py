"""Expiry: a lapsed hold reads as expired and frees its slots at once; the sweeper marks it later."""

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from tests.conftest import make_settings
from tests.support import Gateway, active_holds_per_slot, hold_on_slot, running_gateway

NO_SWEEP = {"sweep_interval_s": 3600.0}


@pytest.fixture(name="unswept_gateway", params=["redis-front", "db-only"])
async def fx_unswept_gateway(
    request: pytest.FixtureRequest, database_url: str, redis_url: str, key_prefix: str
) -> AsyncIterator[Gateway]:
    """A gateway whose sweeper does not run during the test, so expiry must work without it."""
    redis = redis_url if request.param == "redis-front" else None
    async with running_gateway(make_settings(database_url, redis, key_prefix, **NO_SWEEP)) as gateway:
        # The sweeper's first pass runs at start; let it finish before the test creates holds.
        await asyncio.sleep(0.05)
        yield gateway


async def stored_status(database_url: str, hold_id: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        status: str = await conn.fetchval("SELECT status FROM holds WHERE id = $1", hold_id)
    finally:
        await conn.close()
    return status


async def sleep_until(moment: datetime) -> None:
    await asyncio.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


async def test_lapsed_hold_reads_expired_before_any_sweep(unswept_gateway: Gateway) -> None:
    hold = (await unswept_gateway.hold("show-1", ["A-1"], ttl_seconds=1)).json()
    await sleep_until(datetime.fromisoformat(hold["expires_at"]))
    await asyncio.sleep(0.05)

    read = (await unswept_gateway.client.get(f"/v1/holds/{hold['id']}")).json()
    slot = (await unswept_gateway.client.get("/v1/events/show-1/slots/A-1")).json()

    assert await stored_status(unswept_gateway.settings.database_url or "", hold["id"]) == "held"
    assert read["status"] == "expired"
    assert read["ttl_ms"] is None
    assert slot["state"] == "free"


async def test_slot_of_a_lapsed_hold_can_be_taken_at_once(unswept_gateway: Gateway) -> None:
    old = (await unswept_gateway.hold("show-1", ["A-1", "A-2"], holder="alice", ttl_seconds=1)).json()
    await sleep_until(datetime.fromisoformat(old["expires_at"]))
    await asyncio.sleep(0.05)

    new = await unswept_gateway.hold("show-1", ["A-2"], holder="bob")

    assert new.status_code == 201
    assert (await unswept_gateway.client.get(f"/v1/holds/{old['id']}")).json()["status"] == "expired"
    assert await hold_on_slot(unswept_gateway, "show-1", "A-2") == new.json()["id"]
    # The old hold's other slot is free too, and the lapsed hold can no longer be confirmed or cancelled.
    assert (await unswept_gateway.client.get("/v1/events/show-1/slots/A-1")).json()["state"] == "free"
    for action in ("confirm", "cancel"):
        response = await unswept_gateway.client.post(
            f"/v1/holds/{old['id']}/{action}", json={"holder": "alice"}
        )
        assert response.status_code == 409
        assert response.json()["current_status"] == "expired"


async def test_sweeper_marks_lapsed_holds_expired(database_url: str, redis_url: str, key_prefix: str) -> None:
    settings = make_settings(database_url, redis_url, key_prefix, sweep_interval_s=0.2)
    async with running_gateway(settings) as gateway:
        holds = [(await gateway.hold("show-1", [f"A-{i}"], ttl_seconds=1)).json() for i in range(5)]
        keeper = (await gateway.hold("show-1", ["B-1"], ttl_seconds=60)).json()
        await sleep_until(datetime.fromisoformat(holds[-1]["expires_at"]))

        for _ in range(50):
            statuses = [await stored_status(database_url, h["id"]) for h in holds]
            if set(statuses) == {"expired"}:
                break
            await asyncio.sleep(0.1)

        assert statuses == ["expired"] * 5
        assert await stored_status(database_url, keeper["id"]) == "held"
        conn = await asyncpg.connect(database_url)
        try:
            slot_statuses = await conn.fetch(
                "SELECT DISTINCT status FROM hold_slots WHERE slot_id LIKE 'A-%'"
            )
        finally:
            await conn.close()
        assert [r["status"] for r in slot_statuses] == ["expired"]


async def test_confirm_racing_expiry_and_a_rival_never_gives_two_winners(unswept_gateway: Gateway) -> None:
    """Confirms and rival holds land around each hold's expires_at: per slot, one of them wins, never both."""
    rng = random.Random(11)
    holds = [
        (await unswept_gateway.hold("race", [f"R-{i}"], holder="alice", ttl_seconds=1)).json()
        for i in range(30)
    ]

    async def race(hold: dict[str, str], slot: str) -> tuple[int, int]:
        await sleep_until(datetime.fromisoformat(hold["expires_at"]))
        await asyncio.sleep(rng.uniform(-0.03, 0.03) + 0.03)
        confirm, rival = await asyncio.gather(
            unswept_gateway.client.post(f"/v1/holds/{hold['id']}/confirm", json={"holder": "alice"}),
            unswept_gateway.hold("race", [slot], holder="bob"),
        )
        return confirm.status_code, rival.status_code

    outcomes = await asyncio.gather(*(race(h, f"R-{i}") for i, h in enumerate(holds)))

    for hold, (confirm, rival) in zip(holds, outcomes, strict=True):
        # Both may lose (the rival came a moment early, the confirm a moment late); both never win.
        assert (confirm, rival) in {(200, 409), (409, 201), (409, 409)}, (hold["id"], confirm, rival)
        final = (await unswept_gateway.client.get(f"/v1/holds/{hold['id']}")).json()
        assert final["status"] == ("confirmed" if confirm == 200 else "expired")
    per_slot = await active_holds_per_slot(unswept_gateway.settings.database_url or "")
    assert set(per_slot.values()) <= {1}
