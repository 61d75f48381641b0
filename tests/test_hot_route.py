"""The raw hot route for POST /v1/holds (gateway.api.hot_holds): it serves the path when it is on (never
falling back to Litestar unseen), Litestar's route serves it when it is off, and both answer the same
requests with the same bytes. The create contract's own tests run against both paths (the
`both_create_paths` marker, tests/conftest.py)."""

import asyncio
import json
import re
import time

import pytest

from gateway import metrics
from gateway.api.hot_holds import CreateHoldRoute, HotRoutes
from gateway.chaos.proxy import FaultProxy
from gateway.observability import ObservedLitestar
from tests.conftest import fresh_database, make_settings
from tests.support import Gateway, running_gateway

BODY = {"event_id": "show-1", "slots": ["A-1", "A-2"], "holder": "alice"}


def _app(gateway: Gateway) -> ObservedLitestar:
    app = gateway.server.config.loaded_app.app  # type: ignore[union-attr]
    assert isinstance(app, ObservedLitestar)
    return app


def _hot_routes(gateway: Gateway) -> set[CreateHoldRoute]:
    """The hot routes in front of the gateway's Litestar router (none when they are off)."""
    handler = _app(gateway).asgi_handler
    return set(handler.routes.values()) if isinstance(handler, HotRoutes) else set()


def _http_count(status: int) -> float:
    return metrics.HTTP_REQUESTS.labels("POST", "/v1/holds", str(status))._value.get()


@pytest.mark.both_create_paths
async def test_the_chosen_route_serves_every_create_and_both_are_metered_alike(
    gateway: Gateway, create_path: str
) -> None:
    """Fails if the hot route silently falls back to Litestar (its count stays 0), or if it is served while
    turned off; either way the request is metered under the route template /v1/holds."""
    routes = _hot_routes(gateway)
    created_before, conflicts_before = _http_count(201), _http_count(409)

    first = await gateway.post("/v1/holds", BODY)
    second = await gateway.post("/v1/holds/", {**BODY, "holder": "bob"})
    third = await gateway.post("/v1/holds", {**BODY, "holder": "carol"}, headers={"X-Request-ID": "r-3"})

    assert [first.status_code, second.status_code, third.status_code] == [201, 409, 409]
    assert third.headers["x-request-id"] == "r-3"
    assert (_http_count(201) - created_before, _http_count(409) - conflicts_before) == (1, 2)
    if create_path == "hot":
        assert len(routes) == 1
        route = routes.pop()
        assert isinstance(route, CreateHoldRoute)
        assert route.served == 3
    else:
        assert routes == set()


async def test_the_hot_route_is_off_with_the_setting(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    async with running_gateway(
        make_settings(database_url, redis_url, key_prefix, hot_routes=False)
    ) as gateway:
        assert _hot_routes(gateway) == set()
        assert (await gateway.post("/v1/holds", BODY)).status_code == 201


async def test_an_unexpected_error_is_the_same_logged_500_problem_on_both_paths(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure nobody expected (here: a bug in the service) is Litestar's internal-error 500, logged."""

    async def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.service, "create", broken)
    app = _app(gateway)
    hot = app.asgi_handler
    assert isinstance(hot, HotRoutes)
    answers = [await gateway.post("/v1/holds", BODY, headers={"X-Request-ID": "boom"})]
    app.asgi_handler = hot.litestar
    try:
        answers.append(await gateway.post("/v1/holds", BODY, headers={"X-Request-ID": "boom"}))
    finally:
        app.asgi_handler = hot
    assert [a.status_code for a in answers] == [500, 500]
    assert answers[0].content == answers[1].content
    assert json.loads(answers[0].content)["type"] == "/problems/internal-error"
    logged = [r.getMessage() for r in caplog.records if r.name == "gateway.api.problems"]
    assert logged == ["unhandled error"] * 2
    assert [route.served for route in _hot_routes(gateway)] == [1]


# --- The same bytes on both paths -------------------------------------------------------------------------


def _request(body: bytes, *, content_type: str = "application/json", **headers: str) -> bytes:
    head = [
        "POST /v1/holds HTTP/1.1",
        "Host: gateway",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "X-Request-ID: same-id",
        "Connection: close",
    ]
    head += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


# Every request the sequence sends, with the status each must get (in order, on a fresh database).
SEQUENCE: list[tuple[str, int, bytes]] = [
    ("created", 201, _request(_json(BODY), **{"Idempotency-Key": "k-1"})),
    ("replayed", 201, _request(_json(BODY), **{"Idempotency-Key": "k-1"})),
    ("same holder again", 200, _request(_json({**BODY, "slots": ["A-2", "A-1"]}))),
    ("key reused", 422, _request(_json({**BODY, "slots": ["B-1"]}), **{"Idempotency-Key": "k-1"})),
    ("conflict", 409, _request(_json({**BODY, "holder": "bob", "slots": ["A-2", "A-9"]}))),
    ("bad field", 422, _request(_json({**BODY, "ttl_seconds": "300"}))),
    ("unknown field", 422, _request(_json({**BODY, "extra": 1}))),
    ("too many slots", 422, _request(_json({**BODY, "slots": [f"S-{i}" for i in range(11)]}))),
    ("bad idempotency key", 422, _request(_json(BODY), **{"Idempotency-Key": "é"})),
    ("lone surrogate", 422, _request(b'{"event_id": "show-1", "slots": ["\\ud800"], "holder": "a"}')),
    ("nested", 422, _request(b"[" * 40 + b"]" * 40)),
    ("too large", 413, _request(b" " * 70_000)),
    ("form", 415, _request(b"a=1", content_type="application/x-www-form-urlencoded")),
    ("malformed", 400, _request(b'{"event_id": ')),
]
# Once a client key exists, a create without one:
NEEDS_KEY = ("no client key", 401, _request(_json({**BODY, "slots": ["C-1"]})))
# With Postgres refusing connections, a create that Redis lets through:
DATABASE_DOWN = ("database down", 503, _request(_json({**BODY, "slots": ["D-1"]})))

_VARYING = [
    (re.compile(rb"^date: .*\r\n", re.MULTILINE), b""),
    (re.compile(rb"^retry-after: [12]\r\n", re.MULTILINE), b"retry-after: 1 or 2\r\n"),  # jittered
    (re.compile(rb"/v1/holds/[A-Za-z0-9_-]{22}"), b"/v1/holds/<id>"),
    (re.compile(rb'"id":"[A-Za-z0-9_-]{22}"'), b'"id":"<id>"'),
    (re.compile(rb'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"'), b'"<time>"'),
    (re.compile(rb'"ttl_ms":\d+'), b'"ttl_ms":<ms>'),
]


def _normalized(raw: bytes) -> bytes:
    """A response with what differs between any two runs masked (the date, the jittered Retry-After, a
    new hold's id and times); a 2xx's content-length is checked against its body, then masked too."""
    head, _, body = raw.partition(b"\r\n\r\n")
    if raw.startswith((b"HTTP/1.1 200", b"HTTP/1.1 201")):
        length = re.search(rb"content-length: (\d+)", head)
        assert length is not None
        assert int(length.group(1)) == len(body)
        head = head.replace(length.group(0), b"content-length: <n>")
    raw = head + b"\r\n\r\n" + body
    for pattern, replacement in _VARYING:
        raw = pattern.sub(replacement, raw)
    return raw


async def _exchange(gateway: Gateway, request: bytes) -> bytes:
    port = int(gateway.url.rpartition(":")[2])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


async def _answers(gateway: Gateway, database: FaultProxy) -> list[tuple[str, int, bytes]]:
    answers = []
    for name, status, request in SEQUENCE:
        answers.append((name, status, await _exchange(gateway, request)))
    assert (await gateway.client.post("/v1/client-keys", json={"name": "frontend"})).status_code == 201
    name, status, request = NEEDS_KEY
    answers.append((name, status, await _exchange(gateway, request)))
    key = (await gateway.client.post("/v1/client-keys", json={"name": "second"})).json()["key"]
    database.refuse()
    name, status, request = DATABASE_DOWN
    request = request.replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {key}\r\n\r\n".encode(), 1)
    deadline = time.monotonic() + 30
    while not (raw := await _exchange(gateway, request)).startswith(b"HTTP/1.1 503"):
        assert time.monotonic() < deadline, f"no 503 with Postgres refusing: {raw!r}"
        await asyncio.sleep(0.05)
    answers.append((name, status, raw))
    database.heal()
    return answers


async def test_both_paths_answer_the_same_bytes(
    postgres_admin_url: str, template_database: str, redis_url: str
) -> None:
    """201, its replay and a 200 retry, 409 with conflicts, 422s naming the field, 413, 415, 400, 401 and
    503: the same status line, headers (in order) and body from the hot route and from Litestar's."""
    runs = {}
    for hot in (True, False):
        async with (
            fresh_database(postgres_admin_url, template_database) as database_url,
            FaultProxy.in_front_of(database_url, protocol="postgres") as proxy,
        ):
            settings = make_settings(
                proxy.url(database_url), redis_url, f"hot{int(hot)}{time.monotonic_ns()}", hot_routes=hot
            )
            async with running_gateway(settings) as gateway:
                runs[hot] = await _answers(gateway, proxy)
                served = [route.served for route in _hot_routes(gateway)]
                assert [count >= len(runs[hot]) for count in served] == ([True] if hot else [])

    statuses = [(name, int(raw.split()[1])) for name, _, raw in runs[True]]
    assert statuses == [(name, status) for name, status, _ in runs[True]]
    for (name, _, hot_raw), (_, _, litestar_raw) in zip(runs[True], runs[False], strict=True):
        assert _normalized(hot_raw) == _normalized(litestar_raw), name
