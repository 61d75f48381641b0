"""Who may touch a hold: client keys on the hold routes, no capability on a public route, the ops token for
reading and operations only. Each test is an attack tried from outside, and what stopped it."""

import asyncio
import hashlib
import string
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from tests.conftest import make_settings
from tests.support import Gateway, running_gateway

OPS_TOKEN = "ops-token-" + "0123456789abcdef"
OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(name="guarded")
async def fx_guarded(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Gateway]:
    """A gateway with an ops token, and client keys refreshed often (for the tests across two gateways)."""
    settings = make_settings(
        database_url, redis_url, key_prefix, ops_token=OPS_TOKEN, client_keys_refresh_s=0.2
    )
    async with running_gateway(settings) as gateway:
        yield gateway


async def new_key(gateway: Gateway, name: str) -> dict[str, str]:
    response = await gateway.client.post("/v1/client-keys", json={"name": name}, headers=OPS)
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


async def hold(gateway: Gateway, slot: str, holder: str, headers: dict[str, str]) -> httpx.Response:
    body = {"event_id": "show-1", "slots": [slot], "holder": holder}
    return await gateway.client.post("/v1/holds", json=body, headers=headers)


async def act(gateway: Gateway, hold_id: str, action: str, holder: str, headers: dict[str, str]) -> int:
    path = f"/v1/holds/{hold_id}/{action}"
    body = {"holder": holder} | ({"ttl_seconds": 60} if action == "extend" else {})
    return (await gateway.client.post(path, json=body, headers=headers)).status_code


async def statuses_in_postgres(gateway: Gateway, hold_ids: list[str]) -> list[str]:
    conn = await asyncpg.connect(gateway.settings.database_url)
    try:
        rows = await conn.fetch("SELECT id, status FROM holds WHERE id = ANY($1::text[])", hold_ids)
    finally:
        await conn.close()
    by_id = {r["id"]: r["status"] for r in rows}
    return [by_id[i] for i in hold_ids]


async def test_strangers_cannot_find_a_hold_to_cancel_without_client_keys(guarded: Gateway) -> None:
    """Regression: the slot routes gave hold ids and GET /v1/holds/{id} gave holders, so three anonymous
    requests cancelled anyone's hold (50 of 50 in a scripted run, 25 of them confirmed). With no client key
    the hold routes stay open, but nothing public names a hold: the attacker has no id to act on."""
    victims = [(await hold(guarded, f"A-{i}", f"victim-{i}", {})).json() for i in range(10)]
    for victim in victims[:5]:
        assert await act(guarded, victim["id"], "confirm", victim["holder"], {}) == 200

    client = guarded.client
    seat_map = await client.get("/v1/events/show-1/slots")
    slot_reads = [await client.get(f"/v1/events/show-1/slots/A-{i}") for i in range(10)]
    listing = await client.get("/v1/holds?event_id=show-1")
    found = "\n".join(r.text for r in [seat_map, listing, *slot_reads])
    guessed = [
        await act(guarded, "A" * 22, action, "victim-0", {}) for action in ("cancel", "confirm", "extend")
    ]

    assert (seat_map.status_code, listing.status_code) == (401, 401)
    assert {r.json()["state"] for r in slot_reads} == {"held", "confirmed"}
    assert not any(v["id"] in found or v["holder"] in found for v in victims)
    assert guessed == [404, 404, 404]
    expected = ["confirmed"] * 5 + ["held"] * 5
    assert await statuses_in_postgres(guarded, [v["id"] for v in victims]) == expected


@pytest.mark.both_create_paths
async def test_with_client_keys_a_hold_belongs_to_the_key_that_made_it(guarded: Gateway) -> None:
    """Once a client key exists every hold route needs one; another key's hold is a 404 whatever the body
    says (even with the right holder); the ops token reads every hold but creates and changes none."""
    shop = await new_key(guarded, "shop frontend")
    rival = await new_key(guarded, "another frontend")
    created = await hold(guarded, "A-1", "alice", bearer(shop["key"]))
    hold_id = created.json()["id"]

    anonymous = [
        (await hold(guarded, "A-2", "mallory", {})).status_code,
        (await guarded.client.get(f"/v1/holds/{hold_id}")).status_code,
        await act(guarded, hold_id, "cancel", "alice", {}),
        await act(guarded, hold_id, "cancel", "alice", bearer("gwk_" + "x" * 43)),
        await act(guarded, hold_id, "extend", "alice", {}),
    ]
    other_key = [
        (await guarded.client.get(f"/v1/holds/{hold_id}", headers=bearer(rival["key"]))).status_code,
        await act(guarded, hold_id, "confirm", "alice", bearer(rival["key"])),
        await act(guarded, hold_id, "cancel", "alice", bearer(rival["key"])),
        await act(guarded, hold_id, "extend", "alice", bearer(rival["key"])),
        # The same holder and slots with another key is no retry of this hold: 409, and no id in it.
        (await hold(guarded, "A-1", "alice", bearer(rival["key"]))).status_code,
    ]
    ops = [
        (await guarded.client.get(f"/v1/holds/{hold_id}", headers=OPS)).status_code,
        (await hold(guarded, "A-3", "ops", OPS)).status_code,
        await act(guarded, hold_id, "cancel", "alice", OPS),
        await act(guarded, hold_id, "extend", "alice", OPS),
    ]
    own = (await guarded.client.get(f"/v1/holds/{hold_id}", headers=bearer(shop["key"]))).json()
    problem = (await hold(guarded, "A-2", "mallory", {})).json()

    assert created.status_code == 201
    assert anonymous == [401, 401, 401, 401, 401]
    assert problem["type"].endswith("/client-key-required")
    assert other_key == [404, 404, 404, 404, 409]
    assert ops == [200, 401, 401, 401]
    assert (own["status"], own["extensions"]) == ("held", 0)
    assert await statuses_in_postgres(guarded, [hold_id]) == ["held"]


@pytest.mark.both_create_paths
async def test_idempotency_keys_are_scoped_to_the_client_key(guarded: Gateway) -> None:
    """Regression: a stranger who knew a holder could use the victim's predictable Idempotency-Key first,
    and the victim's real request then got 422. Each client key has its own keys."""
    shop = await new_key(guarded, "shop")
    stranger = await new_key(guarded, "stranger")
    key = {"Idempotency-Key": "order-1"}
    poisoned = await guarded.client.post(
        "/v1/holds",
        json={"event_id": "show-1", "slots": ["Z-9"], "holder": "alice"},
        headers=key | bearer(stranger["key"]),
    )
    real = await guarded.client.post(
        "/v1/holds",
        json={"event_id": "show-1", "slots": ["A-1"], "holder": "alice"},
        headers=key | bearer(shop["key"]),
    )
    retried = await guarded.client.post(
        "/v1/holds",
        json={"event_id": "show-1", "slots": ["A-1"], "holder": "alice"},
        headers=key | bearer(shop["key"]),
    )

    assert (poisoned.status_code, real.status_code) == (201, 201)
    assert retried.status_code == 201
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json()["id"] == real.json()["id"]


async def test_a_client_key_is_shown_once_stored_as_a_digest_and_revoked_at_once(guarded: Gateway) -> None:
    created = await new_key(guarded, "box office")
    listed = (await guarded.client.get("/v1/client-keys", headers=OPS)).json()
    conn = await asyncpg.connect(guarded.settings.database_url)
    try:
        stored = await conn.fetchrow("SELECT * FROM client_keys WHERE id = $1", created["id"])
    finally:
        await conn.close()
    accepted = await hold(guarded, "A-1", "alice", bearer(created["key"]))
    deleted = await guarded.client.delete(f"/v1/client-keys/{created['id']}", headers=OPS)
    refused = await hold(guarded, "A-2", "alice", bearer(created["key"]))
    again = await guarded.client.delete(f"/v1/client-keys/{created['id']}", headers=OPS)
    anonymous_list = await guarded.client.get("/v1/client-keys")

    assert created["key"].startswith("gwk_")
    assert len(created["key"]) >= 40
    assert listed == {
        "client_keys": [{"id": created["id"], "name": "box office", "created_at": created["created_at"]}]
    }
    assert stored is not None
    assert bytes(stored["key_sha256"]) == hashlib.sha256(created["key"].encode()).digest()
    assert created["key"] not in repr(dict(stored))
    assert accepted.status_code == 201
    assert deleted.status_code == 204
    # No key left: the gateway is open again, so the revoked key's request is served as anyone's would be.
    assert refused.status_code == 201
    assert again.status_code == 404
    assert anonymous_list.status_code == 401


async def test_several_keys_live_at_once_for_rotation(guarded: Gateway) -> None:
    """Rotation: a new key works beside the old one; once the old one is revoked, only it is refused."""
    old = await new_key(guarded, "frontend 2026-11")
    new = await new_key(guarded, "frontend 2026-12")
    keys = (old["key"], new["key"])
    before = [(await hold(guarded, f"A-{i}", "alice", bearer(k))).status_code for i, k in enumerate(keys)]
    await guarded.client.delete(f"/v1/client-keys/{old['id']}", headers=OPS)
    after = [(await hold(guarded, f"B-{i}", "alice", bearer(k))).status_code for i, k in enumerate(keys)]
    ready = (await guarded.client.get("/ready")).json()

    assert before == [201, 201]
    assert after == [401, 201]
    assert ready["client_keys"] == "required"


async def test_a_key_created_or_revoked_on_one_gateway_reaches_another(
    guarded: Gateway, database_url: str, redis_url: str, key_prefix: str
) -> None:
    """Two gateways (or workers) on one database: each reloads the keys every client_keys_refresh_s."""
    settings = make_settings(
        database_url, redis_url, key_prefix, ops_token=OPS_TOKEN, client_keys_refresh_s=0.2
    )
    async with running_gateway(settings) as other:
        created = await new_key(guarded, "frontend")

        async def status_on_other(slot: str) -> int:
            return (await hold(other, slot, "alice", bearer(created["key"]))).status_code

        deadline = time.monotonic() + 30
        while (await other.client.get("/ready")).json()["client_keys"] != "required":
            assert time.monotonic() < deadline, "the other gateway never learnt of the key"
            await asyncio.sleep(0.05)
        accepted = await status_on_other("A-1")
        second = await new_key(guarded, "keeps the gateway closed")
        await guarded.client.delete(f"/v1/client-keys/{created['id']}", headers=OPS)
        refused = accepted
        while refused != 401:
            assert time.monotonic() < deadline, "the other gateway never dropped the revoked key"
            await asyncio.sleep(0.05)
            refused = await status_on_other(f"B-{time.monotonic_ns()}")

    assert accepted == 201
    assert refused == 401
    assert second["name"] == "keeps the gateway closed"


async def test_no_public_route_ever_shows_a_hold_id_or_a_holder(guarded: Gateway) -> None:
    """Property: whatever holders, seats and states, the routes anyone may call (slot state, health,
    readiness, the create's own refusals) never carry a hold id or a holder."""
    key = await new_key(guarded, "frontend")
    # A prefix no answer could hold by chance (a holder of digits could match a timestamp's).
    holder_text = st.text(
        st.characters(codec="utf-8", categories=("L", "N", "P", "S")), min_size=1, max_size=24
    ).map(lambda text: "hé~" + text)
    seats = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=12)

    def run(client: httpx.Client) -> None:
        @hypothesis.settings(max_examples=40, deadline=None, derandomize=True, database=None)
        @hypothesis.given(holder=holder_text, seat=seats, confirm=st.booleans())
        def property_holds(holder: str, seat: str, confirm: bool) -> None:
            headers = bearer(key["key"])
            body = {"event_id": "prop", "slots": [seat], "holder": holder}
            created = client.post("/v1/holds", json=body, headers=headers)
            if created.status_code != 201:
                return  # the seat is taken by an earlier example: that is the 409 checked below
            hold_id = created.json()["id"]
            if confirm:
                client.post(f"/v1/holds/{hold_id}/confirm", json={"holder": holder}, headers=headers)
            public = [
                client.get(f"/v1/events/prop/slots/{seat}"),
                client.get("/health"),
                client.get("/ready"),
                client.post("/v1/holds", json=body | {"holder": holder + "-rival"}, headers=headers),
                client.post("/v1/holds", json=body),
            ]
            for response in public:
                assert hold_id not in response.text, (response.request.url, response.text)
                assert holder not in response.text, (response.request.url, response.text)

        property_holds()

    with httpx.Client(base_url=guarded.url, timeout=10) as client:
        await asyncio.to_thread(run, client)
