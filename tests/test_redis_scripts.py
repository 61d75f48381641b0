"""The Lua scripts and key names, against a real Redis."""

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from gateway import keys
from gateway.config import Settings
from gateway.redis_front import SCRIPT_NAMES, AcquireOutcome, RedisFront
from gateway.resources import resource_dir


@pytest.fixture(name="front")
async def fx_front(settings: Settings) -> AsyncIterator[RedisFront]:
    """A Redis front on which event show-1 is synchronized (acquire.lua judges it)."""
    front = await RedisFront.open(settings)
    await front.mark_synchronized(["show-1"])
    yield front
    await front.close()


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


def test_every_script_file_is_loaded_and_documents_its_contract() -> None:
    files = sorted(path.stem for path in resource_dir("lua").glob("*.lua"))
    assert files == sorted(SCRIPT_NAMES)
    for name in SCRIPT_NAMES:
        header = (resource_dir("lua") / f"{name}.lua").read_text().split("]]")[0]
        for part in ("KEYS[", "ARGV[1]", "Returns"):
            assert part in header, (name, part)


async def test_scripts_work_after_script_flush(front: RedisFront, settings: Settings) -> None:
    """Redis may lose its script cache (restart, SCRIPT FLUSH): EVALSHA's NOSCRIPT falls back to EVAL."""
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        await client.script_flush()
    finally:
        await client.aclose()
    lease = front.lease("show-1", ["A-2", "A-1"], "token-1", "alice")

    acquired = await front.acquire(lease, 5_000, None, None)
    extended = await front.extend(lease, 60_000)
    released = await front.release(lease)

    assert acquired.outcome is AcquireOutcome.ACQUIRED
    assert (extended, released) == (2, 2)


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
