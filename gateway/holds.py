"""The hold service: create, extend, confirm, cancel and read. Redis first, then Postgres; Postgres alone
when Redis is down.

Create: validate; take pending leases in Redis (a rival's lease is a 409 with no database work); claim in
Postgres, whose partial unique index decides. Then one of two stories: won (stretch the leases to the
hold's life) or lost (drop them, tell a retry from a rival, teach Redis the owner). Postgres is the truth:
Redis only spares it the losers. Keeping Redis's leases in line with Postgres is gateway.lease_sync's.
"""

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, cast

import msgspec
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from gateway import faultpoints, items, metrics
from gateway.bulkhead import Bulkhead
from gateway.config import Settings
from gateway.errors import (
    BackendUnavailable,
    GatewayError,
    HolderLimitExceeded,
    HoldNotFound,
    IdempotencyKeyReused,
    InvalidRequest,
    InvalidTransition,
    LifetimeExceeded,
    NotHolder,
    OutcomeUnknown,
    RetryLater,
    SlotNotFound,
    SlotUnavailable,
    WrongPod,
)
from gateway.group_commit import GroupCommitter
from gateway.items import EventPart
from gateway.lease_sync import LeaseSync, lease_ttl_ms
from gateway.logs import note_request
from gateway.models import CreateHold, Hold, SlotState, SlotStateName, new_id
from gateway.redis_front import (
    AcquireOutcome,
    AcquireResult,
    Acquisition,
    Extension,
    Lease,
    RedisFront,
    RedisUnavailable,
)
from gateway.shard_map import HOLD_ID_SEPARATOR, ShardMapFile, pod_of_hold
from gateway.store import (
    ClaimOutcomeUnknown,
    ClaimRequest,
    ClaimResult,
    HoldRow,
    IdempotencyRecord,
    InventoryRefusal,
    SlotOwner,
    Store,
    remaining_ms,
)

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

    parts: list[EventPart]  # what it takes, per event (see gateway.items)
    holder: str
    ttl_ms: int
    idempotency_key: str | None
    request_hash: str | None  # of the canonical request, with an Idempotency-Key only
    token: str  # the lease owner token; derived from the key, so a retry reclaims its own leases
    client_key_id: str  # the client key the hold will belong to ('' while the gateway is open)

    @property
    def first_event_id(self) -> str:
        """The event whose Redis keys hold the request's idempotency record."""
        return self.parts[0].event_id

    @property
    def seat_pairs(self) -> list[tuple[str, str]]:
        return items.seat_pairs(self.parts)


# Redis calls gathered per batch (acquisitions of creates, post-commit extensions), and batches under way at
# once (those of a later pass wait for one).
_REDIS_BATCH_MAX_SIZE = 64
_REDIS_BATCHES_IN_FLIGHT = 4

# How long creates give way after a confirm, cancel or extension met a storm of losers: a storm's confirms
# come more often than this, so it stays narrow while they keep coming.
_GIVE_WAY_S = 1.0


class RecentVerdicts:
    """Redis's verdicts on this worker's creates over the current second and the one before: whether most
    were refusals."""

    __slots__ = ("_before", "_refused", "_since", "_taken")

    def __init__(self) -> None:
        self._since = time.monotonic()
        self._refused = self._taken = 0
        self._before = (0, 0)  # refused, taken in the second before

    def note(self, *, refused: bool) -> None:
        self._roll()
        if refused:
            self._refused += 1
        else:
            self._taken += 1

    def mostly_refused(self) -> bool:
        self._roll()
        return self._refused + self._before[0] > self._taken + self._before[1]

    def _roll(self) -> None:
        now = time.monotonic()
        if now - self._since >= 1.0:
            recent = now - self._since < 2.0  # the second that just ended counts; an older one does not
            self._before = (self._refused, self._taken) if recent else (0, 0)
            self._refused = self._taken = 0
            self._since = now


_Part = TypeVar("_Part", Acquisition, Extension)
_PartOutcome = TypeVar("_PartOutcome")


async def _by_event(
    parts: list[_Part], call: Callable[[list[_Part]], Awaitable[list[_PartOutcome] | None]]
) -> list[_PartOutcome | BaseException | None]:
    """`call` once per event of `parts` (one script call per hash tag), all sent at once; each part's outcome,
    in order: its share of its call's reply, that call's exception, or None where the call gave None."""
    by_event: dict[str, list[int]] = {}
    for index, part in enumerate(parts):
        by_event.setdefault(part.lease.event_id, []).append(index)
    replies = await asyncio.gather(
        *(call([parts[i] for i in indexes]) for indexes in by_event.values()), return_exceptions=True
    )
    outcomes: list[_PartOutcome | BaseException | None] = [None] * len(parts)
    for indexes, reply in zip(by_event.values(), replies, strict=True):
        for position, index in enumerate(indexes):
            outcomes[index] = reply[position] if isinstance(reply, list) else reply
    return outcomes


def new_hold_id(pod: str | None = None) -> str:
    """128 random bits, URL-safe; after the pod's name and a dot when the gateway serves a pod, so that a hold
    is found by its id alone."""
    return new_id(16) if pod is None else f"{pod}{HOLD_ID_SEPARATOR}{new_id(16)}"


class HoldService:
    def __init__(self, store: Store, front: RedisFront | None, settings: Settings) -> None:
        self.store = store
        self.front = front
        self.settings = settings
        # Event-sharded pods: the map this gateway routes by (None: one database serves every event).
        self.shard_map = None if settings.shard_map is None else ShardMapFile(Path(settings.shard_map))
        self.lease_sync = None if front is None else LeaseSync(store, front, settings)
        # Bulkhead for creates: a storm waits here, parked, instead of crowding the event loop.
        self._create_turns = Bulkhead(
            settings.create_concurrency,
            size_giving_way=settings.create_concurrency_giving_way,
            queue_timeout_s=settings.create_queue_timeout_s,
            retry_after_s=settings.retry_after_s,
        )
        self._create_verdicts = RecentVerdicts()
        # The post-commit extensions of winners that resume in one event-loop pass (a claim batch's), one
        # extend.lua call per event: a script call per winner cost about a sixth of the commit path's CPU.
        self._extensions: GroupCommitter[Extension, int | None] = GroupCommitter(
            self._extend_batch,
            key=id,  # any two may ride together
            max_batch=_REDIS_BATCH_MAX_SIZE,
            max_in_flight=_REDIS_BATCHES_IN_FLIGHT,
            batch_sizes=metrics.EXTEND_BATCH_SIZE,
        )
        # Likewise the creates that ask Redis in one pass, one acquire.lua call per event: the script judges
        # them one after another, as if each were a call of its own (two for one seat: the first wins).
        self._acquisitions: GroupCommitter[Acquisition, AcquireResult] = GroupCommitter(
            self._acquire_batch,
            key=id,
            max_batch=_REDIS_BATCH_MAX_SIZE,
            max_in_flight=_REDIS_BATCHES_IN_FLIGHT,
            batch_sizes=metrics.ACQUIRE_BATCH_SIZE,
        )

    def _make_way(self) -> None:
        """A confirm, cancel or extension is here: if this worker's creates are mostly losing (a storm of
        rejections), they take turns narrowly for a while, so that the storm does not fill every event-loop
        pass it needs. A storm of winners is useful work (their confirms follow) and never gives way."""
        if self._create_verdicts.mostly_refused() and self._create_turns.give_way(_GIVE_WAY_S):
            metrics.CREATES_GIVING_WAY.inc()

    @property
    def mode(self) -> str:
        return "redis-front" if self.front is not None and self.front.available else "db-only"

    def validate(self, body: CreateHold, idempotency_key: str | None, client_key_id: str = "") -> HoldRequest:
        """The checks that depend on settings; raise InvalidRequest naming the field. The request is the
        client key's (`client_key_id`): its Idempotency-Key is scoped to that key and the holder."""
        settings = self.settings
        if body.slots is not None:  # the one-event form, with its own field names in errors
            if len(body.slots) > settings.max_slots_per_hold:
                raise InvalidRequest(
                    f"`slots` has {len(body.slots)} items; at most {settings.max_slots_per_hold} are allowed"
                )
            if len(set(body.slots)) != len(body.slots):
                raise InvalidRequest("`slots` contains duplicates")
        parts = items.parts_from_request(body.all_items)
        if self.shard_map is not None:
            self._check_pod_of_events(part.event_id for part in parts)
        units = sum(part.units for part in parts)
        if units > settings.max_slots_per_hold:
            raise InvalidRequest(
                f"`items` ask for {units} units in all; at most {settings.max_slots_per_hold} are allowed"
            )
        ttl_s = settings.default_ttl_s if body.ttl_seconds is None else body.ttl_seconds
        if not settings.min_ttl_s <= ttl_s <= settings.max_ttl_s:
            raise InvalidRequest(
                f"`ttl_seconds` must be between {settings.min_ttl_s} and {settings.max_ttl_s}, got {ttl_s}"
            )
        request_hash = None
        if idempotency_key is None:
            token = secrets.token_hex(16)
        else:
            canonical: dict[str, object] = {"holder": body.holder, "ttl_seconds": ttl_s}
            if items.is_plain(parts):  # as before pools: the records of earlier requests still match
                canonical |= {"event_id": parts[0].event_id, "slots": list(parts[0].seats)}
            else:
                canonical["items"] = items.canonical_items(parts)
            request_hash = hashlib.sha256(_canonical_encoder.encode(canonical)).hexdigest()
            key_parts = [b"token", client_key_id.encode(), body.holder.encode(), idempotency_key.encode()]
            token = hashlib.sha256(b"\0".join([*key_parts, request_hash.encode()])).hexdigest()[:32]
        return HoldRequest(
            parts, body.holder, ttl_s * 1000, idempotency_key, request_hash, token, client_key_id
        )

    def _check_pod_of_events(self, event_ids: Iterable[str]) -> None:
        """WrongPod unless this gateway's pod owns the events (by its shard map; the pod's database checks
        again at the claim); InvalidRequest for a hold whose events are in several pods."""
        assert self.shard_map is not None
        pods = {event_id: self.shard_map.pod_of(event_id) for event_id in event_ids}
        if len(set(pods.values())) > 1:
            named = ", ".join(f"{event!r} in pod {pod!r}" for event, pod in pods.items())
            raise InvalidRequest(
                f"`items` name events of several pods ({named}): a hold's events share a pod"
            )
        event_id, pod = next(iter(pods.items()))
        if pod != self.settings.pod:
            raise WrongPod(f"event {event_id!r}", pod, self.shard_map.current().pods[pod].gateway_url)

    def check_pod_of_request(self, body: CreateHold) -> None:
        """With pods: WrongPod (or InvalidRequest) for a create this gateway's pod does not serve, before
        anything else is checked (the pod that serves it checks the rest)."""
        if self.shard_map is not None:
            self._check_pod_of_events(item.event_id for item in body.all_items)

    def check_pod_of_event(self, event_id: str) -> None:
        """With pods: WrongPod for another pod's event (its reads and inventory are that pod's)."""
        if self.shard_map is not None:
            self._check_pod_of_events((event_id,))

    def check_pod_of_hold(self, hold_id: str) -> None:
        """WrongPod for the id of a hold made by another pod (ids made without pods are looked up here)."""
        pod = pod_of_hold(hold_id)
        if self.shard_map is None or pod is None or pod == self.settings.pod:
            return
        pods = self.shard_map.current().pods
        if pod not in pods:
            raise HoldNotFound()
        raise WrongPod(f"hold {hold_id!r}", pod, pods[pod].gateway_url)

    def _leases(self, front: RedisFront, hold: HoldRequest | HoldRow) -> list[Lease]:
        """The hold's Redis leases, one per event."""
        return [
            front.lease(part.event_id, part.seats, hold.token, hold.holder, part.pools) for part in hold.parts
        ]

    async def _acquire_in_redis(
        self, front: RedisFront, lease: Lease, request: HoldRequest, record_key: str | None
    ) -> AcquireResult:
        """Redis's verdict on one event's part, taking turns: at most `create_concurrency` requests of this
        worker are at this step at once. The storm of losers ends here, so it waits parked instead of
        crowding the event loop (confirms and reads would wait behind it); winners leave the queue before
        their Postgres commit. An event not synchronized on this Redis is synchronized first (once), then
        asked again."""
        await self._create_turns.enter()
        try:
            asked_at = time.monotonic()
            verdict = await self._acquire(front, lease, request, record_key)
            if verdict.outcome is AcquireOutcome.NOT_SYNCED:
                assert self.lease_sync is not None
                if await self.lease_sync.synchronize_event(lease.event_id, asked_at):
                    verdict = await self._acquire(front, lease, request, record_key)
            self._create_verdicts.note(
                refused=verdict.outcome in (AcquireOutcome.CONFLICT, AcquireOutcome.SOLD_OUT)
            )
            return verdict
        finally:
            self._create_turns.leave()

    async def _acquire(
        self, front: RedisFront, lease: Lease, request: HoldRequest, record_key: str | None
    ) -> AcquireResult:
        request_fp = request.request_hash if record_key is not None else None
        return await self._acquisitions.submit(
            Acquisition(lease, self.settings.lease_pending_ms, record_key, request_fp)
        )

    async def create(self, request: HoldRequest) -> HoldResponse:
        """Redis first, event by event (each event's keys share one hash tag, so one script call each); a
        part refused gives back the parts taken before it. Then Postgres decides."""
        front = self.front
        if front is None:
            return await self._create_in_postgres(request, leases=[])
        taken: list[Lease] = []
        for index, lease in enumerate(self._leases(front, request)):
            record_key = _record_key(front, request) if index == 0 else None
            try:
                verdict = await self._acquire_in_redis(front, lease, request, record_key)
            except RedisUnavailable:
                await self._release_all(taken)
                return await self._create_in_postgres(request, leases=[])
            if verdict.outcome is AcquireOutcome.ACQUIRED:
                taken.append(lease)
                continue
            await self._release_all(taken)
            match verdict.outcome:
                case AcquireOutcome.CONFLICT | AcquireOutcome.SOLD_OUT:
                    metrics.HOLDS_REJECTED_BY_REDIS.inc()
                    note_request(layer="redis")
                    raise _unavailable(
                        lease.event_id,
                        taken_seats=verdict.conflicts,
                        blocked_seats=verdict.blocked,
                        short_pools=[
                            (lease.event_id, pool_id, dict(lease.pools)[pool_id], available)
                            for pool_id, available in verdict.short_pools
                        ],
                    )
                case AcquireOutcome.KEY_REUSED:
                    note_request(layer="redis")
                    raise IdempotencyKeyReused()
                case AcquireOutcome.REPLAY:
                    replay = await self._replay(request)
                    if replay is not None:
                        return replay
                    return await self._create_in_postgres(request, leases=[])
                case _:
                    # HELD_BY_HOLDER: likely a retry of a hold this holder already has; NOT_SYNCED or
                    # UNKNOWN_POOL: Redis cannot judge this event now. Postgres tells.
                    return await self._create_in_postgres(request, leases=[])
        if faultpoints.ACTIVE:
            await faultpoints.reached("after_redis_acquire")
        return await self._create_in_postgres(request, leases=taken)

    async def _create_in_postgres(self, request: HoldRequest, leases: list[Lease]) -> HoldResponse:
        """Claim in Postgres, which decides; `leases` are the pending leases Redis gave this request."""
        note_request(layer="postgres")
        sent_at = time.monotonic()
        try:
            hold_id, result = await self._claim(request)
        except OutcomeUnknown:
            raise  # the hold may exist: its leases stay, and lapse with their pending TTL if it does not
        except BaseException:
            await self._release_all(leases)
            raise
        if result.created:
            return await self._won(request, hold_id, result, leases, sent_at)
        return await self._lost(request, result, leases, sent_at)

    async def _won(
        self, request: HoldRequest, hold_id: str, result: ClaimResult, leases: list[Lease], sent_at: float
    ) -> HoldResponse:
        """The claim committed: stretch the leases to the hold's life (set them, where Redis gave none) and
        answer 201. Its request line (status 201, `hold_id`) is the creation's log line at INFO; this one,
        with the event and units, is at DEBUG: a second line per winner cost a sixth of the commit path's
        CPU."""
        assert result.created_at is not None
        assert result.expires_at is not None
        single = len(request.parts) == 1
        hold = HoldRow(
            id=hold_id,
            token=request.token,
            event_id=request.first_event_id if single else None,
            holder=request.holder,
            slots=list(request.parts[0].seats) if single else [],
            status="held",
            created_at=result.created_at,
            expires_at=result.expires_at,
            confirmed_at=None,
            cancelled_at=None,
            client_key_id=request.client_key_id,
            db_now=result.db_now,
            stored_items=items.to_json(request.parts),
        )
        if faultpoints.ACTIVE:
            await faultpoints.reached("after_commit")
        await self._extend_after_commit(hold, request, leases, sent_at)
        metrics.HOLDS_CREATED.inc()
        note_request(hold_id=hold_id)
        log.debug(
            "hold %s created",
            hold_id,
            extra={
                "hold_id": hold_id,
                "event_id": hold.event_id,
                "slots": sum(part.units for part in request.parts),
            },
        )
        return HoldResponse(hold.to_model(), 201)

    async def _lost(
        self, request: HoldRequest, result: ClaimResult, leases: list[Lease], sent_at: float
    ) -> HoldResponse:
        """Not created: the Idempotency-Key was used before (a replay, or 422), the events' inventories
        refused it, this holder already holds exactly this (200), or rivals own some seats (409). Postgres's
        answer is taught to Redis. The claim itself reported the owners and the key's record, so a loss
        costs no other statement unless a rival committed after the claim's snapshot (an owner missing):
        then ask again."""
        requested = request.seat_pairs
        claimed = set(result.claimed_seats)
        taken = [seat for seat in requested if seat not in claimed] if result.refusal is None else []
        owners = [owner for owner in result.owners if (owner.event_id, owner.slot_id) in set(taken)]
        seen_all = {(owner.event_id, owner.slot_id) for owner in owners} == set(taken)
        if request.idempotency_key is not None and result.refusal is None:
            record = result.prior_record
            if record is None and (not seen_all or not taken):  # not taken: a pool-only claim's key
                record = await self.store.idempotency_record(
                    request.client_key_id, request.holder, request.idempotency_key
                )
            try:
                replay = None if record is None else await self._replay_record(request, record)
            except IdempotencyKeyReused:
                await self._release_all(leases)  # taken for another request's seats: not this key's
                raise
            if replay is not None:
                # The leases carrying this token belong to that committed hold: keep them.
                return replay
        await self._release_all(leases)
        if result.refusal is not None:
            metrics.HOLDS_REJECTED_BY_POSTGRES.inc()
            raise self._refused(result.refusal, had_leases=bool(leases))
        if not taken:
            # Every seat was claimed, yet no hold was inserted: the token names an older hold (its unique
            # key), one whose Idempotency-Key record is gone but whose token the purge has not retired yet.
            # No rival holds a seat, so this is never a 409 (it would name no conflict): retry shortly.
            log.error("claim got every seat but its token names an older hold")
            raise BackendUnavailable(self.settings.retry_after_s)
        read_at = sent_at
        if not seen_all:
            read_at = time.monotonic()
            owners = await self.store.slot_owners(taken)
        if self.lease_sync is not None and owners:
            await self.lease_sync.adopt([owner.hold for owner in owners], read_at)
        existing = _same_holders_hold(owners, request)
        if existing is not None:
            note_request(hold_id=existing.id)
            return HoldResponse(existing.to_model(), 200)
        # A seat whose owner committed and then released between the claim and this read counts as taken:
        # the claim lost to it.
        metrics.HOLDS_REJECTED_BY_POSTGRES.inc()
        raise _unavailable(None, taken_pairs=taken)

    def _refused(self, refusal: InventoryRefusal, *, had_leases: bool) -> GatewayError:
        """The error for what the inventories refused. A refusal Redis should have made itself (its units or
        blocks were out of date) has the events synchronized again, so that the next request stops there."""
        if refusal.unknown_seats or refusal.unknown_pools:
            named = [f"seat {s!r} of {e!r}" for e, s in refusal.unknown_seats]
            named += [f"pool {p!r} of {e!r}" for e, p in refusal.unknown_pools]
            return InvalidRequest(
                f"`items` name what the event's inventory does not have: {', '.join(named[:20])}"
            )
        if refusal.over_per_hold:
            event_id, limit, units = refusal.over_per_hold[0]
            return InvalidRequest(
                f"`items` ask for {units} units of event {event_id!r}; its limit per hold is {limit}"
            )
        if refusal.holder_over_limit is not None:
            over = refusal.holder_over_limit
            metrics.REJECTED_FOR["holder_limit"].inc()
            return HolderLimitExceeded(over.event_id, over.limit, over.held, over.requested)
        if had_leases and self.lease_sync is not None:
            stale = {e for e, _ in refusal.blocked_seats} | {p.event_id for p in refusal.short_pools}
            self.lease_sync.resynchronize(sorted(stale))
        return _unavailable(
            None,
            blocked_pairs=refusal.blocked_seats,
            short_pools=[(p.event_id, p.pool_id, p.requested, p.available) for p in refusal.short_pools],
        )

    async def _claim(self, request: HoldRequest) -> tuple[str, ClaimResult]:
        """The claim, and the id of the hold it made. A lost answer is resolved, never guessed: the same claim
        runs again with the same token until Postgres answers (within claim_resolve_budget_s). The token is
        unique in Postgres, so a claim that finds its token already taken means the first one committed."""
        hold_id = new_hold_id(self.settings.pod)
        try:
            return hold_id, await self._claim_once(request, hold_id, in_transaction=False)
        except ClaimOutcomeUnknown as exc:
            log.warning("claim answer lost (%s): asking postgres again with the same token", exc)
        try:
            async for attempt in AsyncRetrying(
                # Postgres down, or this worker's pool full: either way the first claim's fate is still open.
                retry=retry_if_exception_type((ClaimOutcomeUnknown, RetryLater)),
                stop=stop_after_delay(self.settings.claim_resolve_budget_s),
                wait=wait_random_exponential(multiplier=0.05, max=1.0),
                reraise=True,
            ):
                with attempt:
                    hold_id = new_hold_id(self.settings.pod)
                    result = await self._claim_once(request, hold_id, in_transaction=True)
                    if result.created:
                        return hold_id, result  # the first claim did not commit; this one did
                    committed = await self.store.hold_by_token(request.token)
                    if committed is None:
                        return hold_id, result  # it did not commit, and lost the slots meanwhile
                    log.info("claim answer lost, but it had committed: hold %s", committed.id)
                    return committed.id, ClaimResult(
                        created=True,
                        idempotency_recorded=request.idempotency_key is not None,
                        claimed_seats=request.seat_pairs,
                        created_at=committed.created_at,
                        expires_at=committed.expires_at,
                        db_now=committed.db_now,
                    )
        except (ClaimOutcomeUnknown, RetryLater) as exc:
            raise OutcomeUnknown(self.settings.retry_after_s) from exc
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _claim_once(self, request: HoldRequest, hold_id: str, *, in_transaction: bool) -> ClaimResult:
        return await self.store.claim(
            ClaimRequest(
                hold_id=hold_id,
                token=request.token,
                holder=request.holder,
                parts=request.parts,
                ttl_ms=request.ttl_ms,
                idempotency_key=request.idempotency_key,
                request_hash=request.request_hash,
                client_key_id=request.client_key_id,
            ),
            in_transaction=in_transaction,
        )

    async def _replay(self, request: HoldRequest) -> HoldResponse | None:
        """The first response to this Idempotency-Key, or None if the key is unused."""
        assert request.idempotency_key is not None
        record = await self.store.idempotency_record(
            request.client_key_id, request.holder, request.idempotency_key
        )
        return None if record is None else await self._replay_record(request, record)

    async def _replay_record(self, request: HoldRequest, record: IdempotencyRecord) -> HoldResponse:
        """The first response to this request's Idempotency-Key, recorded as `record`; 422 if the record is
        of another request."""
        if record.request_hash != request.request_hash:
            raise IdempotencyKeyReused()
        hold = await self.store.get_hold(record.hold_id)
        assert hold is not None  # the record references the hold
        note_request(hold_id=hold.id)
        return HoldResponse(hold.to_model(), record.status_code, replayed=True)

    async def _extend_after_commit(
        self, hold: HoldRow, request: HoldRequest, leases: list[Lease], sent_at: float
    ) -> None:
        """`leases`: those Redis gave the request, one per event; none when it went to Postgres alone."""
        front = self.front
        if front is None:
            return
        if len(leases) != len(request.parts):
            leases = self._leases(front, request)
        ttl_ms = lease_ttl_ms(hold.remaining_ms, sent_at)
        if ttl_ms <= 0:
            await self._release_all(leases)  # the hold is already over (a very late answer): no lease at all
            return
        for index, lease in enumerate(leases):
            record_key = _record_key(front, request) if index == 0 else None
            fingerprint = request.request_hash if record_key else None
            await self._extensions.submit(Extension(lease, ttl_ms, record_key, fingerprint))

    async def _extend_batch(self, extensions: list[Extension]) -> list[int | BaseException | None]:
        """One extend.lua call per event of the batch, sent together (one write); each member's seats leased,
        None where Redis failed."""
        assert self.front is not None
        return await _by_event(extensions, self.front.extend_all)

    async def _acquire_batch(self, acquisitions: list[Acquisition]) -> list[AcquireResult | BaseException]:
        """One acquire.lua call per event of the batch, sent together; a failed call's exception
        (RedisUnavailable) is each of its members'."""
        assert self.front is not None
        outcomes = await _by_event(acquisitions, self.front.acquire_all)
        return cast("list[AcquireResult | BaseException]", outcomes)  # acquire_all never answers None

    async def _release_all(self, leases: Sequence[Lease]) -> None:
        if self.front is not None:
            for lease in leases:
                await self.front.release(lease)

    async def get(self, hold_id: str, client_key_id: str | None) -> Hold:
        """The hold, if it is the client key's (`client_key_id` None: any client key's, for operations)."""
        hold = await self.store.get_hold(hold_id)
        if hold is None or (client_key_id is not None and hold.client_key_id != client_key_id):
            raise HoldNotFound()  # another client key's hold is as unknown as one that does not exist
        return hold.to_model()

    async def confirm(self, hold_id: str, holder: str, client_key_id: str = "") -> Hold:
        self._make_way()
        hold, changed = await self._transition("confirm", hold_id, holder, client_key_id)
        if changed:
            assert hold.confirmed_at is not None
            held_s = (hold.confirmed_at - hold.created_at).total_seconds()
            metrics.HOLDS_CONFIRMED.inc()
            metrics.HOLD_TIME_TO_CONFIRM_SECONDS.observe(held_s)
            metrics.HOLD_LIFETIME_SECONDS.labels("confirmed").observe(held_s)
        if changed and self.front is not None:
            for lease in self._leases(self.front, hold):
                # Stretch only: a cancel that overtook this confirm has released the lease, and must not see
                # it set again for an hour. Pool units stay counted for good.
                await self.front.extend(
                    lease, self.settings.confirmed_lease_ms, set_missing=False, confirmed=True
                )
        return hold.to_model()

    async def extend(self, hold_id: str, holder: str, ttl_s: int, client_key_id: str = "") -> Hold:
        """Move a live held hold's expiry to now + `ttl_s` (by Postgres's clock), within the creation's TTL
        range and never past created_at + max_hold_lifetime_s; then its leases and pool entries in Redis."""
        self._make_way()
        settings = self.settings
        if not settings.min_ttl_s <= ttl_s <= settings.max_ttl_s:
            raise InvalidRequest(
                f"`ttl_seconds` must be between {settings.min_ttl_s} and {settings.max_ttl_s}, got {ttl_s}"
            )
        note_request(hold_id=hold_id, layer="postgres")
        sent_at = time.monotonic()
        extension = await self.store.extend(
            hold_id,
            holder,
            client_key_id,
            ttl_ms=ttl_s * 1000,
            max_lifetime_ms=settings.max_hold_lifetime_s * 1000,
        )
        if extension is None:
            raise HoldNotFound()
        hold = extension.hold
        if hold.holder != holder:
            raise NotHolder()
        if not extension.changed:
            if extension.live:
                raise LifetimeExceeded(extension.max_expires_at)
            # Held by its row yet not live: lapsed (a claim takes a seat or units over only once it has).
            raise InvalidTransition("extend", "expired" if hold.status == "held" else hold.status)
        metrics.HOLDS_EXTENDED.inc()
        log.info(
            "hold %s extended",
            hold.id,
            extra={
                "hold_id": hold.id,
                "expires_at": hold.expires_at.isoformat(),
                "extensions": hold.extensions,
            },
        )
        if self.front is not None:
            await self._stretch_leases(self.front, hold, sent_at)
        return hold.to_model()

    async def _stretch_leases(self, front: RedisFront, hold: HoldRow, sent_at: float) -> None:
        """After an extension's commit: the seat leases and pool entries get the hold's new remaining life.
        Stretch only (a cancel that overtook this extension has released them, and they must stay released);
        a lease shorter than its hold only sends a rival on to Postgres, which refuses it. Best effort, as
        every Redis step after a commit: Postgres has the final word."""
        leases = self._leases(front, hold)
        ttl_ms = lease_ttl_ms(hold.remaining_ms, sent_at)
        if ttl_ms <= 0:
            await self._release_all(leases)  # over already (a very late answer): no lease at all
            return
        for lease in leases:
            await front.extend(lease, ttl_ms, set_missing=False)

    async def cancel(self, hold_id: str, holder: str, client_key_id: str = "") -> Hold:
        self._make_way()
        hold, changed = await self._transition("cancel", hold_id, holder, client_key_id)
        if changed:
            metrics.HOLDS_CANCELLED.inc()
            if hold.confirmed_at is None and hold.cancelled_at is not None:  # it ends its life as a hold now
                held_s = (hold.cancelled_at - hold.created_at).total_seconds()
                metrics.HOLD_LIFETIME_SECONDS.labels("cancelled").observe(held_s)
        if changed and self.front is not None:
            await self._release_all(self._leases(self.front, hold))
        return hold.to_model()

    async def _transition(
        self, action: Literal["confirm", "cancel"], hold_id: str, holder: str, client_key_id: str
    ) -> tuple[HoldRow, bool]:
        """Run the transition in Postgres on a hold of this client key; the hold afterwards, and whether this
        call made the change. Doing it again is fine (200, unchanged); any other status it cannot leave is
        a 409; another client key's hold is a 404."""
        note_request(hold_id=hold_id, layer="postgres")
        if action == "confirm":
            transition = await self.store.confirm(hold_id, holder, client_key_id)
        else:
            transition = await self.store.cancel(
                hold_id, holder, client_key_id, lease_release_due=self.front is not None
            )
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
        """One seat's state; SlotNotFound for a seat an event's inventory does not list."""
        row = await self.store.slot_state(event_id, slot_id)
        if row.has_inventory and not row.listed:
            raise SlotNotFound()
        if row.status is None or row.expires_at is None:
            state: SlotStateName = "blocked" if row.blocked else "free"
            return SlotState(event_id=event_id, slot_id=slot_id, state=state, expires_at=None, ttl_ms=None)
        held = row.status == "held"
        return SlotState(
            event_id=event_id,
            slot_id=slot_id,
            state="held" if held else "confirmed",
            expires_at=row.expires_at if held else None,
            ttl_ms=remaining_ms(row.expires_at, row.db_now) if held else None,
        )


def _record_key(front: RedisFront, request: HoldRequest) -> str | None:
    """The Redis key of the request's idempotency record (under its first event), if it has an
    Idempotency-Key."""
    if request.idempotency_key is None:
        return None
    return front.idempotency_record_key(
        request.first_event_id, request.client_key_id, request.holder, request.idempotency_key
    )


def _same_holders_hold(owners: list[SlotOwner], request: HoldRequest) -> HoldRow | None:
    """The live hold of this holder, made with this client key, with exactly these items, if that is what
    blocked the claim. (Another client key's hold is not answered, whatever its holder: the answer shows
    the hold's id, which would let that key's caller act on it.)"""
    hold_ids = {owner.hold.id for owner in owners}
    if len(hold_ids) != 1 or len(owners) != len(request.seat_pairs):
        return None
    hold = owners[0].hold
    same_caller = hold.client_key_id == request.client_key_id and hold.holder == request.holder
    if same_caller and hold.parts == request.parts:
        return hold
    return None


def _unavailable(
    event_id: str | None,
    *,
    taken_seats: Sequence[str] = (),
    blocked_seats: Sequence[str] = (),
    taken_pairs: Sequence[tuple[str, str]] = (),
    blocked_pairs: Sequence[tuple[str, str]] = (),
    short_pools: Sequence[tuple[str, str, int, int]] = (),
) -> SlotUnavailable:
    """The 409 for seats taken or blocked and pools short (seats of `event_id`, or (event, seat) pairs), with
    the rejection counted by its reason."""
    taken = [*((event_id, s) for s in taken_seats), *taken_pairs]
    blocked = [*((event_id, s) for s in blocked_seats), *blocked_pairs]
    reason = "taken" if taken else "blocked" if blocked else "sold_out"
    metrics.REJECTED_FOR[reason].inc()
    seats = sorted({*taken, *blocked})
    unavailable: list[dict[str, str | int]] = [{"event_id": e or "", "slot_id": s} for e, s in seats]
    unavailable += [
        {"event_id": e, "pool_id": p, "requested": requested, "available": available}
        for e, p, requested, available in short_pools
    ]
    return SlotUnavailable([s for _, s in seats], unavailable)
