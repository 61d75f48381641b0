"""Metrics, request ids and logs: what an operator reads must match what happened."""

import asyncio
import io
import json
import logging
import logging.config
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.embedded import free_port
from gateway.logs import RequestContext, logging_config, serving
from tests.conftest import make_settings
from tests.support import Gateway, released_together, running_gateway, statuses
from tests.test_cli import clean_env
from tests.test_cli import serving as serving_gateway

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(gateway: Gateway) -> Samples:
    response = await gateway.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_metrics_count_a_storm_by_layer_and_route(gateway: Gateway) -> None:
    # The event's first request synchronizes it in Redis (and asks again): keep that out of the counts.
    warm_up = (await gateway.hold("show-1", ["A-0"], holder="warm-up")).json()
    await gateway.client.post(f"/v1/holds/{warm_up['id']}/cancel", json={"holder": "warm-up"})
    before = await scrape(gateway)
    responses = await released_together(
        50, lambda i: gateway.post("/v1/holds", {"event_id": "show-1", "slots": ["A-1"], "holder": f"h{i}"})
    )
    winner = next(r.json() for r in responses if r.status_code == 201)
    await gateway.client.post(f"/v1/holds/{winner['id']}/confirm", json={"holder": winner["holder"]})
    after = await scrape(gateway)

    assert statuses(responses) == {201: 1, 409: 49}
    assert delta(before, after, "gateway_holds_created_total") == 1
    assert delta(before, after, "gateway_holds_rejected_total", layer="redis") == 49
    assert delta(before, after, "gateway_holds_rejected_total", layer="postgres") == 0
    assert delta(before, after, "gateway_holds_confirmed_total") == 1
    assert delta(before, after, "gateway_hold_time_to_confirm_seconds_count") == 1
    assert delta(before, after, "gateway_hold_lifetime_seconds_count", outcome="confirmed") == 1
    route = {"method": "POST", "route": "/v1/holds"}
    assert delta(before, after, "gateway_http_requests_total", **route, status="201") == 1
    assert delta(before, after, "gateway_http_requests_total", **route, status="409") == 49
    assert delta(before, after, "gateway_http_request_duration_seconds_count", **route) == 50
    # The storm's creates share acquire.lua calls: 50 members, in fewer calls.
    assert delta(before, after, "gateway_acquire_batch_size_sum") == 50
    assert 1 <= delta(before, after, "gateway_redis_call_duration_seconds_count", operation="acquire") < 50
    # Only the winner reached Postgres: one claim, a group commit of one.
    claims = delta(before, after, "gateway_postgres_query_duration_seconds_count", query="claim_holds_batch")
    assert claims == 1
    assert delta(before, after, "gateway_claim_batch_size_count") == 1
    assert delta(before, after, "gateway_claim_batch_size_sum") == 1
    # Read from Postgres at scrape time: this test's database has the one confirmed hold.
    assert value(after, "gateway_active_holds") == 0
    assert value(after, "gateway_confirmed_slots") == 1
    assert value(after, "gateway_workers") >= 1


async def test_metrics_count_postgres_rejections_in_db_only_mode(db_only_gateway: Gateway) -> None:
    before = await scrape(db_only_gateway)
    responses = await released_together(
        20,
        lambda i: db_only_gateway.post("/v1/holds", {"event_id": "e", "slots": ["s"], "holder": f"h{i}"}),
    )
    after = await scrape(db_only_gateway)

    assert statuses(responses) == {201: 1, 409: 19}
    assert delta(before, after, "gateway_holds_rejected_total", layer="postgres") == 19
    assert delta(before, after, "gateway_holds_rejected_total", layer="redis") == 0


async def test_sweeper_metrics_and_lifetimes(database_url: str, redis_url: str, key_prefix: str) -> None:
    settings = make_settings(database_url, redis_url, key_prefix, sweep_interval_s=0.2)
    async with running_gateway(settings) as gateway:
        before = await scrape(gateway)
        holds = [await gateway.hold("show-1", [f"A-{i}"], ttl_seconds=1) for i in range(3)]
        cancelled = await gateway.hold("show-1", ["B-1"], ttl_seconds=60)
        await gateway.client.post(f"/v1/holds/{cancelled.json()['id']}/cancel", json={"holder": "alice"})
        await asyncio.sleep(1.8)
        after = await scrape(gateway)

    assert {h.status_code for h in holds} == {201}
    assert delta(before, after, "gateway_holds_expired_total") == 3
    assert delta(before, after, "gateway_sweeper_rows_total") == 3
    assert delta(before, after, "gateway_sweeper_batches_total") >= 3
    assert delta(before, after, "gateway_holds_cancelled_total") == 1
    assert delta(before, after, "gateway_hold_lifetime_seconds_count", outcome="expired") == 3
    assert delta(before, after, "gateway_hold_lifetime_seconds_count", outcome="cancelled") == 1
    # Each expired hold lived its 1 s TTL.
    lifetime_sum = delta(before, after, "gateway_hold_lifetime_seconds_sum", outcome="expired")
    assert 2.9 < lifetime_sum < 3.1
    assert value(after, "gateway_sweeper_lag_seconds") == 0


async def test_degraded_mode_shows_in_metrics(database_url: str, key_prefix: str) -> None:
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    async with running_gateway(make_settings(database_url, nothing_listens, key_prefix)) as gateway:
        samples = await scrape(gateway)
    assert value(samples, "gateway_degraded") == 1
    assert value(samples, "gateway_mode_transitions_total", mode="db-only") >= 1


@pytest.fixture(name="logs")
def fx_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gateway")
    return caplog


async def test_request_ids_are_echoed_or_made(gateway: Gateway) -> None:
    given = await gateway.client.get("/health", headers={"X-Request-ID": "frontend-42.a"})
    made = await gateway.client.get("/health")
    unfit = await gateway.client.get("/health", headers={"X-Request-ID": "has spaces\tand tabs"})
    too_long = await gateway.client.get("/health", headers={"X-Request-ID": "x" * 129})

    assert given.headers["x-request-id"] == "frontend-42.a"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", unfit.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", too_long.headers["x-request-id"])


async def test_each_request_logs_one_line_with_route_status_hold_and_layer(
    gateway: Gateway, logs: pytest.LogCaptureFixture
) -> None:
    logs.set_level(logging.DEBUG, logger="gateway.holds")
    won = await gateway.post(
        "/v1/holds",
        {"event_id": "show-1", "slots": ["A-1"], "holder": "alice"},
        headers={"X-Request-ID": "req-won"},
    )
    lost = await gateway.post(
        "/v1/holds",
        {"event_id": "show-1", "slots": ["A-1"], "holder": "bob"},
        headers={"X-Request-ID": "req-lost"},
    )
    await gateway.client.get("/no/such/route", headers={"X-Request-ID": "req-404"})
    await gateway.post("/v1/holds", {"event_id": "show-1"}, headers={"X-Request-ID": "req-422"})

    records = logs.records
    lines = {line["request_id"]: line for line in gateway.access_lines()}
    hold_id = won.json()["id"]

    assert lost.status_code == 409
    assert {k: lines["req-won"][k] for k in ("route", "status", "hold_id", "layer")} == {
        "route": "/v1/holds",
        "status": 201,
        "hold_id": hold_id,
        "layer": "postgres",
    }
    assert lines["req-won"]["latency_ms"] > 0
    assert (lines["req-lost"]["status"], lines["req-lost"]["layer"], lines["req-lost"]["hold_id"]) == (
        409,
        "redis",
        None,
    )
    assert (lines["req-404"]["route"], lines["req-404"]["status"]) == ("unmatched", 404)
    assert lines["req-422"]["status"] == 422
    # The creation itself is logged too (at DEBUG: its request line is the one at INFO), carrying the
    # request id of the request that made it.
    created = [r for r in records if r.name == "gateway.holds" and getattr(r, "hold_id", None) == hold_id]
    assert [(r.request_id, r.levelno) for r in created] == [("req-won", logging.DEBUG)]  # type: ignore[attr-defined]
    # No bodies, no holders in the request lines.
    assert all("alice" not in json.dumps(line) for line in lines.values())


def test_json_log_lines_parse_and_carry_the_request_id() -> None:
    stream = io.StringIO()
    config = logging_config("INFO", "json")
    config["handlers"]["default"]["stream"] = stream
    config["loggers"] = {"gateway.test": {"handlers": ["default"], "propagate": False, "level": "INFO"}}
    del config["root"]
    logging.config.dictConfig(config)
    logger = logging.getLogger("gateway.test")
    try:
        with serving(RequestContext("req-7")):
            logger.info("hold %s confirmed", "H1", extra={"hold_id": "H1", "status": "confirmed"})
        logger.warning("redis unavailable: db-only mode", extra={"mode": "db-only"})
    finally:
        logger.handlers.clear()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())

    assert {k: first[k] for k in ("level", "logger", "message", "request_id", "hold_id", "status")} == {
        "level": "INFO",
        "logger": "gateway.test",
        "message": "hold H1 confirmed",
        "request_id": "req-7",
        "hold_id": "H1",
        "status": "confirmed",
    }
    assert isinstance(first["pid"], int)
    assert datetime.fromisoformat(first["time"]).tzinfo is not None  # ISO 8601 with its zone
    assert second["request_id"] is None
    assert second["mode"] == "db-only"


@pytest.mark.timeout(120)
def test_metrics_add_up_across_two_workers(database_url: str, redis_url: str, key_prefix: str) -> None:
    env = clean_env(
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_REDIS_URL=redis_url,
        GATEWAY_REDIS_KEY_PREFIX=key_prefix,
        GATEWAY_LOG_FORMAT="json",
    )

    def hold(i: int) -> int:
        body = {"event_id": f"show-{i % 10}", "slots": ["A-1"], "holder": f"h{i}"}
        with httpx.Client(base_url=url, timeout=30) as client:  # a connection of its own: any worker
            return client.post("/v1/holds", json=body).status_code

    with serving_gateway(["--workers", "2"], env, free_port()) as url:
        with ThreadPoolExecutor(16) as pool:
            codes = Counter(pool.map(hold, range(300)))
        samples = parse_metrics(httpx.get(f"{url}/metrics").text)
    output: str = serving_gateway.last_output  # type: ignore[attr-defined]

    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    pids_serving_holds = {line["pid"] for line in lines if line.get("route") == "/v1/holds"}
    assert codes == {201: 10, 409: 290}
    assert len(pids_serving_holds) == 2, "the requests should have reached both workers"
    assert value(samples, "gateway_workers") == 2
    assert value(samples, "gateway_holds_created_total") == 10
    assert value(samples, "gateway_holds_rejected_total", layer="redis") == 290
    route = {"method": "POST", "route": "/v1/holds"}
    assert value(samples, "gateway_http_requests_total", **route, status="409") == 290
    assert value(samples, "gateway_http_request_duration_seconds_count", **route) == 300
    assert value(samples, "gateway_active_holds") == 10
