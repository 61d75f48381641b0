"""The hold service: Redis first, then Postgres; and Postgres alone when Redis is down.

Create: validate; take pending leases in Redis (a rival's lease is a 409 with no database work); claim in
Postgres, whose partial unique index decides; on success stretch the leases to the hold's life, on failure
drop them. Postgres is the truth: Redis only spares it the losers.
"""

import hashlib
import logging
import secrets
from dataclasses import dataclass
from typing import Literal

import msgspec

from gateway import metrics
from gateway.bulkhead import Bulkhead
from gateway.config import Settings
from gateway.errors import (
    HoldNotFound,
    IdempotencyKeyReused,
    InvalidRequest,
    InvalidTransition,
    NotHolder,
    SlotUnavailable,
)
from gateway.logs import note_request
from gateway.models import CreateHold, Hold, SlotState
from gateway.redis_front import AcquireOutcome, AcquireResult, Lease, RedisFront, RedisUnavailable
from gateway.store import HoldRow, SlotOwner, Store, remaining_ms

log = logging.getLogger(__name__)

_canonical_encoder = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True, slots=True)
class HoldResponse:
    hold: Hold
    status_code: int  # 201 created, 200 existing hold (a retry) or replay of a 200
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """A validated create request, in canonical form."""

    event_id: str
    slots: list[str]  # sorted, distinct
    holder: str
    ttl_ms: int
    idempotency_key: str | None
    request_hash: str | None  # of the canonical request, with an Idempotency-Key only
    token: str  # the lease owner token; derived from the key, so a retry reclaims its own leases


def new_hold_id() -> str:
    """128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


class HoldService:
    def __init__(self, store: Store, front: RedisFront | None, settings: Settings) -> None:
        self.store = store
        self.front = front
        self.settings = settings
        # Bulkhead for creates: a storm waits here, parked, instead of crowding the event loop.
        self._create_turns = Bulkhead(
            settings.create_concurrency,
            queue_timeout_s=settings.create_queue_timeout_s,
            retry_after_s=settings.retry_after_s,
        )

    @property
    def mode(self) -> str:
        return "redis-front" if self.front is not None and self.front.available else "db-only"

    def validate(self, body: CreateHold, idempotency_key: str | None) -> HoldRequest:
        """The checks that depend on settings; raise InvalidRequest naming the field."""
        settings = self.settings
        if len(body.slots) > settings.max_slots_per_hold:
            raise InvalidRequest(
                f"`slots` has {len(body.slots)} items; at most {settings.max_slots_per_hold} are allowed"
            )
        slots = sorted(set(body.slots))
        if len(slots) != len(body.slots):
            raise InvalidRequest("`slots` contains duplicates")
        ttl_s = settings.default_ttl_s if body.ttl_seconds is None else body.ttl_seconds
        if not settings.min_ttl_s <= ttl_s <= settings.max_ttl_s:
            raise InvalidRequest(
                f"`ttl_seconds` must be between {settings.min_ttl_s} and {settings.max_ttl_s}, got {ttl_s}"
            )
        request_hash = None
        if idempotency_key is None:
            token = secrets.token_hex(16)
        else:
            canonical = _canonical_encoder.encode(
                {"event_id": body.event_id, "slots": slots, "holder": body.holder, "ttl_seconds": ttl_s}
            )
            request_hash = hashlib.sha256(canonical).hexdigest()
            token = hashlib.sha256(
                b"\0".join([b"token", body.holder.encode(), idempotency_key.encode(), request_hash.encode()])
            ).hexdigest()[:32]
        return HoldRequest(
            body.event_id, slots, body.holder, ttl_s * 1000, idempotency_key, request_hash, token
        )

    async def _acquire_in_redis(self, front: RedisFront, lease: Lease, request: HoldRequest) -> AcquireResult:
        """Redis's verdict, taking turns: at most `create_concurrency` requests of this worker are at this
        step at once. The storm of losers ends here, so it waits parked instead of crowding the event loop
        (confirms and reads would wait behind it); winners leave the queue before their Postgres commit."""
        await self._create_turns.enter()
        try:
            return await front.acquire(
                lease, self.settings.lease_pending_ms, _record_key(front, request), request.request_hash
            )
        finally:
            self._create_turns.leave()

    async def create(self, request: HoldRequest) -> HoldResponse:
        front = self.front
        if front is None:
            return await self._create_in_postgres(request, lease=None)
        lease = front.lease(request.event_id, request.slots, request.token, request.holder)
        try:
            acquired = await self._acquire_in_redis(front, lease, request)
        except RedisUnavailable:
            return await self._create_in_postgres(request, lease=None)
        match acquired.outcome:
            case AcquireOutcome.CONFLICT:
                metrics.HOLDS_REJECTED_BY_REDIS.inc()
                note_request(layer="redis")
                raise SlotUnavailable(acquired.conflicts)
            case AcquireOutcome.KEY_REUSED:
                note_request(layer="redis")
                raise IdempotencyKeyReused()
            case AcquireOutcome.REPLAY:
                replay = await self._replay(request)
                if replay is not None:
                    return replay
                return await self._create_in_postgres(request, lease=None)
            case AcquireOutcome.HELD_BY_HOLDER:
                # Likely a retry of a hold this holder already has: Postgres tells which.
                return await self._create_in_postgres(request, lease=None)
            case AcquireOutcome.ACQUIRED:
                return await self._create_in_postgres(request, lease=lease)

    async def _create_in_postgres(self, request: HoldRequest, lease: Lease | None) -> HoldResponse:
        note_request(layer="postgres")
        hold_id = new_hold_id()
        try:
            result = await self.store.claim(
                hold_id=hold_id,
                token=request.token,
                event_id=request.event_id,
                holder=request.holder,
                slots=request.slots,
                ttl_ms=request.ttl_ms,
                idempotency_key=request.idempotency_key,
                request_hash=request.request_hash,
            )
        except BaseException:
            if lease is not None:
                await self._release(lease)
            raise
        if result.created:
            assert result.created_at is not None
            assert result.expires_at is not None
            hold = HoldRow(
                id=hold_id,
                token=request.token,
                event_id=request.event_id,
                holder=request.holder,
                slots=request.slots,
                status="held",
                created_at=result.created_at,
                expires_at=result.expires_at,
                confirmed_at=None,
                cancelled_at=None,
                db_now=result.db_now,
            )
            await self._extend_after_commit(hold, request)
            metrics.HOLDS_CREATED.inc()
            note_request(hold_id=hold_id)
            log.info(
                "hold %s created",
                hold_id,
                extra={"hold_id": hold_id, "event_id": request.event_id, "slots": len(request.slots)},
            )
            return HoldResponse(hold.to_model(), 201)

        # Not created: the slots are taken, or the Idempotency-Key was used before.
        if request.idempotency_key is not None:
            replay = await self._replay(request)
            if replay is not None:
                # The leases carrying this token belong to that committed hold: keep them.
                return replay
        if lease is not None:
            await self._release(lease)
        taken = sorted(set(request.slots) - set(result.claimed_slots))
        owners = await self.store.slot_owners(request.event_id, taken)
        await self._adopt(owners)
        existing = _same_holders_hold(owners, request)
        if existing is not None:
            note_request(hold_id=existing.id)
            return HoldResponse(existing.to_model(), 200)
        # A slot whose owner committed and then released between the claim and this read counts as taken:
        # the claim lost to it.
        metrics.HOLDS_REJECTED_BY_POSTGRES.inc()
        raise SlotUnavailable(taken)

    async def _replay(self, request: HoldRequest) -> HoldResponse | None:
        """The first response to this Idempotency-Key, or None if the key is unused."""
        assert request.idempotency_key is not None
        record = await self.store.idempotency_record(request.holder, request.idempotency_key)
        if record is None:
            return None
        if record.request_hash != request.request_hash:
            raise IdempotencyKeyReused()
        hold = await self.store.get_hold(record.hold_id)
        assert hold is not None  # the record references the hold
        note_request(hold_id=hold.id)
        return HoldResponse(hold.to_model(), record.status_code, replayed=True)

    async def _extend_after_commit(self, hold: HoldRow, request: HoldRequest) -> None:
        front = self.front
        if front is None:
            return
        lease = front.lease(hold.event_id, hold.slots, hold.token, hold.holder)
        await front.extend(lease, hold.remaining_ms, _record_key(front, request), request.request_hash)

    async def _release(self, lease: Lease) -> None:
        if self.front is not None:
            await self.front.release(lease)

    async def _adopt(self, owners: list[SlotOwner]) -> None:
        """Teach Redis the leases Postgres knows, so the next rivals stop at Redis."""
        front = self.front
        if front is None or not owners:
            return
        holds = {owner.hold.id: owner.hold for owner in owners}
        await front.adopt(
            [
                (front.lease(h.event_id, h.slots, h.token, h.holder), self._lease_ttl_ms(h))
                for h in holds.values()
            ]
        )

    def _lease_ttl_ms(self, hold: HoldRow) -> int:
        if hold.status == "confirmed":
            return self.settings.confirmed_lease_ms
        return max(1, hold.remaining_ms)

    async def get(self, hold_id: str) -> Hold:
        hold = await self.store.get_hold(hold_id)
        if hold is None:
            raise HoldNotFound()
        return hold.to_model()

    async def confirm(self, hold_id: str, holder: str) -> Hold:
        hold, changed = await self._transition("confirm", hold_id, holder)
        if changed:
            assert hold.confirmed_at is not None
            held_s = (hold.confirmed_at - hold.created_at).total_seconds()
            metrics.HOLDS_CONFIRMED.inc()
            metrics.HOLD_TIME_TO_CONFIRM_SECONDS.observe(held_s)
            metrics.HOLD_LIFETIME_SECONDS.labels("confirmed").observe(held_s)
        if changed and self.front is not None:
            lease = self.front.lease(hold.event_id, hold.slots, hold.token, hold.holder)
            await self.front.extend(lease, self.settings.confirmed_lease_ms)
        return hold.to_model()

    async def cancel(self, hold_id: str, holder: str) -> Hold:
        hold, changed = await self._transition("cancel", hold_id, holder)
        if changed:
            metrics.HOLDS_CANCELLED.inc()
            if hold.confirmed_at is None and hold.cancelled_at is not None:  # it ends its life as a hold now
                held_s = (hold.cancelled_at - hold.created_at).total_seconds()
                metrics.HOLD_LIFETIME_SECONDS.labels("cancelled").observe(held_s)
        if changed and self.front is not None:
            await self.front.release(self.front.lease(hold.event_id, hold.slots, hold.token, hold.holder))
        return hold.to_model()

    async def _transition(
        self, action: Literal["confirm", "cancel"], hold_id: str, holder: str
    ) -> tuple[HoldRow, bool]:
        """Run the transition in Postgres; the hold afterwards, and whether this call made the change.
        Doing it again is fine (200, unchanged); any other status it cannot leave is a 409."""
        note_request(hold_id=hold_id, layer="postgres")
        run = self.store.confirm if action == "confirm" else self.store.cancel
        transition = await run(hold_id, holder)
        if transition is None:
            raise HoldNotFound()
        hold = transition.hold
        if hold.holder != holder:
            raise NotHolder()
        target = "confirmed" if action == "confirm" else "cancelled"
        if transition.changed:
            log.info("hold %s %s", hold.id, target, extra={"hold_id": hold.id, "status": target})
        elif hold.effective_status != target:
            raise InvalidTransition(action, hold.effective_status)
        return hold, transition.changed

    async def slot_state(self, event_id: str, slot_id: str) -> SlotState:
        row = await self.store.slot_state(event_id, slot_id)
        if row is None:
            return SlotState(
                event_id=event_id, slot_id=slot_id, state="free", hold_id=None, expires_at=None, ttl_ms=None
            )
        held = row.status == "held"
        return SlotState(
            event_id=event_id,
            slot_id=slot_id,
            state="held" if held else "confirmed",
            hold_id=row.hold_id,
            expires_at=row.expires_at if held else None,
            ttl_ms=remaining_ms(row.expires_at, row.db_now) if held else None,
        )


def _record_key(front: RedisFront, request: HoldRequest) -> str | None:
    """The Redis key of the request's idempotency record, if it has an Idempotency-Key."""
    if request.idempotency_key is None:
        return None
    return front.idempotency_record_key(request.event_id, request.holder, request.idempotency_key)


def _same_holders_hold(owners: list[SlotOwner], request: HoldRequest) -> HoldRow | None:
    """The live hold of this holder on exactly these slots, if that is what blocked the claim."""
    hold_ids = {owner.hold.id for owner in owners}
    if len(hold_ids) != 1 or len(owners) != len(request.slots):
        return None
    hold = owners[0].hold
    if hold.holder == request.holder and sorted(hold.slots) == request.slots:
        return hold
    return None
