"""Hostile input: generated bad bodies, lying and missing headers, oversized and trickled requests.

Whatever arrives, the gateway answers 4xx problem+json naming the field (or closes the connection), never a
5xx, and a refused request leaves nothing behind: no Redis key under the test's prefix, no Postgres row.
Malformed HTTP goes over raw sockets, as no HTTP client would send it.
"""

import asyncio
import base64
import json
import logging
import string
import time
from collections.abc import Coroutine
from contextlib import suppress
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from tests.support import Gateway, redis_keys, row_counts

GOOD: dict[str, Any] = {"event_id": "show-1", "slots": ["A-1"], "holder": "alice"}
NO_ROWS = {"holds": 0, "hold_slots": 0, "idempotency_keys": 0}
# What a hold action's body needs besides `holder`, as JSON text to append inside the object.
EXTRA_FIELDS = {"extend": b', "ttl_seconds": 30', "confirm": b"", "cancel": b""}
TRICKLE_INTERVAL_S = 0.1  # a byte every 100 ms


async def written(gateway: Gateway) -> tuple[dict[str, int], list[str]]:
    """Rows per table and the Redis keys under the test's prefix."""
    settings = gateway.settings
    return (
        await row_counts(settings.database_url or ""),
        await redis_keys(settings.redis_url or "", settings.redis_key_prefix),
    )


async def assert_nothing_written(gateway: Gateway) -> None:
    assert await written(gateway) == (NO_ROWS, [])


def assert_problem(response: httpx.Response, status: int | tuple[int, ...], field: str | None = None) -> None:
    """A problem+json answer with this status whose detail names `field` (`slots` also matches `slots[3]`)."""
    allowed = status if isinstance(status, tuple) else (status,)
    assert response.status_code in allowed, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    problem = response.json()
    assert problem["status"] == response.status_code
    assert problem["type"].startswith("/problems/")
    assert problem["detail"]
    if field is not None:
        assert f"`{field}`" in problem["detail"] or f"`{field}[" in problem["detail"], problem["detail"]


def gateway_port(gateway: Gateway) -> int:
    return int(gateway.url.rpartition(":")[2])


def request_head(path: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_response(raw: bytes) -> httpx.Response:
    """The first HTTP/1.1 response in `raw` (which must hold all of it)."""
    status_line, _, rest = raw.partition(b"\r\n")
    header_block, _, content = rest.partition(b"\r\n\r\n")
    headers = [tuple(line.decode("latin-1").split(": ", 1)) for line in header_block.split(b"\r\n")]
    response = httpx.Response(int(status_line.split()[1]), headers=headers)
    length = int(response.headers.get("content-length", len(content)))
    return httpx.Response(response.status_code, headers=headers, content=content[:length])


async def read_until_closed(reader: asyncio.StreamReader, timeout_s: float = 10) -> bytes:
    """All the server sends until it closes the connection (a reset counts as a close)."""
    chunks = []
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                chunk = await reader.read(65_536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


async def raw_exchange(gateway: Gateway, data: bytes, *, close_write: bool = True) -> bytes:
    """Send `data` on a connection of its own, then (by default) shut the sending side; read until closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port(gateway))
    try:
        try:
            writer.write(data)
            await writer.drain()
            if close_write:
                writer.write_eof()
        except ConnectionResetError:
            pass  # the server answered and closed before it read it all: what it answered is still there
        return await read_until_closed(reader)
    finally:
        writer.close()
        with suppress(ConnectionResetError):
            await writer.wait_closed()


def status_codes(raw: bytes) -> list[int]:
    """The status of every response in a stream of them."""
    return [int(line.split()[1]) for line in raw.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


async def assert_still_serving(gateway: Gateway, slot: str = "Z-1") -> None:
    response = await gateway.hold("show-after", [slot], holder="after")
    assert response.status_code == 201, response.text


# --- Generated bad bodies ---------------------------------------------------------------------------------

IDENTIFIER_CHARS = string.ascii_letters + string.digits + "._:~-"
_identifiers = st.text(IDENTIFIER_CHARS, min_size=1, max_size=12)
_not_a_string = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(), st.lists(st.integers(), max_size=2)
)
_not_an_integer = st.one_of(
    st.text(max_size=5), st.floats(allow_nan=False), st.booleans(), st.lists(st.none())
)
# Characters outside [A-Za-z0-9._:~-]; each is an invalid id on its own.
_bad_id_chars = st.characters(blacklist_characters=IDENTIFIER_CHARS)
_control_chars = st.sampled_from(["\x00", "\x01", "\n", "\t", "\x7f", "\x9f", "\u2028", "\ud800", "\udfff"])


def _bad_string_field(draw: st.DrawFn, body: dict[str, Any], kind: str) -> str:
    """event_id, holder or the slot id: missing, of another type, empty, too long or with a bad character."""
    field = draw(st.sampled_from(["event_id", "slots", "holder"]))
    in_list = field == "slots" and kind not in {"missing", "wrong type"}
    value: Any
    if kind == "missing":
        del body[field]
        return field
    if kind == "wrong type":
        value = draw(st.one_of(_not_a_string, st.text()) if field == "slots" else _not_a_string)
    elif kind == "empty":
        value = ""
    elif kind == "too long":
        value = draw(st.text(IDENTIFIER_CHARS, min_size=129, max_size=200))
    else:
        bad_char = draw(_control_chars if field == "holder" else st.one_of(_bad_id_chars, _control_chars))
        value = draw(_identifiers) + bad_char
    body[field] = [value] if in_list else value
    return field


def _bad_slots(draw: st.DrawFn, body: dict[str, Any], kind: str) -> str:
    if kind == "slot wrong type":
        body["slots"] = ["A-1", draw(st.one_of(_not_a_string, st.just("")))]
    elif kind == "too many slots":
        body["slots"] = draw(st.lists(_identifiers, min_size=11, max_size=40, unique=True))
    else:
        slot = draw(_identifiers)
        body["slots"] = [slot, *draw(st.lists(_identifiers, max_size=3)), slot]
    return "slots"


def _bad_ttl(draw: st.DrawFn, body: dict[str, Any], kind: str) -> str:
    if kind == "ttl out of range":
        body["ttl_seconds"] = draw(st.one_of(st.integers(max_value=0), st.integers(min_value=3601)))
    else:
        body["ttl_seconds"] = draw(_not_an_integer)
    return "ttl_seconds"


def _unknown_field(draw: st.DrawFn, body: dict[str, Any], _: str) -> str:
    field = draw(st.text(string.ascii_letters + "_", min_size=1, max_size=20).filter(lambda k: k not in GOOD))
    body[field] = draw(st.one_of(_not_a_string, st.text(max_size=5)))
    return field


_MUTATIONS = {
    "missing": _bad_string_field,
    "wrong type": _bad_string_field,
    "empty": _bad_string_field,
    "too long": _bad_string_field,
    "bad character": _bad_string_field,
    "slot wrong type": _bad_slots,
    "too many slots": _bad_slots,
    "duplicate slots": _bad_slots,
    "ttl out of range": _bad_ttl,
    "ttl wrong type": _bad_ttl,
    "unknown field": _unknown_field,
}


@st.composite
def invalid_create_bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """One thing wrong with an otherwise good create body: (the raw body, the field the answer must name;
    None for bytes that are not JSON at all)."""
    kind = draw(st.sampled_from([*_MUTATIONS, "not json"]))
    if kind == "not json":
        return draw(st.binary(max_size=80).filter(_not_json)), None
    body: dict[str, Any] = dict(GOOD)
    field = _MUTATIONS[kind](draw, body, kind)
    return json.dumps(body).encode(), field


def _not_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return True
    return False


@pytest.mark.both_create_paths
async def test_a_rejected_request_leaves_no_redis_key_and_no_row(gateway: Gateway) -> None:
    """Property: any body with one thing wrong is a 4xx naming that thing, and writes nothing anywhere."""
    loop = asyncio.get_running_loop()

    def on_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=10)

    def run(client: httpx.Client) -> None:
        @hypothesis.settings(max_examples=100, deadline=None, derandomize=True, database=None)
        @hypothesis.given(
            case=invalid_create_bodies(), idempotency_key=st.text(string.ascii_letters, min_size=1)
        )
        def property_holds(case: tuple[bytes, str | None], idempotency_key: str) -> None:
            raw, field = case
            headers = {"content-type": "application/json", "idempotency-key": idempotency_key}
            response = client.post("/v1/holds", content=raw, headers=headers)
            assert_problem(response, (400, 422), field)
            assert on_loop(written(gateway)) == (NO_ROWS, [])

        property_holds()

    # Hypothesis drives the requests from a thread; the gateway answers them on this event loop.
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        await asyncio.to_thread(run, client)
    await assert_still_serving(gateway)


# --- Lying Content-Length ---------------------------------------------------------------------------------

HOLD_BODY = json.dumps({"event_id": "show-1", "slots": ["X"], "holder": "liar"}).encode()


@pytest.mark.both_create_paths
async def test_content_length_shorter_than_the_body_is_4xx_and_writes_nothing(gateway: Gateway) -> None:
    """The gateway reads Content-Length bytes (truncated JSON: 400); the rest is no request (400, close)."""
    head = request_head(
        "/v1/holds", gateway_port(gateway), {"Content-Type": "application/json", "Content-Length": "20"}
    )

    raw = await raw_exchange(gateway, head + HOLD_BODY)

    # uvicorn may refuse the leftover bytes (and close) before the gateway's own 400 is written.
    codes = status_codes(raw)
    assert codes, raw
    assert all(400 <= code < 500 for code in codes), raw
    await assert_nothing_written(gateway)
    await assert_still_serving(gateway)


@pytest.mark.both_create_paths
@pytest.mark.parametrize("close", ["half-close", "full close"])
async def test_content_length_longer_than_the_body_then_close_writes_nothing(
    gateway: Gateway, close: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The client promises more body than it sends and goes away: no answer it could read but a 4xx, no
    error logged as a gateway failure, nothing written, and the next request is served."""
    head = request_head(
        "/v1/holds", gateway_port(gateway), {"Content-Type": "application/json", "Content-Length": "1000"}
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port(gateway))
    writer.write(head + HOLD_BODY)
    await writer.drain()
    await asyncio.sleep(0.2)  # the gateway is now waiting for the rest of the body
    if close == "half-close":
        writer.write_eof()
        raw = await read_until_closed(reader)
        assert all(400 <= code < 500 for code in status_codes(raw)), raw
    writer.close()
    with suppress(ConnectionResetError):
        await writer.wait_closed()
    await asyncio.sleep(0.2)  # let the gateway notice

    await assert_nothing_written(gateway)
    await assert_still_serving(gateway)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


# --- Content types -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", HOLD_BODY),
        ("text/plain; charset=utf-8", HOLD_BODY),
        ("application/x-www-form-urlencoded", b"event_id=show-1&slots=X&holder=liar"),
        (
            "multipart/form-data; boundary=b0undary",
            b"--b0undary\r\nContent-Disposition: form-data; name=event_id\r\n\r\nshow-1\r\n--b0undary--\r\n",
        ),
        ("application/xml", b"<hold/>"),
    ],
    ids=["text", "text utf-8", "form", "multipart", "xml"],
)
@pytest.mark.both_create_paths
async def test_a_body_that_is_not_json_by_its_content_type_is_415(
    gateway: Gateway, content_type: str, body: bytes
) -> None:
    response = await gateway.client.post("/v1/holds", content=body, headers={"content-type": content_type})

    assert_problem(response, 415, "Content-Type")
    assert response.json()["type"] == "/problems/unsupported-media-type"
    await assert_nothing_written(gateway)


@pytest.mark.parametrize("action", ["extend", "confirm", "cancel"])
async def test_a_transition_body_declared_as_a_form_is_415(gateway: Gateway, action: str) -> None:
    """`curl -d` sends application/x-www-form-urlencoded unless told otherwise."""
    hold = (await gateway.hold("show-1", ["A-1"])).json()

    response = await gateway.client.post(
        f"/v1/holds/{hold['id']}/{action}",
        content=b'{"holder": "alice"' + EXTRA_FIELDS[action] + b"}",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )

    assert_problem(response, 415, "Content-Type")
    assert (await gateway.client.get(f"/v1/holds/{hold['id']}")).json()["status"] == "held"


@pytest.mark.both_create_paths
async def test_a_json_body_without_content_type_is_read_as_json(gateway: Gateway) -> None:
    """Decided: a body with no Content-Type header at all is read as JSON (and strictly decoded, like any
    other); only a body declared as something else is refused with 415. Clients that forget the header are
    common and there is nothing else it could be."""
    port = gateway_port(gateway)
    head = request_head("/v1/holds", port, {"Content-Length": str(len(HOLD_BODY)), "Connection": "close"})

    response = parse_response(await raw_exchange(gateway, head + HOLD_BODY, close_write=False))

    assert response.status_code == 201, response.text
    assert response.json()["slots"] == ["X"]


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "application/x+json"],
)
@pytest.mark.both_create_paths
async def test_json_content_types_are_accepted(gateway: Gateway, content_type: str) -> None:
    response = await gateway.client.post(
        "/v1/holds", content=HOLD_BODY, headers={"content-type": content_type}
    )
    assert response.status_code == 201, response.text


# --- Body size ---------------------------------------------------------------------------------------------


def padded_body(size: int) -> bytes:
    """A good create body of exactly `size` bytes (whitespace pads it)."""
    return HOLD_BODY[:-1] + b" " * (size - len(HOLD_BODY)) + b"}"


@pytest.mark.both_create_paths
async def test_a_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_413(gateway: Gateway) -> None:
    limit = gateway.settings.max_body_bytes
    headers = {"content-type": "application/json"}

    over = await gateway.client.post("/v1/holds", content=padded_body(limit + 1), headers=headers)
    assert_problem(over, 413)
    assert over.json()["type"] == "/problems/body-too-large"
    await assert_nothing_written(gateway)

    at_limit = await gateway.client.post("/v1/holds", content=padded_body(limit), headers=headers)
    assert at_limit.status_code == 201, at_limit.text


@pytest.mark.both_create_paths
async def test_a_chunked_body_over_the_limit_is_413_and_writes_nothing(gateway: Gateway) -> None:
    """No Content-Length to refuse up front: the gateway counts as the chunks arrive."""
    head = request_head(
        "/v1/holds",
        gateway_port(gateway),
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked", "Connection": "close"},
    )
    body = padded_body(gateway.settings.max_body_bytes + 4096)
    chunks = b"".join(
        f"{len(body[i : i + 4096]):x}\r\n".encode() + body[i : i + 4096] + b"\r\n"
        for i in range(0, len(body), 4096)
    )

    raw = await raw_exchange(gateway, head + chunks + b"0\r\n\r\n", close_write=False)

    assert_problem(parse_response(raw), 413)
    await assert_nothing_written(gateway)
    await assert_still_serving(gateway)


# --- Strings Postgres cannot store ------------------------------------------------------------------------


def raw_body(event_id: str, slot: str, holder: str) -> bytes:
    """A create body with the strings put in verbatim: JSON escapes like \\ud800 reach the gateway as such."""
    return f'{{"event_id": "{event_id}", "slots": ["A-1", "{slot}"], "holder": "{holder}"}}'.encode()


@pytest.mark.parametrize(
    "escape", ["\\ud800", "\\udfff", "\\u0000"], ids=["high surrogate", "low surrogate", "NUL"]
)
@pytest.mark.both_create_paths
@pytest.mark.parametrize("field", ["event_id", "slots", "holder"])
async def test_lone_surrogates_and_nul_are_422_naming_the_field(
    gateway: Gateway, field: str, escape: str
) -> None:
    """Postgres text holds neither a lone surrogate nor NUL (Redis would take both): validation must catch
    them, or the insert fails with a 500 after the Redis lease was taken."""
    values = {"event_id": "show-1", "slot": "A-2", "holder": "alice"}
    key = "slot" if field == "slots" else field
    values[key] = f"x{escape}y"

    response = await gateway.client.post(
        "/v1/holds", content=raw_body(**values), headers={"content-type": "application/json"}
    )

    assert_problem(response, 422, field)
    await assert_nothing_written(gateway)


@pytest.mark.parametrize("escape", ["\\ud800", "\\u0000"], ids=["surrogate", "NUL"])
@pytest.mark.parametrize("action", ["extend", "confirm", "cancel"])
async def test_lone_surrogate_or_nul_in_a_transition_holder_is_422(
    gateway: Gateway, action: str, escape: str
) -> None:
    hold = (await gateway.hold("show-1", ["A-1"])).json()

    response = await gateway.client.post(
        f"/v1/holds/{hold['id']}/{action}",
        content=f'{{"holder": "alice{escape}"'.encode() + EXTRA_FIELDS[action] + b"}",
        headers={"content-type": "application/json"},
    )

    assert_problem(response, 422, "holder")
    assert (await gateway.client.get(f"/v1/holds/{hold['id']}")).json()["status"] == "held"


@pytest.mark.both_create_paths
async def test_a_surrogate_pair_is_text_and_accepted(gateway: Gateway) -> None:
    body = raw_body("show-1", "A-2", "fan \\ud83c\\udfab")
    response = await gateway.client.post(
        "/v1/holds", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["holder"] == "fan 🎫"


@pytest.mark.parametrize(
    "query",
    ["holder=a%00b", "holder=%01", "event_id=%00", "status=held%00"],
)
async def test_nul_in_a_listing_query_is_422_not_500(gateway: Gateway, query: str) -> None:
    """Regression: `holder` with a NUL in GET /v1/holds went to Postgres as is, and failed there with 500."""
    response = await gateway.client.get(f"/v1/holds?{query}")
    assert_problem(response, 422, query.partition("=")[0])


def cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "url",
    [
        "/v1/holds?cursor=" + cursor(b'["2026-01-01T00:00:00Z","a\\u0000b"]'),
        "/v1/events/show-1/slots?cursor=" + cursor(b'["a\\u0000b"]'),
    ],
    ids=["holds", "slots"],
)
async def test_a_forged_cursor_with_a_nul_is_422(gateway: Gateway, url: str) -> None:
    response = await gateway.client.get(url)
    assert_problem(response, 422, "cursor")


# --- Many slots --------------------------------------------------------------------------------------------


@pytest.mark.both_create_paths
async def test_ten_thousand_slots_is_a_fast_422_naming_slots(gateway: Gateway) -> None:
    # Three-character ids keep 10,000 of them under the 64 KiB body limit.
    alphabet = string.ascii_letters + string.digits
    slots = [a + b + c for a in alphabet for b in alphabet for c in alphabet][:10_000]
    payload = json.dumps({**GOOD, "slots": slots}, separators=(",", ":")).encode()
    assert len(payload) < gateway.settings.max_body_bytes

    started = time.perf_counter()
    response = await gateway.client.post(
        "/v1/holds", content=payload, headers={"content-type": "application/json"}
    )
    elapsed_s = time.perf_counter() - started

    assert_problem(response, 422, "slots")
    assert elapsed_s < 1, elapsed_s  # about 60 ms on this 2-core machine: two decodes of 10,000 ids
    await assert_nothing_written(gateway)


@pytest.mark.both_create_paths
async def test_the_largest_allowed_number_of_slots_is_held(gateway: Gateway) -> None:
    count = gateway.settings.max_slots_per_hold
    response = await gateway.hold("show-1", [f"S-{i}" for i in range(count)])
    assert response.status_code == 201, response.text
    assert len(response.json()["slots"]) == count

    one_more = await gateway.hold("show-2", [f"S-{i}" for i in range(count + 1)])
    assert_problem(one_more, 422, "slots")


# --- Slow clients ------------------------------------------------------------------------------------------


async def trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()
        await asyncio.sleep(TRICKLE_INTERVAL_S)


async def slow_hold(gateway: Gateway, holder: str, *, trickle_headers: bool, started: asyncio.Event) -> bytes:
    """A hold request for slot X of which 20 bytes, of the headers or of the body, come a byte per 100 ms."""
    body = json.dumps({"event_id": "show-1", "slots": ["X"], "holder": holder}).encode()
    head = request_head(
        "/v1/holds",
        gateway_port(gateway),
        {"Content-Type": "application/json", "Content-Length": str(len(body)), "Connection": "close"},
    )
    data = head + body
    slow_from = len(head) - 20 if trickle_headers else len(data) - 20
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port(gateway))
    try:
        writer.write(data[:slow_from])
        await writer.drain()
        started.set()
        await trickle(writer, data[slow_from : slow_from + 20])
        writer.write(data[slow_from + 20 :])
        return await read_until_closed(reader)
    finally:
        writer.close()
        with suppress(ConnectionResetError):
            await writer.wait_closed()


async def test_slow_clients_do_not_hold_up_a_fast_one_and_lose_when_they_finish(gateway: Gateway) -> None:
    """Two clients trickle a hold request for slot X, one its headers, one its body; meanwhile nothing of
    theirs is in Redis or Postgres, a normal client gets X at once, and the slow ones get 409 at the end."""
    headers_started, body_started = asyncio.Event(), asyncio.Event()
    slow = [
        asyncio.create_task(
            slow_hold(gateway, "slow-headers", trickle_headers=True, started=headers_started)
        ),
        asyncio.create_task(slow_hold(gateway, "slow-body", trickle_headers=False, started=body_started)),
    ]
    await headers_started.wait()
    await body_started.wait()
    await asyncio.sleep(0.3)
    assert await written(gateway) == (NO_ROWS, [])

    started = time.perf_counter()
    fast = await gateway.hold("show-1", ["X"], holder="fast")
    elapsed_s = time.perf_counter() - started

    assert fast.status_code == 201, fast.text
    assert elapsed_s < 1, elapsed_s  # the slow ones still have over a second to go
    assert not any(task.done() for task in slow), "the slow requests finished too soon to prove anything"
    rows, keys = await written(gateway)
    assert rows == {"holds": 1, "hold_slots": 1, "idempotency_keys": 0}
    assert len(keys) == 1, keys  # the fast client's lease on X, nothing else

    for raw in await asyncio.gather(*slow):
        response = parse_response(raw)
        assert_problem(response, 409)
        assert response.json()["conflicts"] == ["X"]
    assert (await written(gateway))[0] == {"holds": 1, "hold_slots": 1, "idempotency_keys": 0}


async def test_fifty_idle_slow_connections_do_not_stop_normal_requests(gateway: Gateway) -> None:
    port = gateway_port(gateway)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
    try:
        for i, (_, writer) in enumerate(idle):
            # Half send a partial request line, half partial headers; none ever finishes.
            writer.write(b"POST /v1/ho" if i % 2 else request_head("/v1/holds", port, {"X-Slow": "1"})[:-4])
            await writer.drain()
        await asyncio.sleep(0.2)

        started = time.perf_counter()
        created = await gateway.hold("show-1", ["A-1"])
        read = await gateway.client.get(f"/v1/holds/{created.json()['id']}")
        ready = await gateway.client.get("/ready")
        elapsed_s = time.perf_counter() - started

        assert (created.status_code, read.status_code, ready.status_code) == (201, 200, 200)
        assert elapsed_s < 1, elapsed_s
        assert all(not reader.at_eof() for reader, _ in idle)  # still connected, still idle
    finally:
        for _, writer in idle:
            writer.close()


# --- Deep nesting -------------------------------------------------------------------------------------------

DEEP = b"[" * 1000 + b"]" * 1000  # 2,000 bytes nested 1,000 deep


def nested_slots(levels: int) -> bytes:
    """A create body nested `levels` deep: the object, then `slots` as lists in lists around one id."""
    inner = b"[" * (levels - 1) + b'"A-1"' + b"]" * (levels - 1)
    return b'{"event_id": "show-1", "slots": ' + inner + b', "holder": "alice"}'


def assert_no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


@pytest.mark.both_create_paths
@pytest.mark.parametrize("where", ["unknown field", "slots"])
@pytest.mark.parametrize("action", ["create", "extend", "confirm", "cancel"])
async def test_a_body_nested_a_thousand_deep_is_422_and_writes_nothing(
    gateway: Gateway, action: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The depth is capped before any decoder sees the body: 2 KB nested 1,000 deep reaches Python's recursion
    limit in a decoder that descends into it (msgspec into a value typed Any, Python's json always), so no
    decoder may see it, wherever it sits and whatever the route. No error logged, nothing written."""
    deep_field = b'"x": ' + DEEP if where == "unknown field" else b'"slots": [' + DEEP + b"]"
    if action == "create":
        path, before = "/v1/holds", (NO_ROWS, [])
        body = b"{" + deep_field + b', "event_id": "show-1", "holder": "alice"}'
    else:
        hold = (await gateway.hold("show-1", ["A-1"])).json()
        path, before = f"/v1/holds/{hold['id']}/{action}", await written(gateway)
        body = b"{" + deep_field + b', "holder": "alice"' + EXTRA_FIELDS[action] + b"}"

    response = await gateway.client.post(path, content=body, headers={"content-type": "application/json"})

    assert_problem(response, 422)
    assert response.json()["type"] == "/problems/invalid-request"
    assert response.json()["detail"] == "the body nests deeper than 32 levels"
    assert await written(gateway) == before
    if action != "create":
        assert (await gateway.client.get(f"/v1/holds/{hold['id']}")).json()["status"] == "held"
    assert_no_error_logged(caplog)


@pytest.mark.both_create_paths
async def test_nesting_up_to_the_limit_reaches_validation_and_brackets_in_strings_do_not_count(
    gateway: Gateway,
) -> None:
    headers = {"content-type": "application/json"}

    at_limit = await gateway.client.post("/v1/holds", content=nested_slots(32), headers=headers)
    over = await gateway.client.post("/v1/holds", content=nested_slots(33), headers=headers)
    unclosed = await gateway.client.post("/v1/holds", content=b'{"slots": ' + b"[" * 40, headers=headers)

    assert_problem(at_limit, 422, "slots")  # a list where an id belongs: validation's answer, not the cap's
    assert "nests" not in at_limit.json()["detail"]
    assert over.json()["detail"] == unclosed.json()["detail"] == "the body nests deeper than 32 levels"
    await assert_nothing_written(gateway)

    normal = await gateway.client.post("/v1/holds", content=nested_slots(2), headers=headers)
    assert normal.status_code == 201, normal.text
    # 80 brackets, and an escaped quote between them, all inside one string: no nesting at all.
    holder = "[" * 40 + '"' + "{" * 40
    bracketed = await gateway.hold("show-1", ["A-2"], holder=holder)
    assert bracketed.status_code == 201, bracketed.text
    assert bracketed.json()["holder"] == holder


# --- Holders that imitate others ---------------------------------------------------------------------------

LOOK_ALIKES = [
    pytest.param("\ufeff", "U+FEFF (ZERO WIDTH NO-BREAK SPACE), a format character", id="lone BOM"),
    pytest.param("adm\u202enim\u200b", "U+202E (RIGHT-TO-LEFT OVERRIDE), a format character", id="RLO+ZWSP"),
    pytest.param("alice\u00a0", "U+00A0 (NO-BREAK SPACE), a space other than U+0020", id="no-break space"),
    pytest.param("al\u3000ice", "U+3000 (IDEOGRAPHIC SPACE), a space other than U+0020", id="U+3000"),
    pytest.param("alice\u0378", "U+0378, an unassigned code point", id="unassigned"),
    pytest.param("alice\ue000", "U+E000, a private-use character", id="private use"),
]


@pytest.mark.both_create_paths
@pytest.mark.parametrize(("holder", "detail"), LOOK_ALIKES)
async def test_a_holder_that_could_pass_for_another_is_422_naming_holder(
    gateway: Gateway, holder: str, detail: str
) -> None:
    """Regression: invisible, bidirectional and unassigned characters made holders that look like others."""
    created = await gateway.hold("show-1", ["A-1"], holder=holder)
    assert_problem(created, 422, "holder")
    assert created.json()["detail"] == f"`holder` contains {detail}"
    await assert_nothing_written(gateway)

    hold = (await gateway.hold("show-1", ["A-1"])).json()
    for action in ("extend", "confirm", "cancel"):
        body = {"holder": holder} | ({"ttl_seconds": 30} if action == "extend" else {})
        response = await gateway.client.post(f"/v1/holds/{hold['id']}/{action}", json=body)
        assert_problem(response, 422, "holder")
    assert (await gateway.client.get(f"/v1/holds/{hold['id']}")).json()["status"] == "held"
    listed = await gateway.client.get("/v1/holds", params={"holder": holder})
    assert_problem(listed, 422, "holder")


async def test_a_holder_in_any_script_with_plain_spaces_is_accepted(gateway: Gateway) -> None:
    holder = "Zoë Ångström 山田 太郎 🎫 o'Brien"

    response = await gateway.hold("show-1", ["A-1"], holder=holder)

    assert response.status_code == 201, response.text
    assert response.json()["holder"] == holder


@pytest.mark.both_create_paths
async def test_two_spellings_of_one_holder_are_one_holder(gateway: Gateway) -> None:
    """ "José" as e + U+0301 (combining acute) and as U+00E9: stored, compared and returned in NFC, so the
    second create of the same slot by the other spelling is the same holder's retry (200), not a rival."""
    decomposed, composed = "Jose\u0301", "Jos\u00e9"

    first = await gateway.hold("show-1", ["A-1"], holder=decomposed)
    retry = await gateway.hold("show-1", ["A-1"], holder=composed)

    assert (first.status_code, retry.status_code) == (201, 200), (first.text, retry.text)
    assert first.json()["holder"] == retry.json()["holder"] == composed
    assert retry.json()["id"] == first.json()["id"]
    listed = await gateway.client.get("/v1/holds", params={"holder": decomposed})
    assert [hold["id"] for hold in listed.json()["holds"]] == [first.json()["id"]]
    hold_id = first.json()["id"]
    confirmed = await gateway.client.post(f"/v1/holds/{hold_id}/confirm", json={"holder": decomposed})
    assert confirmed.status_code == 200, confirmed.text


async def test_a_holders_length_is_counted_after_normalization(gateway: Gateway) -> None:
    """128 accented letters sent decomposed are 256 code points, 128 characters once normalized."""
    accepted = await gateway.hold("show-1", ["A-1"], holder="e\u0301" * 128)
    refused = await gateway.hold("show-1", ["A-2"], holder="e\u0301" * 129)

    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["holder"] == "\u00e9" * 128
    assert_problem(refused, 422, "holder")
    assert refused.json()["detail"] == "`holder` must be 1 to 128 characters after NFC normalization, got 129"
