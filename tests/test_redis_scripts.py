"""The Lua scripts and key names, against a real Redis."""

import asyncio
import math
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as redis

from gateway import keys
from gateway.config import Settings
from gateway.embedded import LocalRedis
from gateway.redis_front import (
    SCRIPT_NAMES,
    AcquireOutcome,
    AcquireResult,
    Acquisition,
    Extension,
    Lease,
    PoolSync,
    RedisFront,
)
from gateway.resources import resource_dir
from tests.conftest import make_settings

# A pending TTL short enough that a test sees pool units come back, and long enough for the next call or two
# to come before that on a busy machine.
SHORT_PENDING_MS = 500
# How long a test waits for Redis's clock to pass a lapse it expects (generous: the machine is busy).
LAPSE_DEADLINE_S = 10.0


@pytest.fixture(name="front")
async def fx_front(settings: Settings) -> AsyncIterator[RedisFront]:
    """A Redis front on which event show-1 is synchronized (acquire.lua judges it)."""
    front = await RedisFront.open(settings)
    await front.mark_synchronized(["show-1"])
    yield front
    await front.close()


@pytest.fixture(name="client")
async def fx_client(settings: Settings) -> AsyncIterator[redis.Redis]:
    """A plain client on the same Redis, decoding replies, to look at what the scripts wrote."""
    client = redis.Redis.from_url(settings.redis_url or "", decode_responses=True)
    yield client
    await client.aclose()


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `check` until it holds, failing after LAPSE_DEADLINE_S: a lapse is waited for, never assumed."""
    deadline = time.monotonic() + LAPSE_DEADLINE_S
    while not await check():
        assert time.monotonic() < deadline, f"still not {what} after {LAPSE_DEADLINE_S} s"
        await asyncio.sleep(0.02)


async def _redis_ms(client: redis.Redis) -> int:
    seconds, microseconds = await client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


async def _take(front: RedisFront, lease: Lease, pending_ttl_ms: int = 5_000) -> AcquireResult:
    return await front.acquire(lease, pending_ttl_ms, None, None)


def test_key_formats() -> None:
    # Literals: a change of format or digest orphans every key and lease in a live Redis, so it must show.
    # The digests are sha256 of "alice\0k1" and of "alice" (the first 16 hex digits for the fingerprint).
    assert keys.slot_key("gw", "show-42", "A-12") == "gw:{show-42}:slot:A-12"
    assert keys.instance_key("gw") == "gw:instance"
    assert keys.idempotency_key("gw", "show-42", "", "alice", "k1") == (
        "gw:{show-42}:idem:bc7d7f928f9009c2da36f5db9b5006556eb179946f38214b5c98ea471e53f118"
    )
    assert keys.idempotency_key("gw", "show-42", "ck1", "alice", "k1") == (
        "gw:{show-42}:idem:6d4acf1bc4aebbef6dbafd9595210ac59306f18e33c16ddc8e2b973f88912873"
    )
    assert keys.holder_fingerprint("alice") == "2bd806c97f0e00af"
    assert keys.lease_value("tok", "alice") == "tok:2bd806c97f0e00af"
    assert keys.pool_key("gw", "show-42", "floor") == "gw:{show-42}:pool:floor"
    assert keys.pool_expiry_key("gw", "show-42", "floor") == "gw:{show-42}:pool:floor:expiry"
    assert keys.pools_key("gw", "show-42") == "gw:{show-42}:pools"
    assert keys.blocked_key("gw", "show-42") == "gw:{show-42}:blocked"
    assert keys.pool_entry_field("tok:2bd806c97f0e00af") == "t:tok:2bd806c97f0e00af"
    assert keys.BLOCKED_LEASE_VALUE == "blocked"


def test_every_script_file_is_loaded_and_documents_its_contract() -> None:
    files = sorted(path.stem for path in resource_dir("lua").glob("*.lua"))
    assert files == sorted(SCRIPT_NAMES)
    for name in SCRIPT_NAMES:
        header = (resource_dir("lua") / f"{name}.lua").read_text().split("]]")[0]
        for part in ("KEYS[", "ARGV[1]", "Returns"):
            assert part in header, (name, part)


async def test_scripts_work_after_script_flush(front: RedisFront, client: redis.Redis) -> None:
    """Redis may lose its script cache (restart, SCRIPT FLUSH): EVALSHA's NOSCRIPT falls back to EVAL, and a
    pipeline loads the scripts it runs first. Every script runs once after a flush."""
    lease = front.lease("show-1", ["A-2", "A-1"], "token-1", "alice", pools=[("floor", 2)])
    rival = front.lease("show-1", ["A-1", "A-3"], "token-2", "bob")

    await client.script_flush()
    await front.sync_pools("show-1", [PoolSync("floor", 10, [])])
    await client.script_flush()
    await front.sync_blocked("show-1", ["A-3"])
    await client.script_flush()
    acquired = await front.acquire(lease, 5_000, None, None)
    await client.script_flush()
    rival_verdict = await front.acquire(rival, 5_000, None, None)
    await client.script_flush()
    extended = await front.extend(lease, 60_000)
    await client.script_flush()
    released = await front.release(lease)
    await front.acquire(lease, 5_000, None, None)
    await client.script_flush()
    released_in_bulk = await front.release_leases([lease])

    assert acquired.outcome is AcquireOutcome.ACQUIRED
    assert (rival_verdict.conflicts, rival_verdict.blocked) == (["A-1"], ["A-3"])
    assert (extended, released, released_in_bulk) == (2, 3, 3)  # released: two seats and one pool entry
    assert await front.pool_state("show-1", "floor") == (10, 0)


async def test_acquire_outcomes(front: RedisFront) -> None:
    alice = front.lease("show-1", ["A-1", "A-2"], "token-a", "alice")
    alice_again = front.lease("show-1", ["A-2", "A-1"], "token-a2", "alice")
    bob = front.lease("show-1", ["A-0", "A-2", "A-3"], "token-b", "bob")

    assert (await front.acquire(alice, 5_000, None, None)).outcome is AcquireOutcome.ACQUIRED
    # The same token again (a retried call whose reply was lost) is not its own rival.
    assert (await front.acquire(alice, 5_000, None, None)).outcome is AcquireOutcome.ACQUIRED
    assert (await front.acquire(alice_again, 5_000, None, None)).outcome is AcquireOutcome.HELD_BY_HOLDER
    conflict = await front.acquire(bob, 5_000, None, None)
    assert conflict.outcome is AcquireOutcome.CONFLICT
    assert conflict.conflicts == ["A-2"]
    # All or nothing: bob's free slots were not leased.
    bob_alone = front.lease("show-1", ["A-0", "A-3"], "token-c", "carol")
    assert (await front.acquire(bob_alone, 5_000, None, None)).outcome is AcquireOutcome.ACQUIRED


async def test_release_and_extend_only_touch_their_own_token(front: RedisFront, settings: Settings) -> None:
    owner = front.lease("show-1", ["A-1"], "token-a", "alice")
    impostor = front.lease("show-1", ["A-1"], "token-x", "alice")
    await front.acquire(owner, 5_000, None, None)

    assert await front.release(impostor) == 0
    assert await front.extend(impostor, 60_000) == 0
    client = redis.Redis.from_url(settings.redis_url or "", decode_responses=True)
    try:
        assert await client.get(owner.slot_keys[0]) == owner.value
        assert 0 < await client.pttl(owner.slot_keys[0]) <= 5_000
    finally:
        await client.aclose()


async def test_idempotency_record_outcomes(front: RedisFront) -> None:
    lease = front.lease("show-1", ["A-1"], "token-a", "alice")
    record_key = front.idempotency_record_key("show-1", "", "alice", "key-1")
    await front.acquire(lease, 5_000, record_key, "fp-1")
    await front.extend(lease, 60_000, record_key, "fp-1")

    assert (await front.acquire(lease, 5_000, record_key, "fp-1")).outcome is AcquireOutcome.REPLAY
    assert (await front.acquire(lease, 5_000, record_key, "fp-2")).outcome is AcquireOutcome.KEY_REUSED


async def test_acquire_judges_no_event_whose_marker_is_missing_or_of_another_instance(
    front: RedisFront, settings: Settings
) -> None:
    """An event never synchronized on this instance (no marker), or synchronized on another one (a marker
    from an old snapshot), gets NOT_SYNCED and nothing is written: not even a rival's lease decides it."""
    client = redis.Redis.from_url(settings.redis_url or "", decode_responses=True)
    prefix = settings.redis_key_prefix
    try:
        await client.set(keys.slot_key(prefix, "show-2", "A-1"), "stale-token:0123456789abcdef")
        await client.set(keys.sync_key(prefix, "show-3"), "an-old-run-id")
        fresh = front.lease("show-2", ["A-1"], "token-a", "alice")
        stale = front.lease("show-3", ["A-1"], "token-a", "alice")

        assert (await front.acquire(fresh, 5_000, None, None)).outcome is AcquireOutcome.NOT_SYNCED
        assert (await front.acquire(stale, 5_000, None, None)).outcome is AcquireOutcome.NOT_SYNCED
        assert await client.get(keys.slot_key(prefix, "show-3", "A-1")) is None
        await front.mark_synchronized(["show-2"])
        assert await client.get(keys.sync_key(prefix, "show-2")) == front.run_id
        assert (await front.acquire(fresh, 5_000, None, None)).outcome is AcquireOutcome.CONFLICT
    finally:
        await client.aclose()


async def test_a_confirms_extend_does_not_bring_back_a_lease_a_cancel_released(
    front: RedisFront, settings: Settings
) -> None:
    """Regression: a confirm and a cancel of one hold, answered in that order by Postgres, can reach Redis in
    the other order; the confirm's extend then set the released lease again, for an hour. A confirm's
    extend stretches only; a create's still sets a lease that lapsed during its commit."""
    client = redis.Redis.from_url(settings.redis_url or "", decode_responses=True)
    lease = front.lease("show-1", ["A-1"], "token-a", "alice")
    try:
        await front.acquire(lease, 5_000, None, None)
        released = await front.release(lease)
        after_confirm = await front.extend(lease, 3_600_000, set_missing=False)
        left_by_confirm = await client.get(lease.slot_keys[0])
        after_create = await front.extend(lease, 60_000)
        set_by_create = await client.get(lease.slot_keys[0])
    finally:
        await client.aclose()

    assert (released, after_confirm, left_by_confirm) == (1, 0, None)
    assert (after_create, set_by_create) == (1, lease.value)


async def test_a_pool_gives_units_up_to_its_capacity_then_answers_sold_out_with_what_is_left(
    front: RedisFront,
) -> None:
    await front.sync_pools("show-1", [PoolSync("floor", 5, []), PoolSync("balcony", 4, [])])
    alice = front.lease("show-1", [], "token-a", "alice", pools=[("floor", 3)])
    bob = front.lease("show-1", [], "token-b", "bob", pools=[("floor", 3)])
    carol = front.lease("show-1", [], "token-c", "carol", pools=[("floor", 2)])
    dave = front.lease("show-1", [], "token-d", "dave", pools=[("floor", 1), ("balcony", 5)])

    assert (await _take(front, alice)).outcome is AcquireOutcome.ACQUIRED
    bob_verdict = await _take(front, bob)
    assert (await _take(front, carol)).outcome is AcquireOutcome.ACQUIRED
    dave_verdict = await _take(front, dave)

    assert (bob_verdict.outcome, bob_verdict.short_pools) == (AcquireOutcome.SOLD_OUT, [("floor", 2)])
    # Both pools short: each named with its own units left (dave's pools sort as balcony, floor).
    assert (dave_verdict.outcome, dave_verdict.short_pools) == (
        AcquireOutcome.SOLD_OUT,
        [("balcony", 4), ("floor", 0)],
    )
    assert (dave_verdict.conflicts, dave_verdict.blocked, dave_verdict.unknown_pools) == ([], [], [])
    assert await front.pool_state("show-1", "floor") == (5, 5)
    assert await front.pool_state("show-1", "balcony") == (4, 0)


async def test_a_short_pool_takes_nothing_at_all(front: RedisFront, client: redis.Redis) -> None:
    """All or nothing across seats and pools: one pool short, and no seat is leased nor any unit taken."""
    await front.sync_pools("show-1", [PoolSync("floor", 10, []), PoolSync("vip", 2, [])])
    lease = front.lease("show-1", ["B-1", "B-2"], "token-a", "alice", pools=[("vip", 3), ("floor", 1)])

    verdict = await _take(front, lease)

    assert (verdict.outcome, verdict.short_pools) == (AcquireOutcome.SOLD_OUT, [("vip", 2)])
    assert await client.mget(lease.slot_keys) == [None, None]
    floor_hash, floor_expiry = lease.pool_keys[0], lease.pool_keys[1]  # pools sort as floor, vip
    assert await client.hgetall(floor_hash) == {"capacity": "10", "used": "0"}
    assert await client.zcard(floor_expiry) == 0
    assert await front.pool_state("show-1", "vip") == (2, 0)


async def test_a_retried_acquire_is_not_counted_twice(front: RedisFront, client: redis.Redis) -> None:
    """The same lease value again (a retried call whose reply was lost) holds its units once, and is not
    turned away by its own units even when they fill the pool."""
    await front.sync_pools("show-1", [PoolSync("floor", 2, [])])
    lease = front.lease("show-1", ["B-1"], "token-a", "alice", pools=[("floor", 2)])

    first = await _take(front, lease)
    retried = await _take(front, lease)

    assert (first.outcome, retried.outcome) == (AcquireOutcome.ACQUIRED, AcquireOutcome.ACQUIRED)
    assert await front.pool_state("show-1", "floor") == (2, 2)
    assert await client.hget(lease.pool_keys[0], keys.pool_entry_field(lease.value)) == "2"
    assert await client.zcard(lease.pool_keys[1]) == 1


async def test_release_gives_the_units_back(front: RedisFront, client: redis.Redis) -> None:
    await front.sync_pools("show-1", [PoolSync("floor", 3, [])])
    alice = front.lease("show-1", ["B-1"], "token-a", "alice", pools=[("floor", 3)])
    impostor = front.lease("show-1", ["B-1"], "token-x", "alice", pools=[("floor", 3)])
    bob = front.lease("show-1", [], "token-b", "bob", pools=[("floor", 3)])
    await _take(front, alice)

    by_impostor = await front.release(impostor)
    bob_before = await _take(front, bob)
    by_owner = await front.release(alice)
    bob_after = await _take(front, bob)

    assert (by_impostor, by_owner) == (0, 2)  # the owner's: one seat lease and one pool entry
    assert (bob_before.outcome, bob_after.outcome) == (AcquireOutcome.SOLD_OUT, AcquireOutcome.ACQUIRED)
    assert await client.hgetall(alice.pool_keys[0]) == {
        "capacity": "3",
        "used": "3",
        keys.pool_entry_field(bob.value): "3",
    }
    assert await client.zrange(alice.pool_keys[1], 0, -1) == [bob.value]


async def test_the_units_of_a_pending_hold_come_back_once_its_ttl_passed(
    front: RedisFront, client: redis.Redis
) -> None:
    """No sweeper: the next acquire on the pool purges the entries that lapsed by Redis's clock."""
    await front.sync_pools("show-1", [PoolSync("floor", 3, [])])
    alice = front.lease("show-1", [], "token-a", "alice", pools=[("floor", 3)])
    bob = front.lease("show-1", [], "token-b", "bob", pools=[("floor", 3)])
    assert (await _take(front, alice, SHORT_PENDING_MS)).outcome is AcquireOutcome.ACQUIRED
    first_try = await _take(front, bob)

    async def bob_gets_them() -> bool:
        return (await _take(front, bob)).outcome is AcquireOutcome.ACQUIRED

    await _eventually(bob_gets_them, "given back")

    assert (first_try.outcome, first_try.short_pools) == (AcquireOutcome.SOLD_OUT, [("floor", 0)])
    assert await client.hgetall(alice.pool_keys[0]) == {
        "capacity": "3",
        "used": "3",
        keys.pool_entry_field(bob.value): "3",
    }
    assert await client.zrange(alice.pool_keys[1], 0, -1) == [bob.value]


async def test_pool_state_does_not_count_units_that_lapsed_before_any_purge(front: RedisFront) -> None:
    await front.sync_pools("show-1", [PoolSync("floor", 3, [])])
    alice = front.lease("show-1", [], "token-a", "alice", pools=[("floor", 2)])
    await _take(front, alice, SHORT_PENDING_MS)
    held = await front.pool_state("show-1", "floor")

    async def lapsed() -> bool:
        return await front.pool_state("show-1", "floor") == (3, 0)

    await _eventually(lapsed, "lapsed")
    assert held == (3, 2)


async def test_a_confirmed_holds_units_never_lapse(front: RedisFront, client: redis.Redis) -> None:
    """extend(confirmed=True) scores the entry +inf: still counted long after its pending TTL. A pending
    hold taken at the same time on another pool shows that the time did pass."""
    await front.sync_pools("show-1", [PoolSync("floor", 2, []), PoolSync("control", 2, [])])
    alice = front.lease("show-1", ["B-1"], "token-a", "alice", pools=[("floor", 2)])
    pending = front.lease("show-1", [], "token-p", "pat", pools=[("control", 2)])
    bob = front.lease("show-1", [], "token-b", "bob", pools=[("floor", 1)])
    carol = front.lease("show-1", [], "token-c", "carol", pools=[("control", 2)])
    await _take(front, alice, SHORT_PENDING_MS)
    await _take(front, pending, SHORT_PENDING_MS)

    seats = await front.extend(alice, 60_000, confirmed=True)

    async def control_lapsed() -> bool:
        return (await _take(front, carol)).outcome is AcquireOutcome.ACQUIRED

    await _eventually(control_lapsed, "lapsed")
    bob_verdict = await _take(front, bob)
    assert seats == 1
    assert await client.zscore(alice.pool_keys[1], alice.value) == math.inf
    assert 0 < await client.pttl(alice.slot_keys[0]) <= 60_000  # the seat lease takes the TTL given
    assert (bob_verdict.outcome, bob_verdict.short_pools) == (AcquireOutcome.SOLD_OUT, [("floor", 0)])
    assert await front.pool_state("show-1", "floor") == (2, 2)


async def test_extend_stretches_a_pending_entry_to_the_holds_life(
    front: RedisFront, client: redis.Redis
) -> None:
    await front.sync_pools("show-1", [PoolSync("floor", 2, [])])
    alice = front.lease("show-1", [], "token-a", "alice", pools=[("floor", 2)])
    await _take(front, alice, SHORT_PENDING_MS)
    before_ms = await _redis_ms(client)

    await front.extend(alice, 60_000)

    score = await client.zscore(alice.pool_keys[1], alice.value)
    assert score is not None
    assert before_ms + 60_000 <= score <= await _redis_ms(client) + 60_000
    assert await front.pool_state("show-1", "floor") == (2, 2)


async def test_a_creates_extend_sets_missing_units_again_even_past_capacity(
    front: RedisFront, client: redis.Redis
) -> None:
    """The entry lapsed (or was released) while Postgres committed the hold, and a rival took the units:
    Postgres said the hold has them, so the extend after the create puts them back, past capacity. A
    confirm's extend (set_missing=False) does not."""
    await front.sync_pools("show-1", [PoolSync("floor", 2, [])])
    alice = front.lease("show-1", [], "token-a", "alice", pools=[("floor", 2)])
    bob = front.lease("show-1", [], "token-b", "bob", pools=[("floor", 2)])
    await _take(front, alice)
    await front.release(alice)
    await _take(front, bob)

    after_confirm = await front.extend(alice, 60_000, set_missing=False)
    state_after_confirm = await front.pool_state("show-1", "floor")
    after_create = await front.extend(alice, 60_000)

    assert (after_confirm, after_create) == (0, 0)  # the number of seats, and alice has none
    assert state_after_confirm == (2, 2)
    assert await front.pool_state("show-1", "floor") == (2, 4)
    assert await client.hget(alice.pool_keys[0], keys.pool_entry_field(alice.value)) == "2"
    assert await client.zscore(alice.pool_keys[1], alice.value) is not None


async def test_pool_keys_do_not_shift_the_idempotency_record(front: RedisFront) -> None:
    """The record key comes after the pools' keys, in acquire's and extend's KEYS alike."""
    await front.sync_pools("show-1", [PoolSync("floor", 5, []), PoolSync("vip", 5, [])])
    lease = front.lease("show-1", ["B-1"], "token-a", "alice", pools=[("floor", 1), ("vip", 1)])
    record_key = front.idempotency_record_key("show-1", "", "alice", "key-1")

    first = await front.acquire(lease, 5_000, record_key, "fp-1")
    await front.extend(lease, 60_000, record_key, "fp-1")

    assert first.outcome is AcquireOutcome.ACQUIRED
    assert (await front.acquire(lease, 5_000, record_key, "fp-1")).outcome is AcquireOutcome.REPLAY
    assert (await front.acquire(lease, 5_000, record_key, "fp-2")).outcome is AcquireOutcome.KEY_REUSED
    assert await front.pool_state("show-1", "floor") == (5, 1)


async def test_an_unknown_pool_gets_no_verdict_and_nothing_is_written(
    front: RedisFront, client: redis.Redis, settings: Settings
) -> None:
    """A pool Redis has no capacity for: UNKNOWN_POOL (Postgres decides), ahead of another pool's SOLD_OUT."""
    await front.sync_pools("show-1", [PoolSync("floor", 1, [])])
    lease = front.lease("show-1", ["B-1"], "token-a", "alice", pools=[("floor", 2), ("mystery", 1)])

    verdict = await _take(front, lease)

    assert (verdict.outcome, verdict.unknown_pools, verdict.short_pools) == (
        AcquireOutcome.UNKNOWN_POOL,
        ["mystery"],
        [],
    )
    assert await client.get(lease.slot_keys[0]) is None
    assert await front.pool_state("show-1", "floor") == (1, 0)
    prefix = settings.redis_key_prefix
    mystery = [keys.pool_key(prefix, "show-1", "mystery"), keys.pool_expiry_key(prefix, "show-1", "mystery")]
    assert await client.exists(*mystery) == 0


async def test_a_taken_seat_is_judged_before_the_pools(front: RedisFront) -> None:
    """Precedence: seat conflicts, then unknown pools, then short ones."""
    await front.sync_pools("show-1", [PoolSync("floor", 1, [])])
    await _take(front, front.lease("show-1", ["B-1"], "token-a", "alice"))
    bob = front.lease("show-1", ["B-1"], "token-b", "bob", pools=[("floor", 5), ("mystery", 1)])

    verdict = await _take(front, bob)

    assert (verdict.outcome, verdict.conflicts) == (AcquireOutcome.CONFLICT, ["B-1"])
    assert await front.pool_state("show-1", "floor") == (1, 0)


async def test_an_unsynchronized_event_with_pools_gets_no_verdict(
    front: RedisFront, client: redis.Redis
) -> None:
    await front.sync_pools("show-9", [PoolSync("floor", 1, [])])
    lease = front.lease("show-9", ["B-1"], "token-a", "alice", pools=[("floor", 5)])

    verdict = await _take(front, lease)

    assert verdict.outcome is AcquireOutcome.NOT_SYNCED
    assert await client.get(lease.slot_keys[0]) is None


async def test_invalidate_makes_acquire_wait_for_the_next_synchronization(front: RedisFront) -> None:
    lease = front.lease("show-1", ["B-1"], "token-a", "alice")

    invalidated = await front.invalidate("show-1")
    before = await _take(front, lease)
    await front.mark_synchronized(["show-1"])
    after = await _take(front, lease)

    assert invalidated is True
    assert (before.outcome, after.outcome) == (AcquireOutcome.NOT_SYNCED, AcquireOutcome.ACQUIRED)


async def test_invalidate_reports_a_redis_that_failed(
    own_redis: LocalRedis, database_url: str, key_prefix: str
) -> None:
    front = await RedisFront.open(make_settings(database_url, own_redis.url, key_prefix))
    try:
        assert front.available
        own_redis.kill(signal.SIGKILL)

        invalidated = await front.invalidate("show-1")

        assert invalidated is False
        assert not front.available
        assert front.breaker.reason is not None
        assert front.breaker.reason.startswith("invalidate failed")
    finally:
        await front.close()


async def test_a_blocked_seat_is_a_conflict_of_its_own(front: RedisFront, client: redis.Redis) -> None:
    """A blocked seat is reported apart from taken ones, nothing is leased, and a holder's retry onto its own
    lease and a blocked seat is a CONFLICT, not HELD_BY_HOLDER."""
    await front.sync_blocked("show-1", ["C-2"])
    await _take(front, front.lease("show-1", ["C-3"], "token-b", "bob"))
    await _take(front, front.lease("show-1", ["C-1"], "token-a1", "alice"))
    alice = front.lease("show-1", ["C-1", "C-2"], "token-a2", "alice")
    carol = front.lease("show-1", ["C-2", "C-3", "C-4"], "token-c", "carol")

    alice_verdict = await _take(front, alice)
    carol_verdict = await _take(front, carol)

    assert (alice_verdict.outcome, alice_verdict.conflicts, alice_verdict.blocked) == (
        AcquireOutcome.CONFLICT,
        ["C-1"],
        ["C-2"],
    )
    assert (carol_verdict.outcome, carol_verdict.conflicts, carol_verdict.blocked) == (
        AcquireOutcome.CONFLICT,
        ["C-3"],
        ["C-2"],
    )
    assert await client.get(carol.slot_keys[2]) is None  # C-4 stayed free
    assert await client.get(carol.slot_keys[0]) == keys.BLOCKED_LEASE_VALUE


async def test_acquire_reads_the_blocked_value_that_keys_defines(
    front: RedisFront, client: redis.Redis, settings: Settings
) -> None:
    """The Lua spells the blocked value itself: a slot key of keys.BLOCKED_LEASE_VALUE reads as blocked."""
    await client.set(keys.slot_key(settings.redis_key_prefix, "show-1", "C-9"), keys.BLOCKED_LEASE_VALUE)

    verdict = await _take(front, front.lease("show-1", ["C-9"], "token-a", "alice"))

    assert (verdict.outcome, verdict.conflicts, verdict.blocked) == (AcquireOutcome.CONFLICT, [], ["C-9"])


async def test_no_release_or_extend_touches_a_blocked_seat(front: RedisFront, client: redis.Redis) -> None:
    lease = front.lease("show-1", ["C-1"], "token-a", "alice")
    await _take(front, lease)
    await front.sync_blocked("show-1", ["C-1"])

    released = await front.release(lease)
    released_in_bulk = await front.release_leases([lease])
    extended = await front.extend(lease, 60_000)

    assert (released, released_in_bulk, extended) == (0, 0, 0)
    assert await client.get(lease.slot_keys[0]) == keys.BLOCKED_LEASE_VALUE
    assert await client.pttl(lease.slot_keys[0]) == -1  # no TTL: blocked until unblocked


async def test_sync_blocked_blocks_and_unblocks(
    front: RedisFront, client: redis.Redis, settings: Settings
) -> None:
    """Blocking overwrites a pending lease; unblocking deletes only a slot key that is still blocked."""
    prefix = settings.redis_key_prefix

    def slot(seat: str) -> str:
        return keys.slot_key(prefix, "show-1", seat)

    pending = front.lease("show-1", ["C-3"], "token-a", "alice")
    await _take(front, pending)
    await front.sync_blocked("show-1", ["C-1", "C-2"])
    first = await client.mget([slot("C-1"), slot("C-2"), slot("C-3")])

    await front.sync_blocked("show-1", ["C-2", "C-3"])
    second = await client.mget([slot("C-1"), slot("C-2"), slot("C-3")])
    second_set = await client.smembers(keys.blocked_key(prefix, "show-1"))
    overwritten_pttl = await client.pttl(slot("C-3"))

    await client.set(slot("C-2"), "token-z:0123456789abcdef")  # a lease there, however it came
    await front.sync_blocked("show-1", [])

    b = keys.BLOCKED_LEASE_VALUE
    assert first == [b, b, pending.value]
    assert (second, second_set) == ([None, b, b], {"C-2", "C-3"})
    assert overwritten_pttl == -1  # the pending lease's TTL went with it
    assert await client.mget([slot("C-2"), slot("C-3")]) == ["token-z:0123456789abcdef", None]
    assert await client.exists(keys.blocked_key(prefix, "show-1")) == 0


async def test_sync_blocked_goes_in_batches(
    front: RedisFront, client: redis.Redis, settings: Settings
) -> None:
    seats = [f"S-{i:04d}" for i in range(2_500)]

    await front.sync_blocked("show-1", seats)
    blocked = await client.scard(keys.blocked_key(settings.redis_key_prefix, "show-1"))
    values = set(await client.mget([keys.slot_key(settings.redis_key_prefix, "show-1", s) for s in seats]))
    await front.sync_blocked("show-1", seats[:1])

    assert (blocked, values) == (2_500, {keys.BLOCKED_LEASE_VALUE})
    assert await client.smembers(keys.blocked_key(settings.redis_key_prefix, "show-1")) == {"S-0000"}
    verdict = await _take(front, front.lease("show-1", ["S-0000", "S-2499"], "token-a", "alice"))
    assert (verdict.outcome, verdict.blocked) == (AcquireOutcome.CONFLICT, ["S-0000"])


async def test_sync_pools_rebuilds_a_pool_from_postgres(front: RedisFront, client: redis.Redis) -> None:
    """Capacity set, listed holds added, an entry already there (a request in flight) kept as it is, entries
    already over left out, and `used` recomputed from the entries whatever it said."""
    await front.sync_pools("show-1", [PoolSync("floor", 5, [])])
    in_flight = front.lease("show-1", [], "token-a", "alice", pools=[("floor", 2)])
    await _take(front, in_flight)
    in_flight_score = await client.zscore(in_flight.pool_keys[1], in_flight.value)
    await client.hset(in_flight.pool_keys[0], "used", 99)  # drifted
    confirmed = keys.lease_value("token-b", "bob")
    held = keys.lease_value("token-c", "carol")
    over = keys.lease_value("token-d", "dave")
    before_ms = await _redis_ms(client)

    entries = [(confirmed, 3, None), (held, 1, 60_000), (in_flight.value, 4, 60_000), (over, 1, 0)]
    await front.sync_pools("show-1", [PoolSync("floor", 10, entries)])

    pool, expiry = in_flight.pool_keys
    assert await client.hgetall(pool) == {
        "capacity": "10",
        "used": "6",
        keys.pool_entry_field(in_flight.value): "2",
        keys.pool_entry_field(confirmed): "3",
        keys.pool_entry_field(held): "1",
    }
    assert await client.zscore(expiry, in_flight.value) == in_flight_score
    assert await client.zscore(expiry, confirmed) == math.inf
    held_score = await client.zscore(expiry, held)
    assert held_score is not None
    assert before_ms + 60_000 <= held_score <= await _redis_ms(client) + 60_000
    assert await client.zcard(expiry) == 3


async def test_sync_pools_goes_in_batches(front: RedisFront) -> None:
    entries = [(keys.lease_value(f"token-{i}", "alice"), 1, 60_000) for i in range(2_500)]

    await front.sync_pools("show-1", [PoolSync("floor", 3_000, entries)])

    assert await front.pool_state("show-1", "floor") == (3_000, 2_500)


async def test_sync_pools_drops_a_pool_it_does_not_list(
    front: RedisFront, client: redis.Redis, settings: Settings
) -> None:
    prefix = settings.redis_key_prefix
    await front.sync_pools("show-1", [PoolSync("floor", 5, []), PoolSync("vip", 2, [])])
    await _take(front, front.lease("show-1", [], "token-a", "alice", pools=[("vip", 1)]))

    await front.sync_pools("show-1", [PoolSync("floor", 5, [])])

    vip = [keys.pool_key(prefix, "show-1", "vip"), keys.pool_expiry_key(prefix, "show-1", "vip")]
    assert await client.exists(*vip) == 0
    assert await client.smembers(keys.pools_key(prefix, "show-1")) == {"floor"}
    assert await front.pool_state("show-1", "vip") is None
    verdict = await _take(front, front.lease("show-1", [], "token-b", "bob", pools=[("vip", 1)]))
    assert (verdict.outcome, verdict.unknown_pools) == (AcquireOutcome.UNKNOWN_POOL, ["vip"])


def test_a_lease_lists_its_pools_sorted_with_their_keys() -> None:
    lease = Lease.build("gw", "show-42", ["A-2", "A-1"], "tok", "alice", pools=[("vip", 1), ("floor", 4)])

    assert lease.pools == [("floor", 4), ("vip", 1)]
    assert lease.pool_keys == [
        "gw:{show-42}:pool:floor",
        "gw:{show-42}:pool:floor:expiry",
        "gw:{show-42}:pool:vip",
        "gw:{show-42}:pool:vip:expiry",
    ]
    assert (Lease.build("gw", "show-42", ["A-1"], "tok", "alice").pools, lease.slots) == ([], ["A-1", "A-2"])


@pytest.mark.parametrize(
    "pools", [[("floor", 1), ("floor", 2)], [("floor", 0)]], ids=["a pool twice", "no units"]
)
def test_a_lease_refuses_pools_the_scripts_would_miscount(pools: list[tuple[str, int]]) -> None:
    with pytest.raises(ValueError, match="pool"):
        Lease.build("gw", "show-42", [], "tok", "alice", pools=pools)


async def test_one_extend_call_serves_several_holds_each_on_its_own_keys(
    front: RedisFront, client: redis.Redis
) -> None:
    """extend_all walks each hold's keys and arguments in turn: seats, pools, an idempotency record only where
    a fingerprint is given, and a lease of another value left alone; one count per hold, in order."""
    await front.sync_pools("show-1", [PoolSync("floor", 10, [])])
    two_seats = front.lease("show-1", ["C-1", "C-2"], "token-a", "alice")
    pooled = front.lease("show-1", ["C-3"], "token-b", "bob", pools=[("floor", 3)])
    impostor = front.lease("show-1", ["C-1"], "token-x", "mallory")
    lapsed = front.lease("show-1", ["C-4"], "token-c", "carol")  # its pending lease is gone: set again
    record_key = front.idempotency_record_key("show-1", "", "alice", "key-1")
    await _take(front, two_seats, SHORT_PENDING_MS)
    await _take(front, pooled, SHORT_PENDING_MS)

    leased = await front.extend_all(
        [
            Extension(two_seats, 60_000, record_key, "fp-1"),
            Extension(impostor, 60_000),
            Extension(pooled, 90_000, idempotency_record_key=None, request_fp="ignored without a key"),
            Extension(lapsed, 120_000),
        ]
    )

    assert leased == [2, 0, 1, 1]
    assert await client.get(record_key) == "fp-1"
    for key in two_seats.slot_keys:
        assert await client.get(key) == two_seats.value
        assert 5_000 < await client.pttl(key) <= 60_000
    assert 60_000 < await client.pttl(pooled.slot_keys[0]) <= 90_000
    assert 90_000 < await client.pttl(lapsed.slot_keys[0]) <= 120_000
    score = await client.zscore(pooled.pool_keys[1], pooled.value)
    assert score is not None
    assert score > await _redis_ms(client) + 60_000
    assert await front.pool_state("show-1", "floor") == (10, 3)
    other_event = front.lease("show-2", ["A-1"], "token-d", "dave")
    with pytest.raises(ValueError, match="one event"):
        await front.extend_all([Extension(two_seats, 60_000), Extension(other_event, 60_000)])


async def test_one_acquire_call_judges_several_holds_in_turn_each_on_its_own_keys(
    front: RedisFront, client: redis.Redis
) -> None:
    """acquire_all walks each hold's keys and arguments in turn (seats, pools, an idempotency record only
    where a fingerprint is given) and judges each after those before it, as separate calls would: a seat's
    second taker in the same call conflicts, a pool's units run out within the call, a rival's refusal writes
    nothing, and a later hold still gets what is left."""
    await front.sync_pools("show-1", [PoolSync("floor", 5, [])])
    record_key = front.idempotency_record_key("show-1", "", "alice", "key-1")
    await client.set(record_key, "fp-1")
    alice = front.lease("show-1", ["D-1", "D-2"], "token-a", "alice")
    bob = front.lease("show-1", ["D-2", "D-3"], "token-b", "bob")  # D-2 is alice's, taken one hold earlier
    carol = front.lease("show-1", ["D-3"], "token-c", "carol", pools=[("floor", 4)])  # D-3: bob took nothing
    dave = front.lease("show-1", [], "token-d", "dave", pools=[("floor", 2)])  # 1 unit left after carol
    erin = front.lease("show-1", ["D-4"], "token-e", "erin", pools=[("floor", 1)])
    replayed = front.lease("show-1", ["D-9"], "token-r", "alice")

    verdicts = await front.acquire_all(
        [
            Acquisition(alice, 5_000),
            Acquisition(bob, 5_000),
            Acquisition(carol, 5_000, idempotency_record_key=None, request_fp="ignored without a key"),
            Acquisition(dave, 5_000),
            Acquisition(replayed, 5_000, record_key, "fp-1"),
            Acquisition(erin, 5_000),
        ]
    )

    assert [v.outcome for v in verdicts] == [
        AcquireOutcome.ACQUIRED,
        AcquireOutcome.CONFLICT,
        AcquireOutcome.ACQUIRED,
        AcquireOutcome.SOLD_OUT,
        AcquireOutcome.REPLAY,
        AcquireOutcome.ACQUIRED,
    ]
    assert verdicts[1].conflicts == ["D-2"]
    assert verdicts[3].short_pools == [("floor", 1)]
    assert [await client.get(k) for k in alice.slot_keys] == [alice.value, alice.value]
    assert await client.get(carol.slot_keys[0]) == carol.value
    assert await client.get(erin.slot_keys[0]) == erin.value
    assert await client.get(replayed.slot_keys[0]) is None
    assert await front.pool_state("show-1", "floor") == (5, 5)
    other_event = front.lease("show-2", ["A-1"], "token-f", "frank")
    with pytest.raises(ValueError, match="one event"):
        await front.acquire_all([Acquisition(alice, 5_000), Acquisition(other_event, 5_000)])


async def test_an_unsynchronized_event_gives_no_verdict_to_any_hold_of_the_call(front: RedisFront) -> None:
    alice = front.lease("show-7", ["A-1"], "token-a", "alice")
    bob = front.lease("show-7", ["A-2"], "token-b", "bob")

    verdicts = await front.acquire_all([Acquisition(alice, 5_000), Acquisition(bob, 5_000)])

    assert [v.outcome for v in verdicts] == [AcquireOutcome.NOT_SYNCED] * 2
    assert await front.lease_values([("show-7", "A-1"), ("show-7", "A-2")]) == [None, None]
