"""Webhooks in the benchmark (section 8): what one endpoint costs the hot paths, and how fast and how
completely the events reach it.

- Side by side, in alternating rounds (off, on, off, on, ...), each on a fresh gateway with Redis in front,
  every setting as shipped: without any webhook endpoint, and with one endpoint registered to the benchmark's
  receiver (receiver.py, a process of its own on the same cores). Each round measures the rejection path and
  the commit path as sections 1 and 3 do. With webhooks on, what a warm-up left owed is delivered before the
  measured run starts, so that a run pays for the deliveries of its own events only; the commit run's events
  are then waited for at the receiver (how late they arrive is what any deferral of the sends costs).
- A flash sale with webhooks on: every seat asked for once per wrk thread (onsale.lua), every tenth hold
  confirmed, and every event the feed numbered waited for at the receiver.
- Holds of the minimum ttl left to lapse under the default sweep: each hold.expired's receipt against the
  hold's expires_at.
"""

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from gateway.config import Settings
from loadtests.bench.client import Connection, confirm_holds, create_holds, percentile
from loadtests.bench.results import (
    REDIS_FRONT,
    REDIS_FRONT_WEBHOOKS,
    Delivery,
    ExpiryDelivery,
    FlashSale,
    Lag,
    WebhookRound,
)
from loadtests.bench.scenarios import COMMIT_EVENT, STORM_EVENT, STORM_SLOT, Bench, Target
from loadtests.bench.stack import BenchError, Server, receiver_server

SALE_EVENT = "flash"
LAPSE_EVENT = "lapse"  # the holds left to expire
CONFIRM_EVERY = 10  # every tenth hold of the flash sale is confirmed, so that there are hold.confirmed too
RECEIVER_PATH = "/hooks"
POLL_S = 0.2  # how often the feed and the receiver are read while waiting (never during a measured run)
# Between runs: how long what a warm-up or a run left owed may take to reach the receiver, at most.
SETTLE_MAX_S = 120.0
# The flash sale's events must arrive within SALE_WAIT_S plus one second per SALE_WAIT_PER_S events: a
# ceiling far above any delivery rate worth having, which only a stuck delivery reaches.
SALE_WAIT_S = 60.0
SALE_WAIT_PER_S = 50
LAPSE_GRACE_S = 60.0  # beyond the ttl, for the lapsed holds' hold.expired to arrive

_DEFAULTS: dict[str, Any] = {field.name: field.default for field in msgspec.structs.fields(Settings)}
MIN_TTL_S: int = _DEFAULTS["min_ttl_s"]
SWEEP_INTERVAL_S: float = _DEFAULTS["sweep_interval_s"]

# The feed's state, and what is still owed to endpoints. $1: the event whose hold.expired are counted.
_FEED_STATE = """
SELECT count(*) FILTER (WHERE id IS NULL) AS unnumbered,
       count(*) FILTER (WHERE id IS NOT NULL) AS numbered,
       count(*) FILTER (WHERE id IS NOT NULL AND type = 'hold.expired' AND hold->>'event_id' = $1) AS expired,
       coalesce(max(id), 0) AS head,
       (SELECT count(*) FROM webhook_deliveries) AS owed
FROM hold_events
"""
# The numbered events after feed id $1, with the times to compare their receipts to (unix seconds).
_FEED_EVENTS = """
SELECT id, type, hold->>'event_id' AS event_id,
       extract(epoch FROM occurred_at)::float8 AS occurred_s,
       extract(epoch FROM (hold->>'expires_at')::timestamptz)::float8 AS expires_s
FROM hold_events
WHERE id IS NOT NULL AND id > $1
ORDER BY id
"""


@dataclass(frozen=True, slots=True)
class FeedState:
    unnumbered: int  # written, not yet numbered by the sequencer
    numbered: int
    expired: int  # numbered hold.expired of the event asked about
    head: int
    owed: int  # webhook deliveries not yet recorded as delivered (pending or failed)


@dataclass(frozen=True, slots=True)
class FeedEvent:
    id: int
    type: str
    event_id: str
    occurred_s: float
    expires_s: float


class Receiver:
    """The benchmark's webhook receiver, as the benchmark reads it."""

    def __init__(self, server: Server) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return self.server.url + RECEIVER_PATH

    async def _get(self, path: str) -> bytes:
        conn = await Connection.open(self.server.port)
        try:
            status, body = await conn.request("GET", path)
        finally:
            await conn.close()
        if status != 200:
            raise BenchError(f"the webhook receiver answered GET {path} with {status}")
        return body

    async def unique(self) -> int:
        """Distinct webhook-ids received so far."""
        return int(msgspec.json.decode(await self._get("/stats"))["unique"])

    async def received(self) -> dict[int, float]:
        """webhook-id (the event's feed id) -> unix seconds it first arrived."""
        first_seen = msgspec.json.decode(await self._get("/received"), type=dict[str, float])
        return {int(webhook_id): at for webhook_id, at in first_seen.items()}


class Webhooks:
    """The blocks, each a step of the benchmark (see __main__)."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    def steps(self) -> list[Callable[[], Awaitable[None]]]:
        """Off and on alternating, webhook_rounds of each, then the flash sale (and the lapsed holds)."""
        steps: list[Callable[[], Awaitable[None]]] = []
        for number in range(1, self.bench.plan.webhook_rounds + 1):
            steps += [
                functools.partial(self.round, number, on=False),
                functools.partial(self.round, number, on=True),
            ]
        return [*steps, self.flash_sale]

    @asynccontextmanager
    async def _gateway(self, on: bool) -> AsyncIterator[tuple[Target, Receiver | None]]:
        """A fresh gateway, Redis in front; with `on`, a receiver and one endpoint registered to it."""
        async with self.bench.target(REDIS_FRONT_WEBHOOKS if on else REDIS_FRONT) as target:
            if not on:
                yield target, None
                return
            with receiver_server(f"{target.database}_receiver", self.bench.log_dir) as server:
                await server.wait_ready("/stats")
                receiver = Receiver(server)
                await register_endpoint(target, receiver)
                yield target, receiver

    async def round(self, number: int, *, on: bool) -> None:
        bench, plan = self.bench, self.bench.plan
        label = f"webhooks {'on' if on else 'off'}, round {number}"
        async with self._gateway(on) as (target, receiver):
            await bench.hold_storm_slot(target)
            heads: list[int] = []

            async def settle() -> None:
                heads.append(await self.settled(target, receiver))

            process = receiver.server if receiver else None
            bench.say(f"{label}: rejection path")
            storm = [STORM_EVENT, STORM_SLOT]
            rejection = await bench.measure(
                target,
                "reject.lua",
                storm,
                connections=plan.storm_connections,
                duration_s=plan.run_s,
                warmup=("reject.lua", storm),
                after_warmup=settle,
                receiver=process,
            )
            bench.say(f"{label}: commit path")
            commit = await bench.measure(
                target,
                "commit.lua",
                [COMMIT_EVENT, "c"],
                connections=plan.storm_connections,
                duration_s=plan.short_run_s,
                warmup=("commit.lua", [COMMIT_EVENT, "w"]),
                after_warmup=settle,
                receiver=process,
            )
            delivery = None
            if receiver is not None:
                ended = time.monotonic()
                reached = await self.wait(target, receiver, max_wait_s=SETTLE_MAX_S)
                events = await feed_events(target, heads[-1])
                delivery = summarize(
                    events,
                    await receiver.received(),
                    feed=events,
                    after=heads[-1],
                    waited_s=time.monotonic() - ended,
                )
                if reached is None:
                    raise BenchError(f"{label}: the commit run's events did not all arrive")
            bench.report.webhook_rounds.append(
                WebhookRound(
                    round=number,
                    target=target.key,
                    rejection=rejection,
                    commit=commit,
                    commit_delivery=delivery,
                )
            )

    async def flash_sale(self) -> None:
        bench, plan = self.bench, self.bench.plan
        seats, threads = plan.webhook_sale_holds, min(plan.threads, plan.onsale_connections)
        async with self._gateway(on=True) as (target, receiver):
            assert receiver is not None
            requests = seats * threads  # each thread asks for every seat once, in an order of its own
            bench.say(f"webhooks on: flash sale, {requests:,} hold requests for {seats:,} seats")
            run = await bench.measure(
                target,
                "onsale.lua",
                [SALE_EVENT, str(seats), str(requests), str(threads)],
                connections=plan.onsale_connections,
                duration_s=max(60, requests // 50),  # a ceiling: the script stops each thread after its share
                warmup=("invalid.lua", []),  # 422s: no hold, no event
                until_threads_done=True,
                receiver=receiver.server,
            )
            chosen = (await sale_holds(target))[CONFIRM_EVERY - 1 :: CONFIRM_EVERY]
            bench.say(f"webhooks on: flash sale, confirming {len(chosen):,} of its holds")
            confirming = time.monotonic()
            statuses = await confirm_holds(target.server.port, chosen)
            confirmed_at = time.monotonic()
            bench.say("webhooks on: flash sale, waiting for every event at the receiver")
            expected = run.wrk.count(201) + statuses.get(200, 0)
            await self.wait(target, receiver, max_wait_s=SALE_WAIT_S + expected / SALE_WAIT_PER_S)
            events = await feed_events(target, 0)
            delivery = summarize(
                events,
                await receiver.received(),
                feed=events,
                after=0,
                waited_s=time.monotonic() - confirmed_at,
            )
            by_type: dict[str, int] = {}
            for event in events:
                by_type[event.type] = by_type.get(event.type, 0) + 1
            bench.report.flash_sale = FlashSale(
                run=run,
                seats=seats,
                confirms_sent=len(chosen),
                confirmed=statuses.get(200, 0),
                confirm_wall_s=confirmed_at - confirming,
                events_by_type=by_type,
                delivery=delivery,
            )
            bench.say(f"webhooks on: flash sale, {delivery.received:,} of {delivery.events:,} events arrived")
            await self.lapse(target, receiver)

    async def lapse(self, target: Target, receiver: Receiver) -> None:
        """Holds of the minimum ttl on a gateway with nothing else owed: their hold.expired, timed."""
        bench, count = self.bench, self.bench.plan.webhook_expiry_holds
        head = await self.settled(target, receiver)
        bench.say(f"webhooks on: {count} holds of {MIN_TTL_S} s left to lapse")
        await create_holds(
            target.server.port, LAPSE_EVENT, [f"L-{n}" for n in range(1, count + 1)], ttl_s=MIN_TTL_S
        )
        created = time.monotonic()
        await self.wait(target, receiver, max_wait_s=MIN_TTL_S + LAPSE_GRACE_S, expired=count)
        events = await feed_events(target, head)
        expired = [e for e in events if e.type == "hold.expired" and e.event_id == LAPSE_EVENT]
        receipts = await receiver.received()
        arrived = [(event, receipts[event.id]) for event in expired if event.id in receipts]
        bench.report.expiry = ExpiryDelivery(
            holds=count,
            ttl_s=MIN_TTL_S,
            sweep_interval_s=SWEEP_INTERVAL_S,
            delivery=summarize(
                expired, receipts, feed=events, after=head, waited_s=time.monotonic() - created
            ),
            after_expires=lag([at - event.expires_s for event, at in arrived]),
            swept_after=lag([event.occurred_s - event.expires_s for event in expired]),
        )

    # --- waiting for the receiver -------------------------------------------------------------------------

    async def wait(
        self, target: Target, receiver: Receiver | None, *, max_wait_s: float, expired: int = 0
    ) -> FeedState | None:
        """Until every event written is numbered and, with a receiver, every numbered one has arrived there
        and been recorded as delivered (and, with `expired`, that many hold.expired of LAPSE_EVENT are
        numbered); the feed's state then, or None once max_wait_s has passed."""
        deadline = time.monotonic() + max_wait_s
        conn = await asyncpg.connect(target.database_url)
        try:
            while True:
                row = await conn.fetchrow(_FEED_STATE, LAPSE_EVENT)
                assert row is not None
                state = FeedState(**dict(row))
                done = state.unnumbered == 0 and state.expired >= expired
                if done and receiver is not None:
                    done = state.owed == 0 and await receiver.unique() >= state.numbered
                if done:
                    return state
                if time.monotonic() >= deadline:
                    return None
                await asyncio.sleep(POLL_S)
        finally:
            await conn.close()

    async def settled(self, target: Target, receiver: Receiver | None) -> int:
        """wait(), or BenchError; the feed's head."""
        state = await self.wait(target, receiver, max_wait_s=SETTLE_MAX_S)
        if state is None:
            raise BenchError(f"{target.key}: events still owed after {SETTLE_MAX_S:.0f} s")
        return state.head


async def register_endpoint(target: Target, receiver: Receiver) -> None:
    """POST /v1/webhook-endpoints (the benchmark's gateways have no ops token: the route is open)."""
    conn = await Connection.open(target.server.port)
    try:
        status, answer = await conn.post("/v1/webhook-endpoints", {"url": receiver.url})
    finally:
        await conn.close()
    if status != 201:
        raise BenchError(f"{target.key}: registering the webhook endpoint gave {status} {answer[:300]!r}")


async def feed_events(target: Target, after: int) -> list[FeedEvent]:
    conn = await asyncpg.connect(target.database_url)
    try:
        records = await conn.fetch(_FEED_EVENTS, after)
    finally:
        await conn.close()
    return [FeedEvent(r["id"], r["type"], r["event_id"], r["occurred_s"], r["expires_s"]) for r in records]


async def sale_holds(target: Target) -> list[tuple[str, str]]:
    """(hold id, holder) of the flash sale's live holds, in the order they were made."""
    conn = await asyncpg.connect(target.database_url)
    try:
        records = await conn.fetch(
            "SELECT id, holder FROM holds WHERE event_id = $1 AND status = 'held' ORDER BY created_at, id",
            SALE_EVENT,
        )
    finally:
        await conn.close()
    return [(r["id"], r["holder"]) for r in records]


def lag(values_s: Sequence[float]) -> Lag | None:
    if not values_s:
        return None
    ordered = sorted(values_s)
    return Lag(p50_s=percentile(ordered, 50), p99_s=percentile(ordered, 99), max_s=ordered[-1])


def summarize(
    events: Sequence[FeedEvent],
    receipts: dict[int, float],
    *,
    feed: Sequence[FeedEvent],
    after: int,
    waited_s: float,
) -> Delivery:
    """`events` (some of `feed`, the numbered events past feed id `after`) against the receiver's receipts.
    An id past `after` that the receiver got and the feed does not hold is unexpected."""
    known = {event.id for event in feed}
    arrived = [(event, receipts[event.id]) for event in events if event.id in receipts]
    last_occurred = max((event.occurred_s for event in events), default=None)
    return Delivery(
        events=len(events),
        received=len(arrived),
        unexpected=sum(1 for webhook_id in receipts if webhook_id > after and webhook_id not in known),
        waited_s=waited_s,
        first_occurred_unix_s=min((event.occurred_s for event in events), default=None),
        last_occurred_unix_s=last_occurred,
        first_received_unix_s=min((at for _, at in arrived), default=None),
        last_received_unix_s=max((at for _, at in arrived), default=None),
        latency=lag([at - event.occurred_s for event, at in arrived]),
        received_after_last_event=sum(
            1 for _, at in arrived if last_occurred is not None and at > last_occurred
        ),
    )
