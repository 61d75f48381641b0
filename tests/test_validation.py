"""Bad input: a clear problem+json naming the field, never a 500, and nothing written anywhere."""

from typing import Any

import pytest

from tests.support import Gateway, redis_keys, row_counts

GOOD: dict[str, Any] = {"event_id": "show-1", "slots": ["A-1"], "holder": "alice"}


def body(**changes: Any) -> dict[str, Any]:
    result = {**GOOD, **changes}
    return {k: v for k, v in result.items() if v is not ...}


BAD_BODIES = [
    pytest.param(body(event_id=...), "event_id", id="missing event_id"),
    pytest.param(body(slots=...), "slots", id="missing slots"),
    pytest.param(body(holder=...), "holder", id="missing holder"),
    pytest.param(body(event_id=42), "event_id", id="event_id not a string"),
    pytest.param(body(event_id=""), "event_id", id="empty event_id"),
    pytest.param(body(event_id="x" * 129), "event_id", id="event_id too long"),
    pytest.param(body(event_id="show 1"), "event_id", id="space in event_id"),
    pytest.param(body(event_id="show\x001"), "event_id", id="NUL in event_id"),
    pytest.param(body(event_id="show-1\n"), "event_id", id="trailing newline in event_id"),
    pytest.param(body(event_id="šhow"), "event_id", id="non-ascii event_id"),
    pytest.param(body(slots="A-1"), "slots", id="slots not a list"),
    pytest.param(body(slots=[]), "slots", id="empty slots"),
    pytest.param(body(slots=["A-1", "A-1"]), "slots", id="duplicated slot"),
    pytest.param(body(slots=[f"A-{i}" for i in range(11)]), "slots", id="too many slots"),
    pytest.param(body(slots=["A\x00"]), "slots", id="NUL in slot"),
    pytest.param(body(slots=[""]), "slots", id="empty slot id"),
    pytest.param(body(slots=[7]), "slots", id="slot not a string"),
    pytest.param(body(slots=["A/1"]), "slots", id="slash in slot"),
    pytest.param(body(holder=""), "holder", id="empty holder"),
    pytest.param(body(holder="h" * 129), "holder", id="holder too long"),
    pytest.param(body(holder="a\x00b"), "holder", id="NUL in holder"),
    pytest.param(body(holder="a\nb"), "holder", id="newline in holder"),
    pytest.param(body(holder=["alice"]), "holder", id="holder not a string"),
    pytest.param(body(ttl_seconds=0), "ttl_seconds", id="ttl zero"),
    pytest.param(body(ttl_seconds=3601), "ttl_seconds", id="ttl above max"),
    pytest.param(body(ttl_seconds=-5), "ttl_seconds", id="negative ttl"),
    pytest.param(body(ttl_seconds="300"), "ttl_seconds", id="ttl as string"),
    pytest.param(body(ttl_seconds=True), "ttl_seconds", id="ttl as bool"),
    pytest.param(body(ttl_seconds=30.5), "ttl_seconds", id="ttl as float"),
    pytest.param(body(extra="x"), "extra", id="unknown field"),
]


async def assert_nothing_written(gateway: Gateway) -> None:
    assert await row_counts(gateway.settings.database_url or "") == {
        "holds": 0,
        "hold_slots": 0,
        "idempotency_keys": 0,
    }
    assert await redis_keys(gateway.settings.redis_url or "", gateway.settings.redis_key_prefix) == []


@pytest.mark.both_create_paths
@pytest.mark.parametrize(("payload", "field"), BAD_BODIES)
async def test_bad_body_is_422_naming_the_field_and_changes_nothing(
    gateway: Gateway, payload: dict[str, Any], field: str
) -> None:
    response = await gateway.client.post("/v1/holds", json=payload, headers={"Idempotency-Key": "k-1"})

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"].endswith("/invalid-request")
    assert problem["status"] == 422
    assert f"`{field}`" in problem["detail"] or f"`{field}[" in problem["detail"], problem["detail"]
    await assert_nothing_written(gateway)


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"not json",
        b"",
        b"[]",
        b'"a string"',
        b"null",
        b'{"event_id": "\\ud800", "slots": ["A"], "holder": "a"}',
    ],
    ids=["truncated", "not json", "empty", "array", "string", "null", "lone surrogate"],
)
@pytest.mark.both_create_paths
async def test_malformed_body_is_4xx_problem_and_changes_nothing(gateway: Gateway, raw: bytes) -> None:
    response = await gateway.client.post(
        "/v1/holds", content=raw, headers={"content-type": "application/json"}
    )

    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"]
    await assert_nothing_written(gateway)


@pytest.mark.both_create_paths
async def test_holder_with_lone_surrogate_is_rejected_before_any_io(gateway: Gateway) -> None:
    raw = b'{"event_id": "show-1", "slots": ["A-1"], "holder": "a\\udc00"}'
    response = await gateway.client.post(
        "/v1/holds", content=raw, headers={"content-type": "application/json"}
    )

    assert response.status_code in (400, 422), response.text
    await assert_nothing_written(gateway)


@pytest.mark.both_create_paths
async def test_unicode_holder_is_accepted(gateway: Gateway) -> None:
    response = await gateway.hold("show-1", ["A-1"], holder="Zoë 🎫 o'Brien")
    assert response.status_code == 201
    assert response.json()["holder"] == "Zoë 🎫 o'Brien"


@pytest.mark.both_create_paths
async def test_body_over_the_limit_is_413_and_changes_nothing(gateway: Gateway) -> None:
    huge = body(holder="alice", slots=[f"S-{i}" for i in range(10_000)])
    response = await gateway.client.post("/v1/holds", json=huge)

    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
    await assert_nothing_written(gateway)


@pytest.mark.parametrize(
    "key", ["", "k" * 256, "tab\there", "ключ"], ids=["empty", "256 chars", "tab", "non-ascii"]
)
@pytest.mark.both_create_paths
async def test_bad_idempotency_key_is_422_naming_the_header(gateway: Gateway, key: str) -> None:
    response = await gateway.client.post("/v1/holds", json=GOOD, headers=[(b"Idempotency-Key", key.encode())])

    assert response.status_code == 422, response.text
    assert "Idempotency-Key" in response.json()["detail"]
    await assert_nothing_written(gateway)


@pytest.mark.both_create_paths
async def test_longest_valid_idempotency_key_and_ids_are_accepted(gateway: Gateway) -> None:
    payload = body(event_id="E" * 128, slots=["a.b:c~d-" + "s" * 120], holder="h" * 128)
    response = await gateway.client.post("/v1/holds", json=payload, headers={"Idempotency-Key": "k" * 255})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("action", ["confirm", "cancel"])
@pytest.mark.parametrize(
    ("payload", "field"),
    [({}, "holder"), ({"holder": ""}, "holder"), ({"holder": 1}, "holder"), ({"holder": "a", "x": 1}, "x")],
)
async def test_bad_transition_body_is_422_and_changes_nothing(
    gateway: Gateway, action: str, payload: dict[str, Any], field: str
) -> None:
    hold = (await gateway.hold("show-1", ["A-1"])).json()

    response = await gateway.client.post(f"/v1/holds/{hold['id']}/{action}", json=payload)

    assert response.status_code == 422, response.text
    assert f"`{field}`" in response.json()["detail"]
    assert (await gateway.client.get(f"/v1/holds/{hold['id']}")).json()["status"] == "held"


@pytest.mark.parametrize("path", ["/v1/events/bad%20id/slots/A-1", "/v1/events/show-1/slots/A%00"])
async def test_bad_ids_in_slot_path_are_422(gateway: Gateway, path: str) -> None:
    response = await gateway.client.get(path)
    assert response.status_code == 422
    assert response.json()["type"].endswith("/invalid-request")
