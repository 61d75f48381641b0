"""The HTTP contract of v1, end to end over real HTTP, Redis and Postgres."""

import asyncio
import re
import time
from datetime import UTC, datetime

import pytest

from gateway.chaos.proxy import FaultProxy
from tests.conftest import make_settings
from tests.support import Gateway, running_gateway

RFC3339_UTC = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\Z")
HOLD_FIELDS = {
    "id",
    "extensions",
    "event_id",
    "slots",
    "holder",
    "status",
    "created_at",
    "expires_at",
    "ttl_ms",
    "confirmed_at",
    "cancelled_at",
    "items",
}


@pytest.mark.both_create_paths
async def test_create_returns_201_with_location_and_the_hold(gateway: Gateway) -> None:
    response = await gateway.hold("show-42", ["A-13", "A-12"], holder="user-123", ttl_seconds=120)

    assert response.status_code == 201
    hold = response.json()
    assert set(hold) == HOLD_FIELDS
    assert response.headers["location"] == f"/v1/holds/{hold['id']}"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", hold["id"])
    assert (hold["event_id"], hold["holder"], hold["status"]) == ("show-42", "user-123", "held")
    assert sorted(hold["slots"]) == ["A-12", "A-13"]
    assert 119_000 < hold["ttl_ms"] <= 120_000
    assert hold["confirmed_at"] is None
    assert hold["cancelled_at"] is None
    for field in ("created_at", "expires_at"):
        assert RFC3339_UTC.match(hold[field]), hold[field]
    created = datetime.fromisoformat(hold["created_at"])
    expires = datetime.fromisoformat(hold["expires_at"])
    assert (expires - created).total_seconds() == 120
    assert abs((created - datetime.now(UTC)).total_seconds()) < 5


@pytest.mark.both_create_paths
async def test_default_ttl_is_300_seconds(gateway: Gateway) -> None:
    hold = (await gateway.hold("show-1", ["A-1"])).json()
    expires = datetime.fromisoformat(hold["expires_at"])
    assert (expires - datetime.fromisoformat(hold["created_at"])).total_seconds() == 300


@pytest.mark.both_create_paths
async def test_same_holder_same_slots_in_any_order_gets_200_with_the_existing_hold(gateway: Gateway) -> None:
    first = await gateway.hold("show-1", ["A-1", "A-2"])
    retry = await gateway.hold("show-1", ["A-2", "A-1"])

    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json()["id"] == first.json()["id"]


@pytest.mark.both_create_paths
async def test_same_holder_with_a_different_set_of_slots_is_a_conflict(gateway: Gateway) -> None:
    await gateway.hold("show-1", ["A-1", "A-2"])
    response = await gateway.hold("show-1", ["A-1"])
    assert response.status_code == 409
    assert response.json()["conflicts"] == ["A-1"]


@pytest.mark.both_create_paths
async def test_conflict_is_problem_json_naming_only_the_taken_slots(gateway: Gateway) -> None:
    await gateway.hold("show-1", ["A-2", "A-4"], holder="bob")

    response = await gateway.hold("show-1", ["A-1", "A-2", "A-3", "A-4"], holder="carol")

    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"].endswith("/slot-unavailable")
    assert problem["status"] == 409
    assert {"title", "detail"} <= set(problem)
    assert sorted(problem["conflicts"]) == ["A-2", "A-4"]
    assert problem["detail"] == "2 of the requested slots are taken"
    # All or nothing: the free slots of the losing request were not held either.
    for slot in ("A-1", "A-3"):
        state = (await gateway.client.get(f"/v1/events/show-1/slots/{slot}")).json()
        assert state["state"] == "free"


@pytest.mark.both_create_paths
async def test_conflict_detail_on_one_taken_slot_is_singular(gateway: Gateway) -> None:
    """Regression: one taken slot read "1 of the requested slots are taken"."""
    await gateway.hold("show-1", ["A-2"], holder="bob")

    response = await gateway.hold("show-1", ["A-1", "A-2", "A-3"], holder="carol")

    assert response.status_code == 409
    assert response.json()["detail"] == "1 of the requested slots is taken"


@pytest.mark.both_create_paths
async def test_same_slot_ids_in_different_events_do_not_conflict(gateway: Gateway) -> None:
    assert (await gateway.hold("show-1", ["A-1"])).status_code == 201
    assert (await gateway.hold("show-2", ["A-1"], holder="bob")).status_code == 201


async def test_get_hold(gateway: Gateway) -> None:
    created = (await gateway.hold("show-1", ["A-1"])).json()

    response = await gateway.client.get(f"/v1/holds/{created['id']}")

    assert response.status_code == 200
    assert response.json()["id"] == created["id"]
    assert response.json()["status"] == "held"


@pytest.mark.parametrize("hold_id", ["AAAAAAAAAAAAAAAAAAAAAA", "nope", "x" * 300])
async def test_unknown_hold_is_404_problem(gateway: Gateway, hold_id: str) -> None:
    response = await gateway.client.get(f"/v1/holds/{hold_id}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"].endswith("/hold-not-found")


async def test_confirm_then_confirm_again_is_idempotent(gateway: Gateway) -> None:
    hold = (await gateway.hold("show-1", ["A-1"])).json()

    first = await gateway.client.post(f"/v1/holds/{hold['id']}/confirm", json={"holder": "alice"})
    again = await gateway.client.post(f"/v1/holds/{hold['id']}/confirm", json={"holder": "alice"})

    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json()["status"] == "confirmed"
    assert first.json()["ttl_ms"] is None
    assert RFC3339_UTC.match(first.json()["confirmed_at"])
    assert again.json()["confirmed_at"] == first.json()["confirmed_at"]
    state = (await gateway.client.get("/v1/events/show-1/slots/A-1")).json()
    assert state == {
        "event_id": "show-1",
        "slot_id": "A-1",
        "state": "confirmed",
        "expires_at": None,
        "ttl_ms": None,
    }


async def test_confirm_by_another_holder_is_403_and_changes_nothing(gateway: Gateway) -> None:
    hold = (await gateway.hold("show-1", ["A-1"])).json()

    response = await gateway.client.post(f"/v1/holds/{hold['id']}/confirm", json={"holder": "mallory"})

    assert response.status_code == 403
    assert response.json()["type"].endswith("/not-holder")
    assert (await gateway.client.get(f"/v1/holds/{hold['id']}")).json()["status"] == "held"


async def test_confirm_and_cancel_unknown_hold_is_404(gateway: Gateway) -> None:
    for action in ("confirm", "cancel"):
        response = await gateway.client.post(
            f"/v1/holds/AAAAAAAAAAAAAAAAAAAAAA/{action}", json={"holder": "a"}
        )
        assert response.status_code == 404


async def test_confirm_cancelled_hold_is_409_invalid_transition(gateway: Gateway) -> None:
    hold = (await gateway.hold("show-1", ["A-1"])).json()
    await gateway.client.post(f"/v1/holds/{hold['id']}/cancel", json={"holder": "alice"})

    response = await gateway.client.post(f"/v1/holds/{hold['id']}/confirm", json={"holder": "alice"})

    assert response.status_code == 409
    assert response.json()["type"].endswith("/invalid-transition")
    assert response.json()["current_status"] == "cancelled"


async def test_cancel_held_hold_releases_its_slots_at_once(gateway: Gateway) -> None:
    hold = (await gateway.hold("show-1", ["A-1", "A-2"])).json()

    response = await gateway.client.post(f"/v1/holds/{hold['id']}/cancel", json={"holder": "alice"})

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert RFC3339_UTC.match(response.json()["cancelled_at"])
    assert (await gateway.client.get("/v1/events/show-1/slots/A-1")).json()["state"] == "free"
    # Released in Redis too: another holder gets the slots right away.
    assert (await gateway.hold("show-1", ["A-2", "A-1"], holder="bob")).status_code == 201


async def test_cancel_confirmed_hold_releases_its_slots(gateway: Gateway) -> None:
    hold = (await gateway.hold("show-1", ["A-1"])).json()
    await gateway.client.post(f"/v1/holds/{hold['id']}/confirm", json={"holder": "alice"})

    response = await gateway.client.post(f"/v1/holds/{hold['id']}/cancel", json={"holder": "alice"})

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["confirmed_at"] is not None
    assert (await gateway.hold("show-1", ["A-1"], holder="bob")).status_code == 201


async def test_cancel_twice_is_idempotent_and_wrong_holder_is_403(gateway: Gateway) -> None:
    hold = (await gateway.hold("show-1", ["A-1"])).json()
    url = f"/v1/holds/{hold['id']}/cancel"

    assert (await gateway.client.post(url, json={"holder": "mallory"})).status_code == 403
    first = await gateway.client.post(url, json={"holder": "alice"})
    again = await gateway.client.post(url, json={"holder": "alice"})

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["cancelled_at"] == first.json()["cancelled_at"]


async def test_slot_state_free_and_held_never_shows_the_holder(gateway: Gateway) -> None:
    free = (await gateway.client.get("/v1/events/show-1/slots/A-1")).json()
    assert free == {
        "event_id": "show-1",
        "slot_id": "A-1",
        "state": "free",
        "expires_at": None,
        "ttl_ms": None,
    }

    hold = (await gateway.hold("show-1", ["A-1"], holder="secret-holder", ttl_seconds=60)).json()
    response = await gateway.client.get("/v1/events/show-1/slots/A-1")

    held = response.json()
    assert held["state"] == "held"
    assert hold["id"] not in response.text  # a hold id lets its client key act on the hold: never public
    assert held["expires_at"] == hold["expires_at"]
    assert 55_000 < held["ttl_ms"] <= 60_000
    assert "secret-holder" not in response.text


async def test_health_and_ready(gateway: Gateway) -> None:
    health = await gateway.client.get("/health")
    ready = await gateway.client.get("/ready")

    assert health.status_code == 200
    assert ready.status_code == 200
    assert ready.json() == {
        "database": "up",
        "redis": "up",
        "mode": "redis-front",
        "mode_reason": None,
        "client_keys": "open",
    }


async def head_exchange(url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """HEAD `path` over a socket of its own, read until the server closes it: the status, the headers, and
    every byte after them (an HTTP client would not read a HEAD answer's body even if one came)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, after = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, after


@pytest.mark.parametrize("path", ["/health", "/ready"])
async def test_head_on_health_and_ready_answers_like_get_without_a_body(gateway: Gateway, path: str) -> None:
    """Regression: load balancers that probe with HEAD got 405."""
    got = await gateway.client.get(path)

    status, headers, after = await head_exchange(gateway.url, path)

    assert (status, after) == (got.status_code, b"")
    assert headers["content-length"] == got.headers["content-length"]  # the length GET's body has


async def test_head_on_ready_is_503_while_postgres_is_down(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    async with FaultProxy.in_front_of(database_url, protocol="postgres") as proxy:
        settings = make_settings(proxy.url(database_url), redis_url, key_prefix)
        async with running_gateway(settings) as gateway:
            assert (await head_exchange(gateway.url, "/ready"))[0] == 200
            proxy.refuse()
            deadline = time.monotonic() + 10
            while (await gateway.client.get("/ready")).status_code != 503:
                assert time.monotonic() < deadline, "GET /ready never said 503 with Postgres refusing"
                await asyncio.sleep(0.05)

            status, _, after = await head_exchange(gateway.url, "/ready")

    assert (status, after) == (503, b"")


async def test_openapi_schema_is_served(gateway: Gateway) -> None:
    response = await gateway.client.get("/schema/openapi.json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {
        "/v1/holds",
        "/v1/holds/{hold_id}",
        "/v1/holds/{hold_id}/extend",
        "/v1/holds/{hold_id}/confirm",
        "/v1/holds/{hold_id}/cancel",
        "/v1/events/{event_id}/slots/{slot_id}",
        "/health",
        "/ready",
    } <= set(paths)
