"""The access log: a whole JSON line per request, every request but the sampled hold-creation 409s, written
off the request's path and all of it on a graceful stop."""

import json
import math
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import msgspec
import pytest
from litestar import get

from gateway.access_log import PIPE_BUF_BYTES, AccessLine, AccessLog, encode_chunks
from gateway.embedded import free_port
from gateway.logs import RequestContext, serving
from gateway.observability import ObservedLitestar
from tests.conftest import make_settings
from tests.support import Gateway, released_together, running_gateway, statuses
from tests.test_cli import GATEWAY, clean_env
from tests.test_observability import delta, scrape

# What a line says besides its request's facts (time, pid and latency vary; checked apart).
VARYING = ("time", "pid", "latency_ms")


def facts(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k not in VARYING}


def by_request_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["request_id"]: line for line in lines}


async def test_every_kind_of_answer_gets_one_whole_line(gateway: Gateway) -> None:
    won = await gateway.post(
        "/v1/holds", {"event_id": "show-1", "slots": ["A-1"], "holder": "alice"}, {"X-Request-ID": "req-201"}
    )
    hold_id = won.json()["id"]
    await gateway.post(
        "/v1/holds", {"event_id": "show-1", "slots": ["A-1"], "holder": "bob"}, {"X-Request-ID": "req-409"}
    )
    await gateway.post(f"/v1/holds/{hold_id}/cancel", {"holder": "alice"}, {"X-Request-ID": "req-200"})
    # Confirming a cancelled hold: a 409 of another route, never sampled.
    await gateway.post(
        f"/v1/holds/{hold_id}/confirm", {"holder": "alice"}, {"X-Request-ID": "req-409-confirm"}
    )
    await gateway.client.get("/v1/holds/no-such-hold", headers={"X-Request-ID": "req-404"})
    await gateway.client.get("/no/such/route", headers={"X-Request-ID": "req-unmatched"})
    await gateway.post("/v1/holds", {"event_id": "show-1"}, {"X-Request-ID": "req-422"})

    lines = by_request_id(gateway.access_lines())

    def line(method: str, route: str, path: str, status: int, *hold_layer: str | None) -> dict[str, Any]:
        hold, layer = hold_layer
        return {
            "level": "INFO",
            "logger": "gateway.access",
            "message": f"{method} {route} {status}",
            "method": method,
            "route": route,
            "path": path,
            "status": status,
            "hold_id": hold,
            "layer": layer,
        }

    held = f"/v1/holds/{hold_id}"
    expected = {
        "req-201": line("POST", "/v1/holds", "/v1/holds", 201, hold_id, "postgres"),
        # The worker's first hold-creation 409 is logged, standing for the next 99 too.
        "req-409": {**line("POST", "/v1/holds", "/v1/holds", 409, None, "redis"), "sampled_1_in": 100},
        "req-200": line("POST", "/v1/holds/{hold_id}/cancel", f"{held}/cancel", 200, hold_id, "postgres"),
        "req-409-confirm": line(
            "POST", "/v1/holds/{hold_id}/confirm", f"{held}/confirm", 409, hold_id, "postgres"
        ),
        "req-404": line("GET", "/v1/holds/{hold_id}", "/v1/holds/no-such-hold", 404, None, None),
        "req-unmatched": line("GET", "unmatched", "/no/such/route", 404, None, None),
        "req-422": line("POST", "/v1/holds", "/v1/holds", 422, None, None),
    }
    for request_id, line in expected.items():
        assert facts(lines[request_id]) == {**line, "request_id": request_id}, lines[request_id]
    for request_id in expected:
        line = lines[request_id]
        assert datetime.fromisoformat(line["time"]).tzinfo is not None  # ISO 8601, UTC
        assert line["pid"] == os.getpid()  # in-process gateway: this process
        assert line["latency_ms"] > 0
    # Field names and order as the stdlib JSON formatter wrote them, `sampled_1_in` only where sampled.
    assert list(lines["req-201"]) == [
        "level", "logger", "pid", "message", "request_id", "method", "route", "path", "status",
        "latency_ms", "hold_id", "layer", "time",
    ]  # fmt: skip
    # No bodies, no holders.
    assert "alice" not in json.dumps(list(lines.values()))


async def test_a_server_error_gets_its_line() -> None:
    """A handler that raises: Litestar answers 500, and the line says so (the gateway's routes do not
    fail on demand, so a route of its own; the same ObservedLitestar and access log)."""

    @get("/boom", sync_to_thread=False)
    def boom() -> None:
        raise RuntimeError("boom")

    chunks: list[bytes] = []
    app = ObservedLitestar(route_handlers=[boom], logging_config=None)
    app.access_log = AccessLog(sink=chunks.append)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.get("/boom", headers={"X-Request-ID": "req-500"})
    app.access_log.flush()
    [line] = [json.loads(line) for chunk in chunks for line in chunk.splitlines()]

    assert response.status_code == 500
    assert {k: line[k] for k in ("request_id", "route", "status", "message")} == {
        "request_id": "req-500",
        "route": "/boom",
        "status": 500,
        "message": "GET /boom 500",
    }


@pytest.mark.timeout(120)
async def test_hold_creation_409s_are_sampled_exactly_and_everything_else_is_logged(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """A storm on one seat, released at once beside other requests: 1 of every 7 hold-creation 409s has a
    line (the 1st, 8th, ...), the others are counted in gateway_access_log_skipped_total; the winner, the
    404s and the 409s of another route all have theirs."""
    sample, contenders, lookups, conflicts = 7, 150, 30, 20
    settings = make_settings(database_url, redis_url, key_prefix, access_log_409_sample=sample)
    async with running_gateway(settings) as gateway:
        # Cancelled holds that a confirm will refuse with 409 (invalid transition).
        cancelled = []
        for i in range(conflicts):
            hold_id = (await gateway.hold("other", [f"C-{i}"], holder="carol")).json()["id"]
            await gateway.post(f"/v1/holds/{hold_id}/cancel", {"holder": "carol"})
            cancelled.append(hold_id)
        before = await scrape(gateway)

        def request(i: int) -> Any:
            headers = {"X-Request-ID": f"r-{i}"}
            if i < contenders:
                body = {"event_id": "show-1", "slots": ["A-1"], "holder": f"h{i}"}
                return gateway.post("/v1/holds", body, headers)
            if i < contenders + lookups:
                return gateway.client.get(f"/v1/holds/missing-{i}", headers=headers)
            return gateway.post(
                f"/v1/holds/{cancelled[i - contenders - lookups]}/confirm", {"holder": "carol"}, headers
            )

        responses = await released_together(contenders + lookups + conflicts, request)
        lines = [line for line in gateway.access_lines() if line["request_id"].startswith("r-")]
        after = await scrape(gateway)

    answered = {f"r-{i}": r.status_code for i, r in enumerate(responses)}
    storm = [answered[f"r-{i}"] for i in range(contenders)]
    rejected = contenders - 1
    assert Counter(storm) == {201: 1, 409: rejected}
    assert statuses(responses[contenders:]) == {404: lookups, 409: conflicts}
    logged = Counter((line["route"], line["status"]) for line in lines)
    assert logged == {
        ("/v1/holds", 201): 1,
        ("/v1/holds", 409): math.ceil(rejected / sample),
        ("/v1/holds/{hold_id}", 404): lookups,
        ("/v1/holds/{hold_id}/confirm", 409): conflicts,
    }
    # Each line is its request's answer; only the sampled ones carry the rate.
    assert all(answered[line["request_id"]] == line["status"] for line in lines)
    assert {
        line.get("sampled_1_in") for line in lines if line["route"] == "/v1/holds" and line["status"] == 409
    } == {sample}
    assert all(
        "sampled_1_in" not in line for line in lines if (line["route"], line["status"]) != ("/v1/holds", 409)
    )
    skipped = rejected - math.ceil(rejected / sample)
    assert delta(before, after, "gateway_access_log_skipped_total") == skipped


@pytest.mark.timeout(120)
async def test_text_format_goes_through_stdlib_logging_sampled_alike(
    database_url: str, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="gateway.access")
    settings = make_settings(database_url, redis_url, key_prefix, log_format="text", access_log_409_sample=2)
    async with running_gateway(settings) as gateway:
        for i in range(5):
            body = {"event_id": "show-1", "slots": ["A-1"], "holder": f"h{i}"}
            await gateway.post("/v1/holds", body, {"X-Request-ID": f"t-{i}"})
        assert gateway.access_lines() == []  # nothing on the JSON sink
    records = [r for r in caplog.records if r.name == "gateway.access" and r.request_id.startswith("t-")]  # type: ignore[attr-defined]

    # t-0 wins; of the four 409s, the 1st and 3rd are logged.
    assert [(r.request_id, r.status, getattr(r, "sampled_1_in", None)) for r in records] == [  # type: ignore[attr-defined]
        ("t-0", 201, None),
        ("t-1", 409, 2),
        ("t-3", 409, 2),
    ]
    assert records[0].getMessage() == "POST /v1/holds 201"


def test_writes_are_whole_lines_within_pipe_buf() -> None:
    """Every chunk is whole lines of at most PIPE_BUF bytes (a pipe never interleaves such writes), except
    a single line longer than that, which is a chunk of its own."""
    now = datetime.now().astimezone()

    def line(path_length: int) -> AccessLine:
        return AccessLine(
            level="INFO", logger="gateway.access", pid=1, message="GET unmatched 404", request_id="req",
            method="GET", route="unmatched", path="/" + "p" * path_length, status=404, latency_ms=1.0,
            hold_id=None, layer=None, time=now,
        )  # fmt: skip

    lines = [line(n) for n in (10, 300, 3000, 5000, 10, 3700, 20, 1)] + [line(50) for _ in range(100)]
    surrogate = msgspec.structs.replace(line(5), path="/\ud800")  # UTF-8 cannot encode it: escaped
    chunks = list(encode_chunks([*lines, surrogate]))
    decoded = [json.loads(text) for chunk in chunks for text in chunk.splitlines()]

    assert [d["path"] for d in decoded] == [*(ln.path for ln in lines), "/\\ud800"]
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    assert all(len(chunk) <= PIPE_BUF_BYTES or chunk.count(b"\n") == 1 for chunk in chunks)
    assert sum(len(chunk) > PIPE_BUF_BYTES for chunk in chunks) == 1  # the 5000-character path's line
    assert len(chunks) < len(lines) / 5  # batched, not one write per line


def test_lines_written_at_once_until_the_flush_runs() -> None:
    """Outside a running worker (no periodic flush), a line is written as it is made: none waits forever."""
    chunks: list[bytes] = []
    access_log = AccessLog(sink=chunks.append)
    with serving(RequestContext("req-1")) as context:
        access_log.record("GET", "/health", "/health", 200, 0.001, context)
    assert [json.loads(chunk)["request_id"] for chunk in chunks] == ["req-1"]


@pytest.mark.timeout(180)
def test_a_graceful_stop_writes_every_buffered_line_from_every_worker(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """`gateway serve --workers 2`, standard error a pipe, lines flushed only every 10 s: N requests, then
    SIGTERM. Every request has its line, every line is whole JSON (the two workers never cut each other's),
    and both workers logged."""
    requests = 400
    env = clean_env(
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_REDIS_URL=redis_url,
        GATEWAY_REDIS_KEY_PREFIX=key_prefix,
        GATEWAY_ACCESS_LOG_FLUSH_INTERVAL_S="10",
        GATEWAY_ACCESS_LOG_409_SAMPLE="1",
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [*GATEWAY, "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    output = bytearray()
    reader = threading.Thread(target=lambda: _drain(process, output))
    reader.start()
    try:
        _wait_until_both_workers_serve(process, url, output)

        def one(i: int) -> int:
            with httpx.Client(base_url=url, timeout=30) as client:  # a connection of its own: either worker
                headers = {"X-Request-ID": f"n-{i}"}
                if i % 2:
                    return client.get(f"/v1/holds/missing-{i}", headers=headers).status_code
                body = {"event_id": f"show-{i % 20}", "slots": ["A-1"], "holder": f"h{i}"}
                return client.post("/v1/holds", json=body, headers=headers).status_code

        with ThreadPoolExecutor(16) as pool:
            answered = {f"n-{i}": status for i, status in enumerate(pool.map(one, range(requests)))}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        reader.join(timeout=30)
        assert process.stderr is not None
        process.stderr.close()
    text = output.decode()
    objects = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    served = {
        o["request_id"]: o
        for o in objects
        if o.get("logger") == "gateway.access" and o["request_id"].startswith("n-")
    }

    assert Counter(answered.values()) == {404: requests // 2, 201: 10, 409: requests // 2 - 10}
    assert process.returncode is not None
    # Every line is a whole object: none starts mid-line or was cut.
    assert all(
        line.startswith("{") and line.endswith("}") for line in text.splitlines() if "gateway.access" in line
    )
    assert {request_id: line["status"] for request_id, line in served.items()} == answered
    assert len({line["pid"] for line in served.values()}) == 2


def _drain(process: "subprocess.Popen[bytes]", output: bytearray) -> None:
    assert process.stderr is not None
    while chunk := process.stderr.read1(65536):
        output += chunk


def _wait_until_both_workers_serve(process: "subprocess.Popen[bytes]", url: str, output: bytearray) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gateway exited: {output.decode(errors='replace')}")
        try:
            ready = httpx.get(f"{url}/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            ready = False
        if ready and bytes(output).count(b"Application startup complete.") >= 2:
            return
        time.sleep(0.2)
    pytest.fail(f"gateway did not become ready: {output.decode(errors='replace')}")
