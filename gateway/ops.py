"""Reads for operations: holds by expiry, an event's slots, and the gateway's numbers. Postgres answers all of
them by index (never a scan of Redis's keyspace); Redis is asked only to compare its leases with Postgres."""

import asyncio
import base64
import binascii
import time
from datetime import datetime
from typing import TypeVar

import msgspec

from gateway import metrics
from gateway.errors import BackendUnavailable, InvalidRequest, Overloaded
from gateway.holds import HoldService
from gateway.keys import parse_lease_value
from gateway.leader import Leadership
from gateway.models import (
    Agreement,
    BackgroundRole,
    Counters,
    HoldCounts,
    HoldPage,
    HoldStatus,
    Identifier,
    RoundTrips,
    SeatMapSlot,
    SlotPage,
    SlotStateName,
    Stats,
    SweeperLag,
    WebhookStats,
)
from gateway.redis_front import RedisUnavailable
from gateway.store import Store, remaining_ms
from gateway.webhook_store import WebhookStore

T = TypeVar("T")

# The Counters field of each rejection reason: /v1/stats fills them, the /ops page is given this map.
REJECTION_COUNTERS = {reason: f"rejected_{reason}" for reason in metrics.REJECTION_REASONS}

# A cursor comes back from the client: its ids are checked like any id (a NUL would reach Postgres).
_HOLD_CURSOR = msgspec.json.Decoder(tuple[datetime, Identifier])
_SLOT_CURSOR = msgspec.json.Decoder(tuple[Identifier])


def _encode_cursor(value: object) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(value)).decode().rstrip("=")


def _decode_cursor(cursor: str, decoder: msgspec.json.Decoder[T]) -> T:
    try:
        return decoder.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidRequest("`cursor` is not a cursor this gateway issued") from None


class OpsService:
    def __init__(self, holds: HoldService, leadership: Leadership, reads: Store | None = None) -> None:
        """`reads`: where the listings and hold counts are read (a replica: GATEWAY_DATABASE_READ_URL); the
        hold service's store by default. Everything else here reads the primary."""
        self.holds = holds
        self.leadership = leadership
        self.store = holds.store
        self.reads = reads or holds.store
        self.settings = holds.settings
        self.webhooks = WebhookStore(holds.store)

    async def close(self) -> None:
        """Close the replica's store, if the listings have one of their own."""
        if self.reads is not self.store:
            await self.reads.close()

    async def list_holds(
        self,
        *,
        event_id: str | None,
        holder: str | None,
        status: HoldStatus | None,
        expiring_within_s: int | None,
        limit: int,
        cursor: str | None,
    ) -> HoldPage:
        if expiring_within_s is not None and status not in (None, "held"):
            raise InvalidRequest(
                "`expiring_within_seconds` applies to held holds only; omit `status` or use held"
            )
        after = None if cursor is None else _decode_cursor(cursor, _HOLD_CURSOR)
        rows = await self.reads.list_holds(
            event_id=event_id,
            holder=holder,
            status=status,
            expiring_within_ms=None if expiring_within_s is None else expiring_within_s * 1000,
            after=after,
            limit=limit + 1,  # one more tells whether there is a next page
        )
        page = rows[:limit]
        next_cursor = _encode_cursor((page[-1].expires_at, page[-1].id)) if len(rows) > limit else None
        return HoldPage(holds=[row.to_model() for row in page], next_cursor=next_cursor)

    async def event_slots(
        self, event_id: str, *, state: SlotStateName | None, limit: int, cursor: str | None
    ) -> SlotPage:
        """The event's live slots (held or confirmed) in slot order; a slot not listed is free. Read through
        the partial unique index, so a page costs the same whatever the event's history."""
        after = None if cursor is None else _decode_cursor(cursor, _SLOT_CURSOR)[0]
        rows = await self.reads.event_slots(event_id, after=after, state=state, limit=limit + 1)
        page = rows[:limit]
        slots = [
            SeatMapSlot(
                event_id=event_id,
                slot_id=row.slot_id,
                state=row.state,
                hold_id=row.hold_id,
                expires_at=row.expires_at,
                ttl_ms=None if row.expires_at is None else remaining_ms(row.expires_at, row.db_now),
            )
            for row in page
        ]
        next_cursor = _encode_cursor((page[-1].slot_id,)) if len(rows) > limit else None
        return SlotPage(event_id=event_id, slots=slots, next_cursor=next_cursor)

    async def stats(self, event_id: str | None) -> Stats:
        postgres_ms, redis_ms = await asyncio.gather(self._postgres_round_trip(), self._redis_round_trip())
        counts, agreement, webhooks = await asyncio.gather(
            self.reads.hold_stats(event_id),
            self._agreement(event_id, redis_up=redis_ms is not None),
            self._webhook_stats() if event_id is None else _nothing(),
        )
        oldest = counts.oldest_lapsed_expires_at
        return Stats(
            event_id=event_id,
            mode="redis-front" if self.holds.mode == "redis-front" else "db-only",
            mode_reason=mode_reason(self.holds),
            holds=HoldCounts(
                active=counts.active_holds,
                confirmed=counts.confirmed_holds,
                confirmed_slots=counts.confirmed_slots,
                expiring_within_10s=counts.expiring_within_10s,
                expiring_within_60s=counts.expiring_within_60s,
                expired_last_minute=counts.expired_last_minute,
            ),
            sweeper=SweeperLag(
                lag_ms=0 if oldest is None else remaining_ms(counts.db_now, oldest),
                oldest_lapsed_expires_at=oldest,
            ),
            round_trip_ms=RoundTrips(postgres_ms=postgres_ms, redis_ms=redis_ms),
            agreement=agreement,
            counters=_counters(),
            background=self._background(),
            generated_at=counts.db_now,
            webhooks=webhooks,
        )

    def _background(self) -> BackgroundRole:
        leadership = self.leadership
        return BackgroundRole(
            worker_id=leadership.worker_id,
            leader=leadership.leading,
            leader_id=leadership.leader_id,
            term=leadership.term,
        )

    async def _webhook_stats(self) -> WebhookStats:
        counts = await self.webhooks.counts()
        oldest = counts.oldest_pending_at
        return WebhookStats(
            endpoints=counts.endpoints,
            pending=counts.pending,
            failed=counts.failed,
            delivered=counts.delivered,
            oldest_pending_age_ms=0 if oldest is None else remaining_ms(counts.db_now, oldest),
            oldest_pending_occurred_at=oldest,
        )

    async def _postgres_round_trip(self) -> float | None:
        started = time.perf_counter()
        if not await self.store.ping():
            return None
        return round((time.perf_counter() - started) * 1000, 3)

    async def _redis_round_trip(self) -> float | None:
        front = self.holds.front
        if front is None:
            return None
        started = time.perf_counter()
        if not await front.ping():
            return None
        return round((time.perf_counter() - started) * 1000, 3)

    async def _agreement(self, event_id: str | None, *, redis_up: bool) -> Agreement | None:
        front = self.holds.front
        sample = self.settings.agreement_sample_size
        if front is None or not redis_up:
            return None
        live = await self.store.live_slot_tokens(event_id, sample + 1)
        checked = live[:sample]
        try:
            values = await front.lease_values([(slot.event_id, slot.slot_id) for slot in checked])
        except (RedisUnavailable, Overloaded):
            return None
        leased = missing = other = 0
        for slot, value in zip(checked, values, strict=True):
            if value is None:
                missing += 1
            elif _lease_token(value) == slot.token:
                leased += 1
            else:
                other += 1
        return Agreement(
            checked_slots=len(checked),
            complete=len(live) <= sample,
            leased=leased,
            missing=missing,
            other_token=other,
        )

    async def database_gauges(self) -> dict[str, tuple[str, float]]:
        """The gauges /metrics reads from Postgres at scrape time; empty if Postgres does not answer."""
        try:
            counts, webhooks = await asyncio.gather(self.reads.hold_stats(None), self.webhooks.counts())
        except BackendUnavailable:
            return {}
        oldest = counts.oldest_lapsed_expires_at
        lag_s = 0.0 if oldest is None else max(0.0, (counts.db_now - oldest).total_seconds())
        oldest_pending = webhooks.oldest_pending_at
        return {
            "gateway_webhook_pending_deliveries": (
                "Webhook deliveries owed (waiting, retrying or in flight), over every endpoint.",
                webhooks.pending,
            ),
            "gateway_webhook_failed_deliveries": (
                "Webhook deliveries given up after the retry window, until redelivered or purged.",
                webhooks.failed,
            ),
            "gateway_webhook_oldest_pending_seconds": (
                "How long ago the event of the oldest pending webhook delivery occurred; 0 when none is.",
                0.0
                if oldest_pending is None
                else max(0.0, (webhooks.db_now - oldest_pending).total_seconds()),
            ),
            "gateway_active_holds": ("Holds held and not yet expired, per Postgres.", counts.active_holds),
            "gateway_confirmed_slots": ("Slots in confirmed holds, per Postgres.", counts.confirmed_slots),
            "gateway_sweeper_lag_seconds": (
                "How long the oldest lapsed held row has waited for the sweeper; 0 when caught up.",
                lag_s,
            ),
        }


async def _nothing() -> None:
    return None


def _lease_token(value: str) -> str | None:
    # A blocked seat (keys.BLOCKED_LEASE_VALUE) is no lease value either: where Postgres has a live hold on
    # it, Redis turns that hold's rivals away all the same, but the hold has no lease there.
    try:
        return parse_lease_value(value).token
    except ValueError:
        return None  # not a lease value at all: counted as another hold's


def mode_reason(holds: HoldService) -> str | None:
    front = holds.front
    if front is None:
        return "redis not configured"
    if front.available:
        return None
    return front.breaker.reason


def _counters() -> Counters:
    totals = metrics.counter_totals()

    def total(name: str) -> int:
        return int(totals.get(name, 0.0))

    # A reason without its Counters field (or a field without its reason) fails here, in every stats read.
    rejected = {
        field: total(f'gateway_hold_rejections_total{{reason="{reason}"}}')
        for reason, field in REJECTION_COUNTERS.items()
    }
    return Counters(
        holds_created=total("gateway_holds_created_total"),
        rejected_by_redis=total('gateway_holds_rejected_total{layer="redis"}'),
        rejected_by_postgres=total('gateway_holds_rejected_total{layer="postgres"}'),
        holds_confirmed=total("gateway_holds_confirmed_total"),
        holds_cancelled=total("gateway_holds_cancelled_total"),
        holds_expired=total("gateway_holds_expired_total"),
        **rejected,
    )
