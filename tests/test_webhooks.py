"""Webhooks: every hold event reaches each endpoint at least once, in order per hold, signed (Standard
Webhooks), whatever the receiver does (fails, hangs, answers slowly, is down, redirects) and whatever happens
to the gateway (a worker killed mid-delivery, two gateways on one database). Real receivers on real sockets
(tests/receiver.py); every signature is checked with the `standardwebhooks` package."""

import asyncio
import base64
import itertools
import json
import re
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from gateway.config import ConfigError, Settings
from gateway.webhooks import LEASE_MARGIN_S
from tests.conftest import make_settings
from tests.receiver import Answer, Received, Receiver
from tests.support import Gateway, eventually, released_together, running_gateway, statuses
from tests.test_cli import clean_env
from tests.test_faults_postgres import doomed_gateway
from tests.test_ops_cli import gateway_command

ENDPOINTS = "/v1/webhook-endpoints"
Json = dict[str, Any]


def quick_settings(database_url: str, redis_url: str, key_prefix: str, **overrides: object) -> Settings:
    """Retries within a fraction of a second and a short attempt budget: the tests' receivers recover fast."""
    values: dict[str, object] = {
        "webhook_timeout_s": 1.0,
        "webhook_retry_base_s": 0.05,
        "webhook_retry_max_s": 0.25,
    }
    return make_settings(database_url, redis_url, key_prefix, **(values | overrides))


@pytest.fixture(name="quick_gateway")
async def fx_quick_gateway(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Gateway]:
    async with running_gateway(quick_settings(database_url, redis_url, key_prefix)) as gateway:
        yield gateway


@pytest.fixture(name="receiver")
async def fx_receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as receiver:
        yield receiver


async def add_endpoint(gateway: Gateway | httpx.AsyncClient, receiver: Receiver) -> Json:
    """Register the receiver (its secret generated), and give it the secret to verify signatures with."""
    client = gateway.client if isinstance(gateway, Gateway) else gateway
    response = await client.post(ENDPOINTS, json={"url": receiver.url})
    assert response.status_code == 201, response.text
    endpoint: Json = response.json()
    receiver.secret = endpoint["secret"]
    return endpoint


async def create(gateway: Gateway, slot: str, holder: str = "alice", **extra: Any) -> Json:
    response = await gateway.hold("show", [slot], holder=holder, **extra)
    assert response.status_code == 201, response.text
    hold: Json = response.json()
    return hold


async def act(gateway: Gateway, hold: Json, action: str) -> None:
    response = await gateway.post(f"/v1/holds/{hold['id']}/{action}", {"holder": hold["holder"]})
    assert response.status_code == 200, response.text


async def numbered_events(gateway: Gateway, count: int, within_s: float = 30) -> list[Json]:
    """The feed once it holds `count` events (it numbers committed events every 0.1 s)."""
    deadline = time.monotonic() + within_s
    while True:
        events: list[Json] = (await gateway.client.get("/v1/hold-events?limit=1000")).json()["events"]
        if len(events) >= count:
            assert len(events) == count, events
            return events
        assert time.monotonic() < deadline, f"{len(events)} of {count} events after {within_s} s"
        await asyncio.sleep(0.05)


async def until(check: Callable[[], Awaitable[Json | None]], within_s: float, what: str) -> Json:
    """Poll an async read until it gives something."""
    deadline = time.monotonic() + within_s
    while True:
        found = await check()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"after {within_s} s: {what}"
        await asyncio.sleep(0.05)


async def listed(gateway: Gateway) -> list[Json]:
    response = await gateway.client.get(ENDPOINTS)
    assert response.status_code == 200, response.text
    endpoints: list[Json] = response.json()["webhook_endpoints"]
    return endpoints


async def endpoint_when(gateway: Gateway, condition: Callable[[Json], bool], within_s: float = 30) -> Json:
    """The (one) endpoint as listed, once `condition` holds for it."""

    async def check() -> Json | None:
        [endpoint] = await listed(gateway)
        return endpoint if condition(endpoint) else None

    return await until(check, within_s, "the endpoint never got there")


async def webhook_stats(gateway: Gateway) -> Json:
    stats: Json = (await gateway.client.get("/v1/stats")).json()["webhooks"]
    return stats


def metric(text: str, name: str) -> float:
    """One sample's value from /metrics (0 when absent)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def ids(events: list[Json]) -> set[str]:
    return {str(event["id"]) for event in events}


def overlapping(received: list[Received]) -> list[str]:
    """Webhook ids that were in flight twice at once, as the receiver saw them."""
    found = []
    by_id: dict[str, list[Received]] = {}
    for receipt in received:
        by_id.setdefault(receipt.webhook_id, []).append(receipt)
    for webhook_id, receipts in by_id.items():
        spans = sorted((r.started, r.ended if r.ended is not None else float("inf")) for r in receipts)
        if any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)):
            found.append(webhook_id)
    return found


def most_at_once(received: list[Received]) -> int:
    """The most requests the receiver had in flight at one moment."""
    edges = sorted(
        [(r.started, 1) for r in received] + [(r.ended or float("inf"), -1) for r in received],
        key=lambda edge: (edge[0], edge[1]),
    )
    at_once = peak = 0
    for _, step in edges:
        at_once += step
        peak = max(peak, at_once)
    return peak


def assert_in_order_per_hold(receiver: Receiver, events: list[Json]) -> None:
    """No event of a hold was sent before the hold's previous event had been answered 2xx."""
    delivered = receiver.delivered()
    by_hold: dict[str, list[str]] = {}
    for event in events:
        by_hold.setdefault(event["hold"]["id"], []).append(str(event["id"]))
    for hold_id, event_ids in by_hold.items():
        for earlier, later in itertools.pairwise(event_ids):
            done = delivered[earlier].ended
            assert done is not None
            early = [r.started for r in receiver.receipts(later) if r.started < done]
            assert early == [], f"hold {hold_id}: event {later} sent before {earlier} was delivered"


def assert_every_event_delivered_as_the_feed_shows_it(receiver: Receiver, events: list[Json]) -> None:
    delivered = receiver.delivered()
    assert delivered.keys() == ids(events)
    assert {webhook_id: r.json() for webhook_id, r in delivered.items()} == {str(e["id"]): e for e in events}
    assert [r.webhook_id for r in receiver.received if not r.verified] == []
    assert {r.headers["content-type"] for r in receiver.received} == {"application/json"}
    # A duplicate is the same event: same id, same body.
    for webhook_id, receipt in delivered.items():
        assert {r.body for r in receiver.receipts(webhook_id)} == {receipt.body}


# ---- the endpoint API ----


async def test_endpoints_are_created_listed_redelivered_and_deleted(gateway: Gateway) -> None:
    created = await gateway.client.post(ENDPOINTS, json={"url": "https://hooks.example/gateway"})
    secret = "whsec_" + base64.b64encode(bytes(range(24))).decode()
    given = await gateway.client.post(ENDPOINTS, json={"url": "http://127.0.0.1:9/x", "secret": secret})

    assert created.status_code == 201, created.text
    first = created.json()
    assert first.keys() == {"id", "url", "secret", "created_at"}
    assert first["url"] == "https://hooks.example/gateway"
    assert first["secret"].startswith("whsec_")
    assert len(base64.b64decode(first["secret"].removeprefix("whsec_"), validate=True)) == 32
    Webhook(first["secret"]).sign("1", datetime.now().astimezone(), b"{}")  # a secret the library takes
    assert given.status_code == 201, given.text
    second = given.json()
    assert second["secret"] == secret
    assert await listed(gateway) == [
        {
            "id": endpoint["id"],
            "url": endpoint["url"],
            "created_at": endpoint["created_at"],
            "pending": 0,
            "delivered": 0,
            "failed": 0,
            "last_delivered_at": None,
            "last_error": None,
            "last_error_at": None,
        }
        for endpoint in (first, second)
    ]

    redelivered = await gateway.client.post(f"{ENDPOINTS}/{first['id']}/redeliver")
    assert (redelivered.status_code, redelivered.json()) == (200, {"redelivered": 0})
    deleted = await gateway.client.delete(f"{ENDPOINTS}/{first['id']}")
    assert deleted.status_code == 204
    assert [endpoint["id"] for endpoint in await listed(gateway)] == [second["id"]]
    for response in (
        await gateway.client.delete(f"{ENDPOINTS}/{first['id']}"),
        await gateway.client.post(f"{ENDPOINTS}/{first['id']}/redeliver"),
        await gateway.client.delete(f"{ENDPOINTS}/not-an-id-at-all"),
        await gateway.client.post(f"{ENDPOINTS}/%00/redeliver"),
    ):
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "/problems/webhook-endpoint-not-found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://hooks.example/x"}, "url"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "hooks.example/x"}, "url"),
        ({"url": "http:///no-host"}, "url"),
        ({"url": "http://hooks .example/"}, "url"),
        ({"url": "http://hooks.example:99999/"}, "url"),
        ({"url": "https://hooks.example/" + "a" * 2048}, "url"),
        ({"url": ""}, "url"),
        ({}, "url"),
        ({"url": "https://hooks.example/", "secret": "abc"}, "secret"),
        ({"url": "https://hooks.example/", "secret": "whsec_!!!notbase64!!!"}, "secret"),
        (
            {"url": "https://hooks.example/", "secret": "whsec_" + base64.b64encode(b"short").decode()},
            "secret",
        ),
        ({"url": "https://hooks.example/", "secret": 42}, "secret"),
        ({"url": "https://hooks.example/", "events": ["hold.created"]}, "events"),
    ],
)
async def test_a_bad_endpoint_is_refused_naming_the_field(gateway: Gateway, body: Json, field: str) -> None:
    response = await gateway.client.post(ENDPOINTS, json=body)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in response.json()["detail"]
    assert await listed(gateway) == []


async def test_events_before_an_endpoint_was_created_are_not_sent(
    quick_gateway: Gateway, receiver: Receiver
) -> None:
    gateway = quick_gateway
    before = await create(gateway, "A-1")
    await numbered_events(gateway, 1)
    await add_endpoint(gateway, receiver)
    after = await create(gateway, "A-2", holder="bob")
    await act(gateway, before, "confirm")  # an event of the older hold, after the endpoint: sent

    events = await numbered_events(gateway, 3)
    sent = [
        event for event in events if event["hold"]["id"] == after["id"] or event["type"] == "hold.confirmed"
    ]
    await receiver.wait_delivered(ids(sent))

    assert [(e["type"], e["hold"]["id"]) for e in sent] == [
        ("hold.created", after["id"]),
        ("hold.confirmed", before["id"]),
    ]
    assert {r.webhook_id for r in receiver.received} == ids(sent)


# ---- at least once, in order, signed ----


async def test_a_flaky_receiver_gets_every_event_signed_and_in_order_per_hold(
    quick_gateway: Gateway, receiver: Receiver
) -> None:
    """The receiver fails (500), then hangs past the attempt's budget, then is down (connections refused),
    then answers slowly; after that, nothing is missing."""
    gateway = quick_gateway
    await add_endpoint(gateway, receiver)
    now = {"answer": Answer(status=500, body=b"down for maintenance")}
    receiver.answer = lambda _: now["answer"]
    holds = [await create(gateway, f"A-{i}", holder=f"h{i}") for i in range(6)]
    await eventually(lambda: sum(r.status == 500 for r in receiver.received) >= 12, 30, "no 500s")

    now["answer"] = Answer(hang=True)
    for hold in holds[:3]:
        await act(gateway, hold, "confirm")
    timed_out = lambda: sum(r.status is None and r.ended is not None for r in receiver.received)  # noqa: E731
    await eventually(lambda: timed_out() >= 6, 30, "no attempt timed out")

    await receiver.stop()
    for hold in holds[3:]:
        await act(gateway, hold, "cancel")
    await endpoint_when(gateway, lambda e: (e["last_error"] or "").startswith("ConnectError"))

    now["answer"] = Answer(delay_s=0.3)  # slow, within the attempt's budget
    await receiver.start()
    events = await numbered_events(gateway, 12)
    await receiver.wait_delivered(ids(events))

    assert_every_event_delivered_as_the_feed_shows_it(receiver, events)
    assert_in_order_per_hold(receiver, events)
    assert Counter(e["type"] for e in events) == {"hold.created": 6, "hold.confirmed": 3, "hold.cancelled": 3}
    assert overlapping(receiver.received) == []
    endpoint = await endpoint_when(gateway, lambda e: e["delivered"] == 12)
    assert (endpoint["pending"], endpoint["failed"]) == (0, 0)


@pytest.mark.timeout(60)
async def test_hold_expired_reaches_the_receiver_within_3_s_of_expires_at(
    gateway: Gateway, receiver: Receiver
) -> None:
    """Under the default sweep interval (1 s): the sweeper marks it, the sequencer numbers it (0.1 s), the
    dispatcher is woken by the feed and sends it. Measured from expires_at (the database's clock) to
    receipt."""
    assert gateway.settings.sweep_interval_s == 1.0
    await add_endpoint(gateway, receiver)
    holds = [await create(gateway, f"E-{i}", holder=f"h{i}", ttl_seconds=1 + i % 3) for i in range(6)]
    expires_at = {hold["id"]: datetime.fromisoformat(hold["expires_at"]).timestamp() for hold in holds}

    def expiries() -> dict[str, float]:
        return {
            r.json()["hold"]["id"]: r.wall
            for r in receiver.delivered().values()
            if r.json()["type"] == "hold.expired"
        }

    await eventually(lambda: len(expiries()) == len(holds), 30, lambda: f"expired: {expiries()}")
    late_s = {hold_id: round(received - expires_at[hold_id], 3) for hold_id, received in expiries().items()}

    print(f"hold.expired received, seconds after expires_at: {sorted(late_s.values())}")
    assert max(late_s.values()) <= 3.0, late_s
    assert min(late_s.values()) >= 0, late_s


@pytest.mark.timeout(120)
async def test_a_gateway_killed_mid_delivery_loses_nothing(
    database_url: str, redis_url: str, key_prefix: str, receiver: Receiver
) -> None:
    """`gateway serve` SIGKILLed while four deliveries hang at the receiver: their leases lapse and another
    gateway sends them again, with the same webhook-id; then everything else, in order."""
    env = clean_env(
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_REDIS_URL=redis_url,
        GATEWAY_REDIS_KEY_PREFIX=key_prefix,
        GATEWAY_WEBHOOK_TIMEOUT_S="3",
        GATEWAY_LOG_LEVEL="WARNING",
    )
    receiver.answer = lambda _: Answer(hang=True)
    async with doomed_gateway(env) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        await add_endpoint(client, receiver)
        holds = []
        for i in range(4):
            response = await client.post(
                "/v1/holds", json={"event_id": "show", "slots": [f"K-{i}"], "holder": "k"}
            )
            assert response.status_code == 201, response.text
            holds.append(response.json())
        await eventually(lambda: len(receiver.in_flight()) == 4, 30, "four deliveries never in flight")
    # Killed (SIGKILL) with the four in flight.
    hung = {r.webhook_id for r in receiver.received}
    assert len(hung) == 4
    receiver.answer = lambda _: Answer()

    settings = quick_settings(database_url, redis_url, key_prefix)
    async with running_gateway(settings) as gateway:
        for hold in holds:
            await act(gateway, hold, "confirm")
        events = await numbered_events(gateway, 8)
        await receiver.wait_delivered(ids(events), within_s=60)

    assert_every_event_delivered_as_the_feed_shows_it(receiver, events)
    assert_in_order_per_hold(receiver, events)
    assert overlapping(receiver.received) == []
    # The hung four were sent again once their leases lapsed (3 s budget + the margin), the rest once.
    assert {r.webhook_id for r in receiver.received if len(receiver.receipts(r.webhook_id)) > 1} == hung
    for webhook_id in hung:
        first, again = receiver.receipts(webhook_id)[:2]
        assert again.started - first.started > LEASE_MARGIN_S  # the lease (3 s + the margin) lapsed first


async def test_two_gateways_never_send_one_event_to_one_endpoint_at_once(
    database_url: str, redis_url: str, key_prefix: str, receiver: Receiver
) -> None:
    """Two gateways on one database dispatch side by side, woken by the same feed moves: each event goes to
    the endpoint exactly once per attempt, never twice at once (the receiver answers slowly, some with
    500)."""
    settings = quick_settings(database_url, redis_url, key_prefix)

    def answer(received: Received) -> Answer:
        first_time = len(receiver.receipts(received.webhook_id)) == 1
        if first_time and int(received.webhook_id) % 3 == 0:
            return Answer(status=500, delay_s=0.05)
        return Answer(delay_s=0.05 + int(received.webhook_id) % 4 * 0.03)

    receiver.answer = answer
    async with running_gateway(settings) as first, running_gateway(settings) as second:
        await add_endpoint(first, receiver)
        gateways = (first, second)
        made = await released_together(30, lambda i: gateways[i % 2].hold("duo", [f"S-{i}"], holder=f"h{i}"))
        assert statuses(made) == {201: 30}
        holds = [response.json() for response in made]
        confirmed = await released_together(
            30, lambda i: gateways[i % 2].post(f"/v1/holds/{holds[i]['id']}/confirm", {"holder": f"h{i}"})
        )
        assert statuses(confirmed) == {200: 30}
        events = await numbered_events(first, 60)
        await receiver.wait_delivered(ids(events), within_s=60)

    assert overlapping(receiver.received) == []
    assert Counter(r.webhook_id for r in receiver.received) == {
        webhook_id: 2 if int(webhook_id) % 3 == 0 else 1 for webhook_id in ids(events)
    }
    assert_every_event_delivered_as_the_feed_shows_it(receiver, events)
    assert_in_order_per_hold(receiver, events)


# ---- what is sent, and what is read back ----


async def test_a_redirect_is_not_followed_and_is_a_failed_attempt(
    quick_gateway: Gateway, receiver: Receiver
) -> None:
    gateway = quick_gateway
    async with Receiver() as target:
        receiver.answer = lambda _: Answer(status=307, headers={"Location": target.url})
        await add_endpoint(gateway, receiver)
        await create(gateway, "R-1")

        endpoint = await endpoint_when(gateway, lambda e: e["last_error"] is not None)

        assert endpoint["last_error"] == f"HTTP 307: redirect not followed (Location: {target.url})"
        assert (endpoint["pending"], endpoint["delivered"]) == (1, 0)
        assert receiver.received
        assert target.received == []


async def test_only_an_excerpt_of_a_response_is_read_and_kept(
    quick_gateway: Gateway, receiver: Receiver
) -> None:
    """A receiver answering 500 with 32 MiB: the gateway keeps the first 512 bytes and reads no further (the
    receiver cannot finish writing: the connection is closed under it)."""
    gateway = quick_gateway
    body = b"0123456789abcdef" * (2 << 20)
    receiver.answer = lambda _: Answer(status=500, body=body)
    await add_endpoint(gateway, receiver)
    await create(gateway, "X-1")

    endpoint = await endpoint_when(gateway, lambda e: e["last_error"] is not None)
    receiver.answer = lambda _: Answer()
    await eventually(lambda: receiver.received[0].ended is not None, 30, "the first answer never ended")

    assert endpoint["last_error"] == "HTTP 500: " + body[:512].decode()
    assert not receiver.received[0].answer_complete


async def test_failed_deliveries_are_redelivered_and_lost_ones_sent_again(
    database_url: str, redis_url: str, key_prefix: str, receiver: Receiver
) -> None:
    settings = quick_settings(database_url, redis_url, key_prefix, webhook_retry_window_s=1)
    async with running_gateway(settings) as gateway:
        receiver.answer = lambda _: Answer(status=503, body=b"not today")
        endpoint = await add_endpoint(gateway, receiver)
        redeliver = f"{ENDPOINTS}/{endpoint['id']}/redeliver"
        for i in range(2):
            await create(gateway, f"F-{i}", holder=f"h{i}")
        events = await numbered_events(gateway, 2)

        given_up = await endpoint_when(gateway, lambda e: e["failed"] == 2)
        assert (given_up["pending"], given_up["delivered"]) == (0, 0)
        assert given_up["last_error"] == "HTTP 503: not today"
        assert (await webhook_stats(gateway))["failed"] == 2
        assert receiver.delivered() == {}

        receiver.answer = lambda _: Answer()
        again = await gateway.client.post(redeliver)
        assert (again.status_code, again.json()) == (200, {"redelivered": 2})
        await receiver.wait_delivered(ids(events))
        recovered = await endpoint_when(gateway, lambda e: e["delivered"] == 2)
        assert (recovered["pending"], recovered["failed"]) == (0, 0)

        # The receiver lost what it had: every event after the one before the first, sent again.
        lost = await gateway.client.post(redeliver, json={"after": events[0]["id"] - 1})
        assert (lost.status_code, lost.json()) == (200, {"redelivered": 2})
        await eventually(
            lambda: all(len([r for r in receiver.receipts(i) if r.status == 200]) == 2 for i in ids(events)),
            30,
            "not sent again",
        )
        after_last = await gateway.client.post(redeliver, json={"after": events[-1]["id"]})
        assert after_last.json() == {"redelivered": 0}

        for body, field in (({"after": -1}, "after"), ({"before": 1}, "before"), ({"after": "1"}, "after")):
            refused = await gateway.client.post(redeliver, json=body)
            assert refused.status_code == 422, refused.text
            assert field in refused.json()["detail"]
        malformed = await gateway.client.post(
            redeliver, content=b"{", headers={"Content-Type": "application/json"}
        )
        assert malformed.status_code == 400
    assert_every_event_delivered_as_the_feed_shows_it(receiver, events)


@asynccontextmanager
async def busy(gateway: Gateway, concurrency: int = 8) -> AsyncIterator[list[int]]:
    """Requests (GET /health) to the gateway without pause from `concurrency` clients while the block runs;
    how many were answered, counted as they are."""
    answered = [0]
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            assert (await gateway.client.get("/health")).status_code == 200
            answered[0] += 1

    clients = [asyncio.create_task(client()) for _ in range(concurrency)]
    try:
        yield answered
    finally:
        stop.set()
        await asyncio.gather(*clients)


async def test_a_busy_worker_defers_its_deliveries_and_sends_them_once_the_load_drops(
    database_url: str, redis_url: str, key_prefix: str, receiver: Receiver
) -> None:
    """While the worker serves requests faster than webhook_yield_above_rps, its dispatcher sends nothing that
    has not waited webhook_max_defer_s (a minute here); the load gone, the deliveries go out at once."""
    settings = quick_settings(
        database_url, redis_url, key_prefix, webhook_yield_above_rps=5.0, webhook_max_defer_s=60.0
    )
    async with running_gateway(settings) as gateway:
        await add_endpoint(gateway, receiver)
        async with busy(gateway) as answered:
            # A second of it: the worker measures its rate over a quarter of a second at least.
            started = time.monotonic()
            await eventually(lambda: answered[0] >= 50 and time.monotonic() - started >= 1, 30, "no load")
            hold = await create(gateway, "D-1")
            await act(gateway, hold, "confirm")
            [created, confirmed] = await numbered_events(gateway, 2)
            served_before = answered[0]
            # The dispatcher has been woken by the feed several times over (every 0.1 s) and kept waiting.
            waited = time.monotonic()
            await eventually(
                lambda: time.monotonic() - waited >= 2 and answered[0] - served_before >= 100, 30
            )
            during = list(receiver.received)
        stopped = time.monotonic()
        await eventually(lambda: len(receiver.delivered()) == 2, 30, lambda: f"{receiver.delivered()}")
        drained_s = time.monotonic() - stopped

    print(f"sent {drained_s:.2f} s after the load stopped")
    assert during == []
    assert_every_event_delivered_as_the_feed_shows_it(receiver, [created, confirmed])
    assert_in_order_per_hold(receiver, [created, confirmed])


async def test_a_busy_worker_defers_a_delivery_webhook_max_defer_s_and_no_longer(
    database_url: str, redis_url: str, key_prefix: str, receiver: Receiver
) -> None:
    """Yielding is bounded: under load that never stops, a delivery goes out once it has waited
    webhook_max_defer_s (1.5 s here), measured from its event's occurred_at to the receipt."""
    settings = quick_settings(
        database_url, redis_url, key_prefix, webhook_yield_above_rps=5.0, webhook_max_defer_s=1.5
    )
    async with running_gateway(settings) as gateway:
        await add_endpoint(gateway, receiver)
        async with busy(gateway) as answered:
            # A second of it: the worker measures its rate over a quarter of a second at least.
            started = time.monotonic()
            await eventually(lambda: answered[0] >= 50 and time.monotonic() - started >= 1, 30, "no load")
            await create(gateway, "D-2")
            [created] = await numbered_events(gateway, 1)
            await eventually(lambda: len(receiver.delivered()) == 1, 30, "never delivered under load")
            served_after = answered[0]
            await eventually(lambda: answered[0] - served_after >= 20, 30, "the load stopped early")

    late_s = (
        receiver.delivered()[str(created["id"])].wall
        - datetime.fromisoformat(created["occurred_at"]).timestamp()
    )
    print(f"delivered {late_s:.2f} s after its event occurred, under load")
    assert 1.5 <= late_s <= 1.5 + 10, late_s


async def test_a_hung_receiver_does_not_slow_holds(gateway: Gateway, receiver: Receiver) -> None:
    """Nothing on a hold's path waits for delivery: with every delivery hanging (the default 10 s budget), 30
    holds are created and confirmed at once; their 60 deliveries wait, at most 8 of them in flight (one
    endpoint's share of a worker's slots). Deleting the endpoint drops them."""
    receiver.answer = lambda _: Answer(hang=True)
    endpoint = await add_endpoint(gateway, receiver)

    made = await released_together(30, lambda i: gateway.hold("busy", [f"B-{i}"], holder=f"h{i}"))
    assert statuses(made) == {201: 30}
    holds = [response.json() for response in made]
    confirmed = await released_together(
        30, lambda i: gateway.post(f"/v1/holds/{holds[i]['id']}/confirm", {"holder": f"h{i}"})
    )
    assert statuses(confirmed) == {200: 30}

    async def all_pending() -> Json | None:
        stats = await webhook_stats(gateway)
        return stats if stats["pending"] == 60 else None

    stats = await until(all_pending, 30, "the deliveries were never all pending")
    await eventually(lambda: len(receiver.in_flight()) == 8, 30, "never 8 in flight")
    metrics = (await gateway.client.get("/metrics")).text

    assert (stats["delivered"], stats["failed"], stats["endpoints"]) == (0, 0, 1)
    assert stats["oldest_pending_occurred_at"] is not None
    assert metric(metrics, "gateway_webhook_pending_deliveries") == 60
    assert most_at_once(receiver.received) == 8
    assert (await gateway.client.delete(f"{ENDPOINTS}/{endpoint['id']}")).status_code == 204
    assert (await webhook_stats(gateway))["pending"] == 0


async def test_stats_metrics_and_listing_count_deliveries(quick_gateway: Gateway, receiver: Receiver) -> None:
    gateway = quick_gateway
    before = (await gateway.client.get("/metrics")).text
    receiver.answer = lambda r: (
        Answer(status=502, body=b"bad gateway") if len(receiver.receipts(r.webhook_id)) == 1 else Answer()
    )
    await add_endpoint(gateway, receiver)
    for i in range(3):
        await create(gateway, f"M-{i}", holder=f"h{i}")
    events = await numbered_events(gateway, 3)
    await receiver.wait_delivered(ids(events))

    endpoint = await endpoint_when(gateway, lambda e: e["delivered"] == 3)
    stats = await webhook_stats(gateway)
    event_stats = (await gateway.client.get("/v1/events/show/stats")).json()
    after = (await gateway.client.get("/metrics")).text

    assert (endpoint["pending"], endpoint["failed"]) == (0, 0)
    assert endpoint["last_error"] == "HTTP 502: bad gateway"
    assert endpoint["last_error_at"] is not None
    assert endpoint["last_delivered_at"] >= endpoint["last_error_at"]
    assert stats == {
        "endpoints": 1,
        "pending": 0,
        "failed": 0,
        "delivered": 3,
        "oldest_pending_age_ms": 0,
        "oldest_pending_occurred_at": None,
    }
    assert event_stats["webhooks"] is None  # the webhook numbers are not an event's

    def grew(name: str) -> float:
        return metric(after, name) - metric(before, name)

    assert grew('gateway_webhook_deliveries_total{outcome="delivered"}') == 3
    assert grew('gateway_webhook_deliveries_total{outcome="retried"}') == 3
    assert grew('gateway_webhook_deliveries_total{outcome="failed"}') == 0
    assert grew("gateway_webhook_delivery_latency_seconds_count") == 3
    assert metric(after, "gateway_webhook_pending_deliveries") == 0
    assert metric(after, "gateway_webhook_failed_deliveries") == 0


# ---- the operator's command ----


async def test_the_webhooks_command_adds_lists_redelivers_and_deletes(
    quick_gateway: Gateway,
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GATEWAY_URL", raising=False)
    monkeypatch.delenv("GATEWAY_OPS_TOKEN", raising=False)
    gateway = quick_gateway
    at = ["--url", gateway.url]

    code, out, err = await gateway_command(capsys, "webhooks", *at, "--add", receiver.url)
    assert (code, err) == (0, "")
    added = dict(line.split(None, 1) for line in out.splitlines()[:4])
    assert added.keys() == {"id", "url", "secret", "created"}
    assert added["url"] == receiver.url
    assert added["secret"].startswith("whsec_")
    assert out.splitlines()[4:] == ["the secret is shown this once: the receiver verifies signatures with it"]
    endpoint_id = added["id"]

    receiver.secret = added["secret"]
    receiver.answer = lambda _: Answer(status=500, body=b"nope")
    await create(gateway, "C-1")
    await endpoint_when(gateway, lambda e: e["last_error"] is not None)
    code, out, err = await gateway_command(capsys, "webhooks", *at)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["endpoint", "url", "pending", "delivered", "failed", "last", "error"]
    row = re.split(r" {2,}", lines[2].strip())
    assert row[:5] == [endpoint_id, receiver.url, "1", "0", "0"]
    assert re.fullmatch(r"\d\d:\d\d:\d\d HTTP 500: nope", row[5]), row
    assert lines[3:] == ["1 webhook endpoint"]
    code, out, _ = await gateway_command(capsys, "webhooks", *at, "--json")
    assert [e["id"] for e in json.loads(out)["webhook_endpoints"]] == [endpoint_id]

    # Nothing has failed for good yet, and the one event after 0 is still owed: nothing to do.
    assert await gateway_command(capsys, "webhooks", *at, "--redeliver", endpoint_id) == (
        0,
        "0 deliveries pending again\n",
        "",
    )
    assert await gateway_command(capsys, "webhooks", *at, "--redeliver", endpoint_id, "--after", "0") == (
        0,
        "0 deliveries pending again\n",
        "",
    )
    assert await gateway_command(capsys, "webhooks", *at, "--after", "0") == (
        2,
        "",
        "gateway: --after goes with --redeliver\n",
    )
    assert await gateway_command(capsys, "webhooks", *at, "--secret", "whsec_x") == (
        2,
        "",
        "gateway: --secret goes with --add\n",
    )
    assert await gateway_command(capsys, "webhooks", *at, "--add", "ftp://hooks.example/") == (
        1,
        "",
        "gateway: 422 Invalid request: `url` must be an http or https URL, got scheme 'ftp'\n",
    )
    assert await gateway_command(capsys, "webhooks", *at, "--delete", endpoint_id) == (
        0,
        f"deleted webhook endpoint {endpoint_id} and the deliveries still owed to it\n",
        "",
    )
    assert await gateway_command(capsys, "webhooks", *at, "--delete", endpoint_id) == (
        1,
        "",
        "gateway: 404 Webhook endpoint not found: No webhook endpoint has this id.\n",
    )
    assert await gateway_command(capsys, "webhooks", *at) == (0, "0 webhook endpoints\n", "")


# ---- settings ----


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"webhook_retry_window_s": 604_800},
            "webhook_retry_window_s must be shorter than hold_events_retention_s",
        ),
        ({"webhook_retry_base_s": 10, "webhook_retry_max_s": 5}, "webhook_retry_base_s must not exceed"),
        ({"webhook_concurrency": 4}, "webhook_endpoint_concurrency must not exceed webhook_concurrency"),
        ({"webhook_timeout_s": 0}, "GATEWAY_WEBHOOK_TIMEOUT_S"),
    ],
)
def test_webhook_settings_that_cannot_work_are_refused(overrides: Json, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_settings("postgresql://x/y", None, "gw", **overrides)


def readme_receiver(secret: str) -> Callable[[bytes, dict[str, str]], int]:
    """The README's receiver example (the Python block of "Walking a buyer through payment"), run as it is
    written but for the secret."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Walking a buyer through payment", 1)[1].split("\n### ", 1)[0]
    block = textwrap.dedent(section.split("```python\n", 1)[1].split("```", 1)[0])
    assert 'Webhook("whsec_…")' in block
    scope: dict[str, Any] = {}
    exec(block.replace('"whsec_…"', repr(secret)), scope)  # noqa: S102 - the README's own example
    receive: Callable[[bytes, dict[str, str]], int] = scope["receive"]
    return receive


async def test_the_readme_receiver_accepts_a_delivery_once_and_refuses_a_forged_one(
    gateway: Gateway, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = await add_endpoint(gateway, receiver)
    hold = await create(gateway, "R-1", holder="reader", ttl_seconds=1)
    await receiver.wait_delivered(ids(await numbered_events(gateway, 2)))
    expired = next(r for r in receiver.delivered().values() if r.json()["type"] == "hold.expired")
    receive = readme_receiver(endpoint["secret"])

    first = receive(expired.body, expired.headers)
    again = receive(expired.body, expired.headers)
    forged = receive(expired.body.replace(b"reader", b"robber"), expired.headers)

    assert (first, again, forged) == (204, 204, 400)
    printed = capsys.readouterr().out
    assert printed.count("release the cart of reader") == 1
    assert hold["id"] in expired.body.decode()
