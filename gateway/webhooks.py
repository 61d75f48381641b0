"""Webhooks: every hold event POSTed to the operator's endpoints, signed as Standard Webhooks define.

At least once, in order per hold. The sequencer makes an event's deliveries (one per endpoint that existed
when the event occurred) in the transaction that numbers it, so they are as durable as the event. Each worker
runs a dispatcher: woken when the feed's head moves (the sequencer's NOTIFY, gateway.listener), and, for
retries and leases that lapsed, every `webhook_poll_interval_s` in the background leader (every
`hold_events_resync_s` in the others: idle workers do not each poll), it leases due deliveries
in one short statement (FOR UPDATE SKIP LOCKED; the lease outlives one attempt's whole budget), sends them
outside any transaction, at most `webhook_concurrency` at once, and records each outcome in one statement. A
delivery is the earliest still owed of its hold to its endpoint, so a hold's events arrive in feed order; a
worker that dies mid-send leaves a lease that lapses, and another worker sends the event again, with the same
`webhook-id` (a receiver drops duplicates by it). Nothing on a hold's request path waits for any of this, and
while a worker is busy serving requests its dispatcher yields to them (RequestLoad): a delivery costs a worker
more CPU than the hold it reports, so the sends wait, up to `webhook_max_defer_s`, and drain once the load
drops. Failed deliveries of events no longer kept are purged by the background leader alone (gateway.leader).

An attempt: POST the event (as GET /v1/hold-events shows it) with `webhook-id` (the event's feed id),
`webhook-timestamp` (the attempt's unix seconds) and `webhook-signature` (`v1,` base64 HMAC-SHA256 of
`{id}.{timestamp}.{body}`); a 2xx within `webhook_timeout_s` delivers it. Redirects are not followed (a 3xx is
a failed attempt) and at most EXCERPT_BYTES of a response are read, kept for the operator. A failed attempt
is retried with exponential backoff and full jitter for `webhook_retry_window_s` from the event, then the
delivery is marked failed, for the operator to redeliver.
"""

import asyncio
import base64
import functools
import logging
import random
import secrets
import time
import urllib.parse
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime

import httpx
import msgspec
from standardwebhooks import Webhook

from gateway import metrics
from gateway.config import Settings
from gateway.errors import BackendUnavailable, InvalidRequest, WebhookEndpointNotFound
from gateway.hold_events import HoldEventFeed, HoldEventRow
from gateway.models import (
    WEBHOOK_SECRET_PREFIX,
    NewWebhookEndpoint,
    WebhookEndpointInfo,
    WebhookEndpointList,
    new_id,
)
from gateway.webhook_store import ClaimedDelivery, WebhookStore

log = logging.getLogger(__name__)

# A generated secret's random bytes (Standard Webhooks: 24 to 64).
SECRET_BYTES = 32
# An endpoint id: 12 base64url characters.
ENDPOINT_ID_BYTES = 9
_ENDPOINT_ID_LENGTH = 12
_ENDPOINT_ID_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
# A lease outlives its attempt's budget by this much: the outcome's statement, and an event loop running late.
LEASE_MARGIN_S = 5.0
# Of a response, at most this much is read (kept with a failed attempt for the operator); never more.
EXCERPT_BYTES = 512
# A transport error's text kept, at most.
ERROR_CHARS = 300
# The dispatcher's statements in flight at once, at most: requests keep the rest of the pool.
DB_CONNECTIONS = 2
# Failed deliveries of events past their retention are purged this often.
PURGE_INTERVAL_S = 60.0
PURGE_BATCH_SIZE = 1_000
USER_AGENT = "reservation-gateway-webhooks"
# On stopping, how long the cancelled sends get to end.
SHUTDOWN_WAIT_S = 1.0
# A worker's request rate is measured over this long at least; while it yields, its dispatcher looks again
# this often (so that the backlog starts draining this soon after the load drops).
LOAD_WINDOW_S = 0.25


def new_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def is_endpoint_id(value: str) -> bool:
    """Whether `value` could be an endpoint id (anything else is unknown without a query)."""
    return len(value) == _ENDPOINT_ID_LENGTH and set(value) <= _ENDPOINT_ID_ALPHABET


def retry_delay_s(attempt: int, base_s: float, max_s: float) -> float:
    """The wait after failed attempt number `attempt` (from 1): full jitter, uniform up to base x 2^(n-1)
    capped at max, so that receivers coming back are not met by every retry at once."""
    ceiling = max_s if attempt > 64 else min(max_s, base_s * 2 ** (attempt - 1))
    return random.uniform(0, ceiling)  # noqa: S311 - spreading retries, not a secret


def event_body(delivery: ClaimedDelivery) -> bytes | None:
    """The request body: the event exactly as GET /v1/hold-events shows it; None if it is no longer kept."""
    if delivery.type is None or delivery.hold is None or delivery.hold_id is None:
        return None
    row = HoldEventRow.stored(
        delivery.event_id, delivery.type, delivery.hold_id, delivery.occurred_at, delivery.hold
    )
    return msgspec.json.encode(row.to_model())


class WebhookEndpoints:
    """The operator's side: create, list, delete endpoints and redeliver to them."""

    def __init__(self, store: WebhookStore) -> None:
        self._store = store

    async def create(self, url: str, secret: str | None) -> NewWebhookEndpoint:
        # httpx must be able to send to it too (the body's rules are checked already, this is its own parser).
        try:
            httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise InvalidRequest(f"`url` is not a URL the gateway can send to: {exc}") from None
        row = await self._store.create_endpoint(new_id(ENDPOINT_ID_BYTES), url, secret or new_secret())
        host = urllib.parse.urlsplit(url).hostname  # the URL itself may carry credentials: not logged
        log.info("webhook endpoint %s created (host %s)", row.id, host, extra={"webhook_endpoint_id": row.id})
        return NewWebhookEndpoint(id=row.id, url=row.url, secret=row.secret, created_at=row.created_at)

    async def list(self) -> WebhookEndpointList:
        rows = await self._store.list_endpoints()
        return WebhookEndpointList(
            webhook_endpoints=[
                WebhookEndpointInfo(
                    id=r.id,
                    url=r.url,
                    created_at=r.created_at,
                    pending=r.pending,
                    delivered=r.delivered,
                    failed=r.failed,
                    last_delivered_at=r.last_delivered_at,
                    last_error=r.last_error,
                    last_error_at=r.last_error_at,
                )
                for r in rows
            ]
        )

    async def delete(self, endpoint_id: str) -> None:
        """Delete the endpoint and every delivery still owed to it; WebhookEndpointNotFound if unknown."""
        if not is_endpoint_id(endpoint_id) or not await self._store.delete_endpoint(endpoint_id):
            raise WebhookEndpointNotFound()
        log.info("webhook endpoint %s deleted", endpoint_id, extra={"webhook_endpoint_id": endpoint_id})

    async def redeliver(self, endpoint_id: str, after: int | None) -> int:
        """Its failed deliveries pending again; with `after`, every kept event after that feed id owed again.
        How many deliveries this made pending."""
        redelivered = None
        if is_endpoint_id(endpoint_id):
            redelivered = await self._store.redeliver(endpoint_id, after)
        if redelivered is None:
            raise WebhookEndpointNotFound()
        log.info(
            "webhook endpoint %s: %d deliveries pending again",
            endpoint_id,
            redelivered,
            extra={"webhook_endpoint_id": endpoint_id},
        )
        return redelivered


class RequestLoad:
    """Whether a worker is busy: the rate it finished requests at, over the last LOAD_WINDOW_S or more."""

    def __init__(self, requests_served: Callable[[], int], busy_at_rps: float) -> None:
        self._requests_served = requests_served
        self._busy_at_rps = busy_at_rps  # 0: never busy
        self._since = time.monotonic()
        self._served = requests_served()
        self._busy = False

    def busy(self) -> bool:
        if self._busy_at_rps <= 0:
            return False
        now = time.monotonic()
        if now - self._since >= LOAD_WINDOW_S:
            served = self._requests_served()
            self._busy = (served - self._served) / (now - self._since) >= self._busy_at_rps
            self._since, self._served = now, served
        return self._busy


class WebhookDispatcher:
    """A worker's deliveries: claims due ones, sends them, records each outcome."""

    def __init__(
        self,
        store: WebhookStore,
        settings: Settings,
        feed: HoldEventFeed,
        requests_served: Callable[[], int] = lambda: 0,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        # Whether this worker is the background leader: it purges, and looks for due retries most often.
        self._leading = leading
        self._settings = settings
        self._feed = feed
        self._load = RequestLoad(requests_served, settings.webhook_yield_above_rps)
        self._yielding = False  # the last claim took only deliveries owed for webhook_max_defer_s
        self._timeout_s = settings.webhook_timeout_s
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            # The whole attempt is bounded by _post's deadline; these bound each step within it.
            timeout=httpx.Timeout(settings.webhook_timeout_s),
            limits=httpx.Limits(
                max_connections=settings.webhook_concurrency,
                max_keepalive_connections=settings.webhook_concurrency,
            ),
            # The endpoint is reached directly: no proxy, netrc or certificate settings from the environment.
            trust_env=False,
            headers={"user-agent": USER_AGENT, "accept-encoding": "identity"},
        )
        self._database = asyncio.Semaphore(DB_CONNECTIONS)
        self._sending: set[asyncio.Task[None]] = set()
        self._in_flight: dict[str, int] = {}  # endpoint id -> deliveries this worker is sending to it
        # Set, and replaced, whenever a send ends: a slot is free, and the hold's next event may be due.
        self._finished = asyncio.Event()
        self._next_purge = 0.0

    @property
    def _free_slots(self) -> int:
        return self._settings.webhook_concurrency - len(self._sending)

    async def run(self) -> None:
        """Dispatch until cancelled; an outage only delays deliveries (leases lapse, nothing is lost)."""
        try:
            while True:
                head = self._feed.head  # read first: an event numbered during the claim wakes the next wait
                more = False
                try:
                    more = await self.dispatch_due()
                    await self._purge_if_due()
                except BackendUnavailable as exc:
                    log.debug("webhooks: database unavailable (%s)", exc.__cause__)
                except Exception:  # anything else must not end delivery for the life of the worker
                    log.exception("webhook dispatch failed")
                if not more:
                    await self._wait(head)
        finally:
            closing = asyncio.ensure_future(self._close())
            while not closing.done():
                # background.stop cancels again every 0.1 s: closing the sockets is finished first (it takes
                # SHUTDOWN_WAIT_S at most), or the connections of the sends cut short would be left open.
                with suppress(asyncio.CancelledError):
                    await asyncio.shield(closing)

    async def _close(self) -> None:
        sending = list(self._sending)
        for task in sending:
            task.cancel()  # their leases lapse, and this or another worker sends them again
        if sending:
            await asyncio.wait(sending, timeout=SHUTDOWN_WAIT_S)
        await self._client.aclose()

    async def dispatch_due(self) -> bool:
        """Claim due deliveries into the free slots and start sending them; whether more may be due now.
        While the worker is busy, only those owed for webhook_max_defer_s are due."""
        free = self._free_slots
        if free <= 0:
            return False
        self._yielding = self._load.busy()
        async with self._database:
            claimed = await self._store.claim(
                free,
                self._in_flight,
                self._settings.webhook_endpoint_concurrency,
                self._timeout_s + LEASE_MARGIN_S,
                self._settings.webhook_max_defer_s if self._yielding else 0.0,
            )
        for delivery in claimed:
            self._in_flight[delivery.endpoint_id] = self._in_flight.get(delivery.endpoint_id, 0) + 1
            task = asyncio.create_task(self._deliver(delivery), name=f"webhook-{delivery.event_id}")
            self._sending.add(task)
            task.add_done_callback(functools.partial(self._sent, endpoint_id=delivery.endpoint_id))
        return len(claimed) == free

    def _sent(self, task: "asyncio.Task[None]", *, endpoint_id: str) -> None:
        self._sending.discard(task)
        left = self._in_flight.pop(endpoint_id, 1) - 1
        if left:
            self._in_flight[endpoint_id] = left
        self._finished.set()
        self._finished = asyncio.Event()

    async def _wait(self, head: int) -> None:
        """Until the feed moves past `head`, a send ends, or webhook_poll_interval_s passes (retries come
        due, leases of dead workers lapse) in the background leader; in the other workers,
        hold_events_resync_s if that is longer (the leader sends what comes due meanwhile, so that idle
        workers do not each ask); while yielding, LOAD_WINDOW_S at most (the load may have dropped)."""
        poll_s = self._settings.webhook_poll_interval_s
        if not self._leading():
            poll_s = max(poll_s, self._settings.hold_events_resync_s)
        timeout_s = LOAD_WINDOW_S if self._yielding else poll_s
        waits: list[asyncio.Future[bool]] = [asyncio.ensure_future(self._finished.wait())]
        if self._free_slots > 0:
            waits.append(asyncio.ensure_future(self._feed.wait_past(head, timeout_s)))
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _purge_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_purge or not self._leading():
            return
        self._next_purge = now + PURGE_INTERVAL_S
        async with self._database:
            purged = await self._store.purge(self._settings.hold_events_retention_s, PURGE_BATCH_SIZE)
        if purged:
            log.info("purged %d failed webhook deliveries of events no longer kept", purged)

    async def _deliver(self, delivery: ClaimedDelivery) -> None:
        """One attempt, and its outcome recorded. A database outage here leaves the lease to lapse: the
        delivery is attempted again (a duplicate, if this attempt got through)."""
        try:
            body = event_body(delivery)
            if body is None:
                await self._failed(delivery, None, "the event is no longer kept", give_up=True)
                return
            status, error = await self._post(delivery, body)
            if status is not None and 200 <= status < 300:
                async with self._database:
                    latency_s = await self._store.delivered(delivery.endpoint_id, delivery.event_id)
                metrics.WEBHOOK_DELIVERED.inc()
                if latency_s is not None:
                    metrics.WEBHOOK_DELIVERY_LATENCY_SECONDS.observe(latency_s)
            else:
                await self._failed(delivery, status, error or "no answer")
        except BackendUnavailable as exc:
            log.warning(
                "webhook delivery of event %d: outcome not recorded, database unavailable (%s)",
                delivery.event_id,
                exc.__cause__,
            )
        except Exception:
            log.exception("webhook delivery of event %d failed", delivery.event_id)

    async def _post(self, delivery: ClaimedDelivery, body: bytes) -> tuple[int | None, str | None]:
        """Send once: (HTTP status or None, what went wrong or None)."""
        timestamp = int(time.time())
        signature = Webhook(delivery.secret).sign(
            str(delivery.event_id), datetime.fromtimestamp(timestamp, UTC), body
        )
        headers = {
            "webhook-id": str(delivery.event_id),
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
            "content-type": "application/json",
        }
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                self._client.stream("POST", delivery.url, content=body, headers=headers) as response,
            ):
                excerpt = await _excerpt(response)
        except TimeoutError:
            return None, f"no answer within {self._timeout_s:g} s"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            detail = str(exc) or type(exc).__name__
            return None, f"{type(exc).__name__}: {detail}"[:ERROR_CHARS]
        status = response.status_code
        if 200 <= status < 300:
            return status, None
        if 300 <= status < 400:
            location = response.headers.get("location", "")[:ERROR_CHARS]
            return status, f"HTTP {status}: redirect not followed (Location: {location})"
        return status, f"HTTP {status}: {excerpt}"

    async def _failed(
        self, delivery: ClaimedDelivery, status: int | None, error: str, *, give_up: bool = False
    ) -> None:
        settings = self._settings
        async with self._database:
            outcome = await self._store.attempt_failed(
                delivery,
                retry_in_s=retry_delay_s(
                    delivery.attempt, settings.webhook_retry_base_s, settings.webhook_retry_max_s
                ),
                window_s=0 if give_up else settings.webhook_retry_window_s,
                status=status,
                error=error,
            )
        if outcome == "failed":
            metrics.WEBHOOK_FAILED.inc()
            log.warning(
                "webhook delivery of event %d to endpoint %s failed for good after %d attempts: %s",
                delivery.event_id,
                delivery.endpoint_id,
                delivery.attempt,
                error,
                extra={"webhook_endpoint_id": delivery.endpoint_id},
            )
        elif outcome == "pending":
            metrics.WEBHOOK_RETRIED.inc()
        # None: the lease had lapsed and another attempt holds it now; that one's outcome counts.


async def _excerpt(response: httpx.Response) -> str:
    """At most EXCERPT_BYTES of the response as text; the rest is never read (the connection is closed)."""
    read = bytearray()
    async for chunk in response.aiter_raw():  # raw: a compressed body is not inflated
        read += chunk
        if len(read) >= EXCERPT_BYTES:
            break
    # Postgres text holds no NUL.
    return bytes(read[:EXCERPT_BYTES]).decode(errors="replace").replace("\x00", "\ufffd")
