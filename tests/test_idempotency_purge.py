"""An Idempotency-Key whose record was purged may be used again like a new one."""

import asyncpg
import pytest

from tests.support import Gateway

BODY = {"event_id": "show-1", "slots": ["A-1", "A-2"], "holder": "alice", "ttl_seconds": 60}
KEY = {"Idempotency-Key": "order-7f3a"}


@pytest.fixture(name="any_gateway", params=["redis-front", "db-only"])
def fx_any_gateway(request: pytest.FixtureRequest) -> Gateway:
    """The gateway with Redis in front, or with no Redis at all."""
    gateway: Gateway = request.getfixturevalue(
        "gateway" if request.param == "redis-front" else "db_only_gateway"
    )
    return gateway


async def token_of_hold(database_url: str, hold_id: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        token: str = await conn.fetchval("SELECT token FROM holds WHERE id = $1", hold_id)
    finally:
        await conn.close()
    return token


async def test_a_purged_key_makes_a_new_hold_then_replays_it(any_gateway: Gateway) -> None:
    """Regression: once the 24 h purge had deleted a key's record, the same holder, key and request on free
    slots got 409 slot-unavailable with `"conflicts": []`, every time: the lease token derived from them was
    still the old hold's (holds_token_key), so the claim got every slot but could not insert its hold."""
    gateway = any_gateway
    store = gateway.service.store
    first = await gateway.post("/v1/holds", BODY, KEY)
    assert first.status_code == 201, first.text
    old_id = first.json()["id"]
    cancel = await gateway.client.post(f"/v1/holds/{old_id}/cancel", json={"holder": "alice"})
    assert cancel.status_code == 200, cancel.text
    old_token = await token_of_hold(gateway.settings.database_url or "", old_id)
    assert await store.purge_idempotency_keys(gateway.settings.idempotency_retention_s, 1000) == 0

    assert await store.purge_idempotency_keys(0, 1000) == 1

    again = await gateway.post("/v1/holds", BODY, KEY)
    assert again.status_code == 201, again.text
    assert again.headers.get("Idempotent-Replayed") is None
    new_id = again.json()["id"]
    assert new_id != old_id
    assert again.json()["status"] == "held"
    # The old hold keeps its history under a retired token; the new one has the key's token.
    retired = await token_of_hold(gateway.settings.database_url or "", old_id)
    assert retired == f"{old_token}:retired:{old_id}"
    assert await token_of_hold(gateway.settings.database_url or "", new_id) == old_token
    assert (await gateway.client.get(f"/v1/holds/{old_id}")).json()["status"] == "cancelled"

    replay = await gateway.post("/v1/holds", BODY, KEY)
    assert replay.status_code == 201, replay.text
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == new_id
    other = await gateway.post("/v1/holds", {**BODY, "slots": ["B-1"]}, KEY)
    assert other.status_code == 422, other.text
    assert other.json()["type"].endswith("/idempotency-key-reused")


async def test_a_purged_key_of_an_expired_hold_is_used_again_on_the_same_slots(any_gateway: Gateway) -> None:
    """The same, for a hold that lapsed rather than being cancelled (swept to expired)."""
    gateway = any_gateway
    store = gateway.service.store
    first = await gateway.post("/v1/holds", {**BODY, "ttl_seconds": 1}, KEY)
    assert first.status_code == 201, first.text
    conn = await asyncpg.connect(gateway.settings.database_url)
    try:
        # Lapsed at once, and marked expired as the sweeper would.
        await conn.execute("UPDATE holds SET expires_at = now() - interval '1 second'")
        await conn.execute("UPDATE hold_slots SET expires_at = now() - interval '1 second'")
    finally:
        await conn.close()
    await store.expire_holds(1000)
    assert await store.purge_idempotency_keys(0, 1000) == 1

    again = await gateway.post("/v1/holds", {**BODY, "ttl_seconds": 1}, KEY)

    assert again.status_code == 201, again.text
    assert again.json()["id"] != first.json()["id"]
