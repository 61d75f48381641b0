"""The live /ops page in a real browser (Debian's Chromium, driven by Playwright): it loads clean under its
CSP, counts holds down between polls, draws an event's seat map and honours the ops token.
The populated page's test takes a screenshot; `make screenshot` saves it as docs/ops.png for the README."""

import asyncio
import itertools
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Request,
    Response,
    Route,
    async_playwright,
    expect,
)

from gateway.embedded import free_port
from tests.conftest import make_settings
from tests.support import Gateway, running_gateway

CHROMIUM = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")
# No sandbox (containers lack user namespaces), no GPU, and nothing that would reach for the internet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Where the populated page's picture goes: the README's docs/ops.png with `make screenshot`, else a temp dir.
SCREENSHOT_ENV = "GATEWAY_TEST_SCREENSHOT"
OPS_TOKEN = "x" * 24
WAIT_MS = 5_000  # the page polls every second: anything it should show, it shows well within this
RATE = re.compile(r"^\d+\.\d$")  # a per-second rate, shown once the page has two answers to difference
# An open event's availability is a 404 (inventory-not-found) that the page asks for and shows as an answer.
OPEN_EVENT_404 = re.compile(r"/v1/events/[^/?]+/availability$")


@pytest.fixture(scope="module", name="chromium")
def fx_chromium() -> str:
    """The browser binary. Playwright never downloads one here: without it the tests fail, never skip."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's `chromium` package (apt-get install chromium), "
            "or point GATEWAY_TEST_CHROMIUM at a Chromium binary",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture(scope="module", name="browser")
async def fx_browser(chromium: str) -> AsyncIterator[Browser]:
    """One Chromium for the module; each test opens its own context (cookies, credentials, cache)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def ops_page(
    browser: Browser, url: str, **context_options: Any
) -> AsyncIterator[tuple[Page, Response | None, list[str]]]:
    """The page at `url`, its navigation response, and every problem it reported: console errors (a CSP
    violation is one), uncaught exceptions, failed requests and error responses."""
    context = await browser.new_context(**context_options)
    page = await context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # Chromium logs every error status of a fetch: an open event's availability is an expected one.
        expected = " 404 " in message.text and OPEN_EVENT_404.search(message.location.get("url", ""))
        if message.type in ("error", "warning") and not expected:
            problems.append(f"console {message.type}: {message.text}")

    def on_request_failed(request: Request) -> None:
        problems.append(f"request failed: {request.url} {request.failure}")

    def on_response(response: Response) -> None:
        if response.status >= 400 and not (response.status == 404 and OPEN_EVENT_404.search(response.url)):
            problems.append(f"HTTP {response.status}: {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", on_request_failed)
    page.on("response", on_response)
    try:
        response = await page.goto(url)
        yield page, response, problems
    finally:
        await context.close()


def created_id(response: Any) -> str:
    assert response.status_code == 201, response.text
    hold_id: str = response.json()["id"]
    return hold_id


async def ttl_ms(page: Page, hold_id: str) -> int:
    value = await page.locator(f'tr[data-hold-id="{hold_id}"] .ttl').get_attribute("data-ttl-ms")
    assert value is not None
    return int(value)


async def test_page_loads_clean_and_shows_redis_front(gateway: Gateway, browser: Browser) -> None:
    async with ops_page(browser, f"{gateway.url}/ops") as (page, response, problems):
        assert response is not None
        assert response.status == 200
        # The page must run under the gateway's CSP for "no console errors" to prove it needs nothing inline.
        assert response.headers["content-security-policy"] == "default-src 'self'; img-src 'self' data:"
        banner = page.locator("#banner")
        await expect(banner).to_have_text("redis-front", timeout=WAIT_MS)
        await expect(banner).to_have_attribute("data-level", "ok")
        # Rates need two answers: by then the page has polled at least twice.
        await expect(page.locator("#rate-holds_created")).to_have_text(RATE, timeout=WAIT_MS)
        await expect(page.locator("#error")).to_be_hidden()
        await expect(page.locator("#seats-hint")).to_be_visible()
        assert problems == []


async def test_a_hold_counts_down_live_then_leaves_the_list(gateway: Gateway, browser: Browser) -> None:
    async with ops_page(browser, f"{gateway.url}/ops") as (page, _, problems):
        await expect(page.locator("#banner")).to_have_text("redis-front", timeout=WAIT_MS)
        hold_id = created_id(await gateway.hold("show-1", ["A1", "A2"], holder="alice", ttl_seconds=3))
        row = page.locator(f'tr[data-hold-id="{hold_id}"]')
        await expect(row).to_be_visible(timeout=WAIT_MS)
        await expect(row).to_contain_text("A1, A2")

        # Four readings 0.15 s apart: polls come once a second, so only a live countdown changes every time.
        readings = []
        for _ in range(4):
            readings.append(await ttl_ms(page, hold_id))
            await asyncio.sleep(0.15)
        assert all(a > b for a, b in itertools.pairwise(readings)), readings
        assert 0 < readings[-1] <= 3000
        assert problems == []

        # With the listing failing, the page keeps the row and counts it down to zero, greyed as expired.
        await page.route(lambda url: "/v1/holds?" in url, lambda route: route.abort())
        await expect(row).to_have_class(re.compile(r"\bexpired\b"), timeout=WAIT_MS)
        assert await ttl_ms(page, hold_id) == 0
        await expect(page.locator("#error")).to_contain_text("/v1/holds")

        # Once the listing answers again, the lapsed hold is no longer in it.
        await page.unroute_all()
        await expect(row).to_have_count(0, timeout=WAIT_MS)
        await expect(page.locator("#error")).to_be_hidden()


async def test_event_filter_draws_the_seat_map(gateway: Gateway, browser: Browser) -> None:
    held = created_id(await gateway.hold("show-1", ["A1", "A2"], holder="alice"))
    confirmed = created_id(await gateway.hold("show-1", ["B1"], holder="bob"))
    assert (await gateway.client.post(f"/v1/holds/{confirmed}/confirm", json={"holder": "bob"})).is_success
    cancelled = created_id(await gateway.hold("show-1", ["C1"], holder="carol"))
    assert (await gateway.client.post(f"/v1/holds/{cancelled}/cancel", json={"holder": "carol"})).is_success
    elsewhere = created_id(await gateway.hold("show-2", ["A1"], holder="alice"))

    async with ops_page(browser, f"{gateway.url}/ops?event=show-1") as (page, _, problems):
        seats = page.locator("#seats li")
        # C1's hold was cancelled: a free seat, not listed by the seat map (it lists live slots only).
        await expect(seats).to_have_count(3, timeout=WAIT_MS)
        expected = {"A1": "held", "A2": "held", "B1": "confirmed"}
        drawn = {
            await seat.get_attribute("data-slot-id"): await seat.get_attribute("data-state")
            for seat in await seats.all()
        }
        assert drawn == expected
        await expect(page.locator('#seats [data-slot-id="B1"]')).to_have_attribute("title", "B1: confirmed")
        await expect(page.locator("#event")).to_have_value("show-1")
        await expect(page.locator("#numbers-scope")).to_have_text("event show-1")
        # show-1 has no inventory: the availability says it is open, and draws no bar.
        await expect(page.locator("#availability-hint")).to_contain_text("Open event")
        await expect(page.locator("#availability-panel")).to_be_hidden()
        # Only the event's active holds are listed.
        await expect(page.locator("#holds tr")).to_have_count(1)
        await expect(page.locator(f'tr[data-hold-id="{held}"]')).to_be_visible()

        # Filters apply as they are typed and go into the URL, so a link shows the same view.
        await page.locator("#event").fill("")
        await page.locator("#holder").fill("alice")
        await expect(page.locator(f'tr[data-hold-id="{elsewhere}"]')).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#holds tr")).to_have_count(2)
        assert page.url.endswith("/ops?holder=alice")
        await expect(page.locator("#seats-hint")).to_be_visible()
        await expect(page.locator("#availability-hint")).to_have_text(
            "Set an event to see what is left of it."
        )
        assert problems == []


async def put_inventory(gateway: Gateway, event_id: str, body: dict[str, Any]) -> None:
    response = await gateway.client.put(f"/v1/events/{event_id}/inventory", json=body)
    assert response.status_code == 200, response.text


async def hold_items(gateway: Gateway, holder: str, items: list[dict[str, Any]], ttl_s: int = 300) -> str:
    return created_id(
        await gateway.post("/v1/holds", {"holder": holder, "items": items, "ttl_seconds": ttl_s})
    )


async def availability_shows(gateway: Gateway, event_id: str, condition: Any, within_s: float = 10) -> None:
    """Wait until the API's availability (cached up to 0.9 s per worker) meets `condition`."""
    deadline = time.monotonic() + within_s
    while True:
        answer = (await gateway.client.get(f"/v1/events/{event_id}/availability")).json()
        if condition(answer):
            return
        assert time.monotonic() < deadline, answer
        await asyncio.sleep(0.05)


async def bar_shares(page: Page, row: str) -> dict[str, float]:
    """Each part of a row's bar as drawn: its width over the bar's inside width, in percent."""
    shares: dict[str, float] = await page.eval_on_selector(
        f"#availability {row} .stack",
        """bar => Object.fromEntries([...bar.children].map(part => [
            part.dataset.part,
            100 * part.getBoundingClientRect().width / bar.clientWidth,
        ]))""",
    )
    return shares


async def test_availability_draws_a_bar_per_pool_and_the_seat_states(
    gateway: Gateway, browser: Browser
) -> None:
    await put_inventory(
        gateway,
        "gig",
        {
            "seats": ["A1", "A2", "A3", "A4", "A5", "A6"],
            "pools": [{"pool_id": "floor", "capacity": 10}, {"pool_id": "balcony", "capacity": 4}],
            "limits": {"per_holder": 6},
        },
    )
    blocked = await gateway.client.post(
        "/v1/events/gig/seats/block", json={"seats": ["A6"], "reason": "desk"}
    )
    assert blocked.status_code == 200, blocked.text
    floor = {"event_id": "gig", "pool_id": "floor"}
    alice = await hold_items(
        gateway, "alice", [{"event_id": "gig", "slots": ["A1"]}, {**floor, "quantity": 3}]
    )
    bob = await hold_items(gateway, "bob", [{"event_id": "gig", "slots": ["A2"]}, {**floor, "quantity": 2}])
    assert (await gateway.client.post(f"/v1/holds/{bob}/confirm", json={"holder": "bob"})).is_success
    carol = await hold_items(
        gateway, "carol", [{"event_id": "gig", "pool_id": "balcony", "quantity": 4}], 120
    )
    expires_at = {
        hold_id: (await gateway.client.get(f"/v1/holds/{hold_id}")).json()["expires_at"]
        for hold_id in (alice, carol)
    }
    await availability_shows(gateway, "gig", lambda a: a["seats"]["confirmed"] == 1)

    async with ops_page(browser, f"{gateway.url}/ops?event=gig") as (page, _, problems):
        await expect(page.locator("#availability-scope")).to_have_text("event gig", timeout=WAIT_MS)
        rows = page.locator("#availability li")
        await expect(rows).to_have_count(3, timeout=WAIT_MS)
        assert [
            await row.get_attribute("data-row") or await row.get_attribute("data-pool-id")
            for row in await rows.all()
        ] == ["seats", "floor", "balcony"]
        expected = {
            '[data-row="seats"]': {"total": 6, "confirmed": 1, "held": 1, "blocked": 1, "free": 3},
            '[data-pool-id="floor"]': {"total": 10, "confirmed": 2, "held": 3, "available": 5},
            '[data-pool-id="balcony"]': {"total": 4, "confirmed": 0, "held": 4, "available": 0},
        }
        for row, counts in expected.items():
            for name, count in counts.items():
                await expect(page.locator(f"#availability {row} [data-count={name}]")).to_have_text(
                    str(count)
                )
            shares = await bar_shares(page, row)
            total = counts.pop("total")
            assert shares == pytest.approx({k: 100 * v / total for k, v in counts.items()}, abs=1.5), row
        # Units come back at the earliest expiry of a pool's held holds: the server's instant, shown as is.
        for pool, hold_id in (("floor", alice), ("balcony", carol)):
            release = page.locator(f'#availability [data-pool-id="{pool}"] .release time')
            shown = await release.get_attribute("datetime")
            assert shown is not None
            assert datetime.fromisoformat(shown) == datetime.fromisoformat(expires_at[hold_id])
        await expect(page.locator('#availability [data-row="seats"] .release')).to_be_hidden()
        await expect(page.locator("#availability-limits")).to_have_text("Limits: 6 per holder.")

        # A cancel gives alice's seat and units back: the bars follow within a poll or two.
        assert (await gateway.client.post(f"/v1/holds/{alice}/cancel", json={"holder": "alice"})).is_success
        floor_row = page.locator('#availability [data-pool-id="floor"]')
        await expect(floor_row.locator("[data-count=available]")).to_have_text("8", timeout=WAIT_MS)
        await expect(floor_row.locator("[data-count=held]")).to_have_text("0")
        await expect(floor_row.locator(".release")).to_be_hidden()
        await expect(page.locator('#availability [data-row="seats"] [data-count=free]')).to_have_text("4")
        assert await bar_shares(page, '[data-pool-id="floor"]') == pytest.approx(
            {"confirmed": 20, "held": 0, "available": 80}, abs=1.5
        )
        assert problems == []


async def test_availability_reads_loading_until_its_first_answer(gateway: Gateway, browser: Browser) -> None:
    """The availability panel says "Loading…", then that it could not load, never "open event" or an empty
    inventory before the gateway said so. Its first answers are held back, then failed, to show each state."""
    await put_inventory(gateway, "gig", {"pools": [{"pool_id": "floor", "capacity": 3}]})
    context = await browser.new_context()
    try:
        page = await context.new_page()
        asked, answer = asyncio.Event(), asyncio.Event()
        fail = True

        async def availability(route: Route) -> None:
            asked.set()
            await answer.wait()
            if fail:
                await route.abort()
            else:
                await route.continue_()

        await page.route(lambda url: url.endswith("/v1/events/gig/availability"), availability)
        await page.goto(f"{gateway.url}/ops?event=gig")
        hint = page.locator("#availability-hint")
        await asyncio.wait_for(asked.wait(), WAIT_MS / 1000)
        await expect(hint).to_have_text("Loading…")
        await expect(page.locator("#availability-scope")).to_have_text("event gig")

        answer.set()
        await expect(hint).to_have_text(
            re.compile(r"^Could not load the availability \(.+\); retrying…$"), timeout=WAIT_MS
        )

        fail = False
        await expect(
            page.locator('#availability [data-pool-id="floor"] [data-count=available]')
        ).to_have_text("3", timeout=WAIT_MS)
        await expect(hint).to_be_hidden()
        await expect(page.locator("#availability-limits")).to_have_text("No limit per holder or per hold.")
    finally:
        await context.close()


async def test_ops_token_is_asked_for_and_accepted_as_basic_password(
    database_url: str, redis_url: str, key_prefix: str, browser: Browser
) -> None:
    """A browser answers the 401 with Basic credentials. Pins a bug: Chromium reads only the first challenge
    of a WWW-Authenticate header, so `Bearer realm=…, Basic realm=…` never made it ask for a password."""
    settings = make_settings(database_url, redis_url, key_prefix, ops_token=OPS_TOKEN)
    async with running_gateway(settings) as gateway:
        for path in ("/ops", "/ops/ops.js", "/v1/stats", "/v1/holds"):
            refused = await gateway.client.get(path)
            assert refused.status_code == 401, path
            assert "Basic" in refused.headers["www-authenticate"]

        hold_id = created_id(await gateway.hold("show-1", ["A1"], holder="alice"))
        credentials = {"username": "ops", "password": OPS_TOKEN}
        async with ops_page(browser, f"{gateway.url}/ops", http_credentials=credentials) as (
            page,
            response,
            problems,
        ):
            assert response is not None
            assert response.status == 200, (
                "Chromium did not answer the challenge: it reads only the first one in a WWW-Authenticate "
                "header, so Basic must come first there or have a header of its own"
            )
            await expect(page.locator("#banner")).to_have_text("redis-front", timeout=WAIT_MS)
            await expect(page.locator(f'tr[data-hold-id="{hold_id}"]')).to_be_visible(timeout=WAIT_MS)
            await expect(page.locator("#active")).to_have_text("1")
            assert problems == []


async def test_webhook_panel_shows_each_endpoint_with_its_deliveries(
    gateway: Gateway, browser: Browser
) -> None:
    async with ops_page(browser, f"{gateway.url}/ops") as (page, _, problems):
        hint = page.locator("#webhooks-hint")
        await expect(hint).to_have_text(re.compile(r"^No webhook endpoints"), timeout=WAIT_MS)
        refused = f"http://127.0.0.1:{free_port()}/hooks"  # nothing listens there: every attempt is refused
        response = await gateway.client.post("/v1/webhook-endpoints", json={"url": refused})
        assert response.status_code == 201, response.text
        created_id(await gateway.hold("show-9", ["W-1"]))

        row = page.locator(f'tr[data-endpoint-id="{response.json()["id"]}"]')
        await expect(row.locator(".url")).to_have_text(refused, timeout=WAIT_MS)
        await expect(row.locator(".pending")).to_have_text("1", timeout=WAIT_MS)
        await expect(row.locator(".delivered")).to_have_text("0")
        await expect(row.locator(".failed")).to_have_text("0")
        await expect(row.locator(".last-error")).to_have_text(
            re.compile(r"^\d\d:\d\d:\d\d ConnectError"), timeout=WAIT_MS
        )
        await expect(hint).to_be_hidden()
        assert problems == []


async def test_page_and_assets_carry_one_charset(gateway: Gateway) -> None:
    """Regression: /ops answered `text/html; charset=utf-8; charset=utf-8`."""
    content_types = {
        path: (await gateway.client.get(path)).headers["content-type"]
        for path in ("/ops", "/ops/ops.js", "/ops/ops.css")
    }

    assert content_types == {
        "/ops": "text/html; charset=utf-8",
        "/ops/ops.js": "text/javascript; charset=utf-8",
        "/ops/ops.css": "text/css; charset=utf-8",
    }


async def test_holds_read_loading_until_the_first_answer_not_empty(
    gateway: Gateway, browser: Browser
) -> None:
    """Regression: before its first poll answered, the page said "No active holds." as if the gateway had
    none. The first answers of the listing are held back (and then failed) to show each state."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        asked, answer = asyncio.Event(), asyncio.Event()
        fail = True

        async def listing(route: Route) -> None:
            asked.set()
            await answer.wait()
            if fail:
                await route.abort()
            else:
                await route.continue_()

        await page.route(lambda url: "/v1/holds?" in url, listing)
        await page.goto(f"{gateway.url}/ops")
        empty = page.locator("#holds-empty")
        await asyncio.wait_for(asked.wait(), WAIT_MS / 1000)  # the page's script runs and has asked
        await expect(empty).to_have_text("Loading…")
        await expect(empty).to_be_visible()

        answer.set()
        await expect(empty).to_have_text(
            re.compile(r"^Could not load the holds \(.+\); retrying…$"), timeout=WAIT_MS
        )

        fail = False
        await expect(empty).to_have_text("No active holds.", timeout=WAIT_MS)
        hold_id = created_id(await gateway.hold("show-1", ["A1"], holder="alice"))
        await expect(page.locator(f'tr[data-hold-id="{hold_id}"]')).to_be_visible(timeout=WAIT_MS)
        await expect(empty).to_be_hidden()
    finally:
        await context.close()


async def test_populated_page_screenshot(gateway: Gateway, browser: Browser, tmp_path: Path) -> None:
    """A hall of 40 seats in every state with two standing pools, holds on other events and some traffic,
    photographed."""
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "ops.png")
    started = time.time()
    rows, numbers = "ABCDE", range(1, 9)
    assert len(rows) * len(numbers) == 40
    pools = [{"pool_id": "standing", "capacity": 120}, {"pool_id": "terrace", "capacity": 30}]
    await put_inventory(
        gateway, "hall-a", {"seats": [f"{row}{n}" for row in rows for n in numbers], "pools": pools}
    )
    blocked = await gateway.client.post(
        "/v1/events/hall-a/seats/block", json={"seats": ["E1", "E2"], "reason": "sound desk"}
    )
    assert blocked.status_code == 200, blocked.text
    for i in range(7):
        group = f"group-{i}"
        hold_id = await hold_items(
            gateway, group, [{"event_id": "hall-a", "pool_id": "standing", "quantity": 10}]
        )
        assert (await gateway.client.post(f"/v1/holds/{hold_id}/confirm", json={"holder": group})).is_success
    pool_held = [
        await hold_items(
            gateway, "tour", [{"event_id": "hall-a", "pool_id": "standing", "quantity": 8}], 420
        ),
        await hold_items(gateway, "club", [{"event_id": "hall-a", "pool_id": "terrace", "quantity": 6}], 150),
    ]
    # Short holds first, so their bars have run down part way when the picture is taken.
    held = [
        (["A1", "A2"], "ana@example.com", 5),
        (["C6"], "chen.li", 12),
        (["B3", "B4", "B5"], "bruno", 90),
        (["D1", "D2"], "dana", 240),
        (["E7", "E8"], "emil", 600),
    ]
    for slots, holder, ttl in held:
        created_id(await gateway.hold("hall-a", slots, holder=holder, ttl_seconds=ttl))
    for slots, holder in [
        (["A4", "A5", "A6"], "farah"),
        (["B1"], "gus"),
        (["C1", "C2", "C3", "C4"], "hana"),
        (["D5", "D6"], "ivo"),
    ]:
        hold_id = created_id(await gateway.hold("hall-a", slots, holder=holder))
        assert (await gateway.client.post(f"/v1/holds/{hold_id}/confirm", json={"holder": holder})).is_success
    # Every other seat was held once and let go: free, so the seat map (live slots only) leaves it out.
    taken = {slot for slots, _, _ in held for slot in slots} | {
        "A4", "A5", "A6", "B1", "C1", "C2", "C3", "C4", "D5", "D6", "E1", "E2"
    }  # fmt: skip
    free = [f"{row}{number}" for row in rows for number in numbers if f"{row}{number}" not in taken]
    for start in range(0, len(free), 10):  # a hold takes at most 10 slots
        hold_id = created_id(await gateway.hold("hall-a", free[start : start + 10], holder="box-office"))
        cancel = await gateway.client.post(f"/v1/holds/{hold_id}/cancel", json={"holder": "box-office"})
        assert cancel.is_success
    for event, slots, holder in [("hall-b", ["R1", "R2"], "jo"), ("match-day", ["N12"], "kim")]:
        created_id(await gateway.hold(event, slots, holder=holder, ttl_seconds=120))

    async def traffic() -> None:
        """Holds on another event, and a rival for each that Redis turns away, for non-zero rates."""
        for i in itertools.count():
            await gateway.hold("match-day", [f"S{i}"], holder="fan", ttl_seconds=30)
            await gateway.hold("match-day", [f"S{i}"], holder="rival", ttl_seconds=30)
            await asyncio.sleep(0.1)

    churn = asyncio.create_task(traffic())
    try:
        async with ops_page(
            browser, f"{gateway.url}/ops?event=hall-a", viewport={"width": 1280, "height": 900}
        ) as (page, _, problems):
            await expect(page.locator("#seats li")).to_have_count(20, timeout=WAIT_MS)
            await expect(page.locator("#holds tr")).to_have_count(len(held) + len(pool_held))
            # A pool's units show as its id, a multiplication sign and the quantity.
            pool_row = page.locator(f'tr[data-hold-id="{pool_held[1]}"]')
            await expect(pool_row).to_contain_text("terrace \N{MULTIPLICATION SIGN}6")
            await expect(page.locator("#rate-holds_created")).to_have_text(RATE, timeout=WAIT_MS)
            await expect(page.locator("#rate-rejected_by_redis")).not_to_have_text("0.0", timeout=WAIT_MS)
            # The rivals are refused for a seat taken, and for nothing else.
            await expect(page.locator("#rate-rejected_taken")).not_to_have_text("0.0", timeout=WAIT_MS)
            await expect(page.locator("#rate-rejected_sold_out")).to_have_text("0.0")
            for state, count in [("free", 0), ("held", 10), ("confirmed", 10), ("blocked", 0)]:
                await expect(page.locator(f"#count-{state}")).to_have_text(str(count))
            seats = page.locator('#availability [data-row="seats"]')
            for state, count in [("free", 18), ("held", 10), ("confirmed", 10), ("blocked", 2)]:
                await expect(seats.locator(f"[data-count={state}]")).to_have_text(str(count))
            standing = page.locator('#availability [data-pool-id="standing"]')
            await expect(standing.locator("[data-count=available]")).to_have_text("42")
            # The shortest hold is nearly out: its bar shows the low colour in the picture.
            await page.wait_for_function(
                "() => Number(document.querySelector('#holds .ttl').dataset.ttlMs) < 1200", timeout=WAIT_MS
            )
            screenshot.parent.mkdir(exist_ok=True)
            await page.screenshot(path=screenshot)
            assert problems == []
    finally:
        churn.cancel()
        with suppress(asyncio.CancelledError):
            await churn
    written = os.stat(screenshot)
    assert written.st_mtime >= started
    assert written.st_size > 10_000  # a picture of the page, not an empty frame
