"""The history checker against fabricated histories (one broken promise each, and one clean history), and a
short real chaos soak that must find no violation."""

import asyncio
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest

from gateway.chaos.history import (
    ConnectionCount,
    EventRecord,
    History,
    HoldRecord,
    IdempotencyRecord,
    LeaseRecord,
    Report,
    Snapshot,
    check,
)
from gateway.chaos.soak import SoakOptions, run_soak
from gateway.keys import BLOCKED_LEASE_VALUE, lease_value, slot_key

PREFIX = "chaos"
HOLD_A = "A" * 22
HOLD_B = "B" * 22
HOLD_C = "C" * 22
HOLD_D = "D" * 22
# Postgres's now() when the fabricated snapshots are read.
SNAPSHOT_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def hold(
    hold_id: str,
    slots: Iterable[str] = ("s1",),
    *,
    status: str = "held",
    remaining_ms: int = 4_000,
    holder: str = "alice",
    event_id: str = "e1",
    extensions: int = 0,
    confirmed: bool = False,
) -> HoldRecord:
    return HoldRecord(
        hold_id,
        f"token-{hold_id}",
        event_id,
        holder,
        tuple(slots),
        status,
        remaining_ms,
        SNAPSHOT_AT + timedelta(milliseconds=remaining_ms),
        extensions,
        confirmed or status == "confirmed",
    )


def feed(*entries: tuple[str, str]) -> list[EventRecord]:
    """Numbered events, (hold id, type) each, in feed order from 1."""
    return [EventRecord(position, kind, hold_id) for position, (hold_id, kind) in enumerate(entries, 1)]


# The feed of clean_history()'s holds, as the gateway writes it: interleaved, each hold's life in order.
CLEAN_FEED = (
    (HOLD_D, "hold.created"),
    (HOLD_A, "hold.created"),
    (HOLD_D, "hold.expired"),
    (HOLD_B, "hold.created"),
    (HOLD_C, "hold.created"),
    (HOLD_A, "hold.confirmed"),
    (HOLD_B, "hold.confirmed"),
    (HOLD_C, "hold.extended"),
    (HOLD_B, "hold.cancelled"),
)


def lease(record: HoldRecord, slot: str, pttl_ms: int) -> LeaseRecord:
    return LeaseRecord(
        slot_key(PREFIX, record.event_id, slot), lease_value(record.token, record.holder), pttl_ms
    )


def snapshot(
    holds: Iterable[HoldRecord] = (),
    leases: Iterable[LeaseRecord] = (),
    idempotency: Iterable[IdempotencyRecord] = (),
    connections: Iterable[ConnectionCount] = (),
    *,
    events: Iterable[tuple[str, str]] = CLEAN_FEED,
    unnumbered_events: int = 0,
) -> Snapshot:
    return Snapshot(
        holds=tuple(holds),
        leases=tuple(leases),
        idempotency=tuple(idempotency),
        key_prefix=PREFIX,
        confirmed_lease_ms=60_000,
        events=tuple(feed(*events)),
        unnumbered_events=unnumbered_events,
        connections=tuple(connections),
    )


def replaced(state: Snapshot, *holds: HoldRecord, events: Iterable[tuple[str, str]] = CLEAN_FEED) -> Snapshot:
    """`state` with these holds instead of its holds of the same ids, and this feed."""
    by_id = {h.id: h for h in holds}
    return snapshot([by_id.get(h.id, h) for h in state.holds], state.leases, state.idempotency, events=events)


def hold_body(hold_id: str, status: str = "held") -> dict[str, str]:
    return {"id": hold_id, "status": status}


def at_ms(remaining_ms: int) -> datetime:
    """The expires_at of a hold with `remaining_ms` left when the snapshot is read."""
    return SNAPSHOT_AT + timedelta(milliseconds=remaining_ms)


def extend(
    history: History,
    at: float,
    hold_id: str,
    status: int | None,
    *,
    expires_at: datetime | None = None,
    extensions: int = 1,
    took_s: float = 0.01,
) -> None:
    entry = history.invoke("extend", at=at, hold_id=hold_id, holder="carol", ttl_seconds=5)
    if status is None:
        history.unknown(entry, "ReadTimeout", at=at + 10)
    elif status == 200:
        assert expires_at is not None
        body = {
            "id": hold_id,
            "status": "held",
            "expires_at": expires_at.isoformat().replace("+00:00", "Z"),  # as the gateway writes it
            "extensions": extensions,
        }
        history.complete(entry, 200, body, at=at + took_s)
    else:
        title = "Backend unavailable" if status == 503 else "Hold cannot be extended"
        history.complete(entry, status, {"title": title}, retry_after=status == 503, at=at + took_s)


def create(
    history: History,
    at: float,
    status: int | None,
    hold_id: str | None = None,
    *,
    slots: list[str] | None = None,
    holder: str = "alice",
    key: str | None = None,
    replayed: bool = False,
) -> None:
    extra = {} if key is None else {"idempotency_key": key}
    entry = history.invoke(
        "create", at=at, event_id="e1", slots=slots or ["s1"], holder=holder, ttl_seconds=5, **extra
    )
    if status is None:
        history.unknown(entry, "ReadTimeout", at=at + 10)
    else:
        body = hold_body(hold_id) if hold_id else {"title": "Slot unavailable"}
        history.complete(entry, status, body, replayed=replayed, at=at + 0.01)


def act(history: History, op: str, at: float, hold_id: str, status: int | None, *, result: str = "") -> None:
    assert op in ("confirm", "cancel")
    entry = history.invoke("confirm" if op == "confirm" else "cancel", at=at, hold_id=hold_id, holder="alice")
    if status is None:
        history.unknown(entry, "RemoteProtocolError", at=at + 1)
    else:
        history.complete(entry, status, hold_body(hold_id, result) if status == 200 else {}, at=at + 0.01)


def invariants(report: Report) -> list[str]:
    return sorted({violation.invariant for violation in report.violations})


def clean_history() -> tuple[History, Snapshot]:
    """A bit of everything a soak sees, all of it correct."""
    history = History()
    create(history, 1.0, 201, HOLD_A, key="k1")
    create(history, 1.1, 409, slots=["s1"], holder="bob")
    create(history, 1.2, 200, HOLD_A, key="k1", replayed=True)  # a replay names the same hold
    create(history, 1.3, None, holder="carol", slots=["s2"])  # unknown: may or may not have committed
    create(history, 1.4, 201, HOLD_B, slots=["s3", "s4"])
    act(history, "confirm", 2.0, HOLD_A, 200, result="confirmed")
    act(history, "confirm", 2.1, HOLD_B, 200, result="confirmed")
    act(history, "cancel", 2.5, HOLD_B, 200, result="cancelled")  # a later cancel explains B's status
    extend(history, 2.6, HOLD_C, 200, expires_at=at_ms(2_000))  # C lives 2 s more after the snapshot
    extend(history, 2.7, HOLD_A, 409)  # confirmed: refused, nothing changed
    mistake = history.invoke("mistake", at=3.0, mistake="bad-json")
    history.complete(mistake, 400, {"title": "Bad request"}, at=3.01)
    stateful = history.invoke("mistake", at=3.1, mistake="wrong-holder", hold_id=HOLD_A)
    history.complete(stateful, 503, {"title": "Unavailable"}, retry_after=True, at=3.2)  # mid-fault
    busy = history.invoke("create", at=3.3, event_id="e1", slots=["s9"], holder="dan", ttl_seconds=5)
    history.complete(busy, 503, {"title": "Unavailable"}, retry_after=True, at=3.4)
    history.fault("redis-kill", 2.9, 3.5, "down 0.6s")
    a = hold(HOLD_A, status="confirmed", remaining_ms=-1_000)
    b = hold(HOLD_B, ("s3", "s4"), status="cancelled", confirmed=True)
    # The unknown create did commit; then it was extended once.
    c = hold(HOLD_C, ("s2",), holder="carol", remaining_ms=2_000, extensions=1)
    old = hold(HOLD_D, ("s2",), status="expired", remaining_ms=-9_000)
    return history, snapshot(
        holds=[a, b, c, old],
        leases=[lease(a, "s1", 59_000), lease(c, "s2", 2_100)],
        idempotency=[IdempotencyRecord("alice", "k1", HOLD_A, 201)],
        connections=[ConnectionCount("postgres backends", (3, 3, 2), 20)],
    )


def test_a_clean_history_has_no_violations() -> None:
    history, state = clean_history()
    report = check(history, state)
    assert report.violations == []
    assert report.ok
    assert report.count("create", 201) == 2
    assert report.count("create", 409) == 1
    assert report.count("create", "unknown") == 1
    assert report.unknowns == 1
    assert report.faults == {"redis-kill": 1}
    assert report.count("extend", 200) == 1
    assert report.count("extend", 409) == 1
    assert "violations: 0" in report.format()
    assert "9 hold events" in report.format()


def test_two_active_holds_on_one_slot() -> None:
    history, state = clean_history()
    rival = hold("E" * 22, ("s1",), holder="bob", remaining_ms=1_500)
    events = [*CLEAN_FEED, ("E" * 22, "hold.created")]
    report = check(history, snapshot([*state.holds, rival], state.leases, state.idempotency, events=events))
    assert invariants(report) == ["one-active-hold"]
    assert "e1/s1" in report.violations[0].detail
    # A lapsed held hold beside a live one is not two winners (only a hold the sweeper has yet to mark).
    lapsed = hold("E" * 22, ("s1",), holder="bob", remaining_ms=-1)
    report = check(history, snapshot([*state.holds, lapsed], state.leases, state.idempotency, events=events))
    assert invariants(report) == ["event-feed"]


def test_a_201_without_a_committed_hold() -> None:
    history, state = clean_history()
    create(history, 4.0, 201, "F" * 22, slots=["s7"])
    report = check(history, state)
    assert invariants(report) == ["created-not-committed"]
    assert "F" * 22 in report.violations[0].operations[0]


def test_a_200_to_a_create_that_names_no_committed_hold() -> None:
    history, state = clean_history()
    create(history, 4.0, 200, "F" * 22, holder="bob")
    assert invariants(check(history, state)) == ["created-not-committed"]


def test_a_201_whose_hold_has_other_slots() -> None:
    history, _ = clean_history()
    create(history, 4.0, 201, "F" * 22, slots=["s7", "s8"])
    _, state = clean_history()
    other = hold("F" * 22, ("s7",), remaining_ms=3_000)
    events = [*CLEAN_FEED, ("F" * 22, "hold.created")]
    report = check(history, snapshot([*state.holds, other], state.leases, state.idempotency, events=events))
    assert invariants(report) == ["created-not-committed"]


def test_a_replay_that_names_another_hold() -> None:
    history, state = clean_history()
    create(history, 4.0, 200, "F" * 22, key="k1", replayed=True)
    earlier = hold("F" * 22, ("s1",), status="expired", remaining_ms=-5_000)  # alice's, on s1: it fits
    events = [("F" * 22, "hold.created"), ("F" * 22, "hold.expired"), *CLEAN_FEED]
    report = check(history, snapshot([*state.holds, earlier], state.leases, state.idempotency, events=events))
    assert invariants(report) == ["idempotency-replay"]
    assert HOLD_A in report.violations[0].detail
    assert "F" * 22 in report.violations[0].detail


def test_an_idempotency_record_that_names_another_hold() -> None:
    history, state = clean_history()
    records = [IdempotencyRecord("alice", "k1", HOLD_C, 201)]
    report = check(history, snapshot(state.holds, state.leases, records))
    assert invariants(report) == ["idempotency-replay"]


def test_a_lease_of_a_hold_that_is_not_live() -> None:
    history, state = clean_history()
    b = next(h for h in state.holds if h.id == HOLD_B)  # cancelled
    report = check(history, snapshot(state.holds, [*state.leases, lease(b, "s3", 1_000)], state.idempotency))
    assert invariants(report) == ["redis-lease"]
    assert "not live" in report.violations[0].detail


def test_a_lease_that_outlives_its_hold() -> None:
    history, state = clean_history()
    c = next(h for h in state.holds if h.id == HOLD_C)  # 2 s left
    report = check(history, snapshot(state.holds, [lease(c, "s2", 5_000)], state.idempotency))
    assert invariants(report) == ["redis-lease"]
    assert "outlives" in report.violations[0].detail
    a = next(h for h in state.holds if h.id == HOLD_A)  # confirmed: confirmed_lease_ms, 60 s here
    assert invariants(check(history, snapshot(state.holds, [lease(a, "s1", 90_000)]))) == ["redis-lease"]
    forever = LeaseRecord(lease(c, "s2", 0).key, lease(c, "s2", 0).value, -1)
    assert invariants(check(history, snapshot(state.holds, [forever]))) == ["redis-lease"]


def test_a_lease_with_a_token_no_hold_has() -> None:
    history, state = clean_history()
    stray = LeaseRecord(slot_key(PREFIX, "e1", "s5"), "deadbeef:0123456789abcdef", 3_000)
    report = check(history, snapshot(state.holds, [stray]))
    assert invariants(report) == ["redis-lease"]
    # A lease on a slot that is not one of its hold's.
    c = next(h for h in state.holds if h.id == HOLD_C)
    misplaced = LeaseRecord(slot_key(PREFIX, "e1", "s6"), lease(c, "s2", 0).value, 1_000)
    assert invariants(check(history, snapshot(state.holds, [misplaced]))) == ["redis-lease"]


def test_a_blocked_seat_is_no_stray_lease() -> None:
    history, state = clean_history()
    blocked = LeaseRecord(slot_key(PREFIX, "e1", "s5"), BLOCKED_LEASE_VALUE, -1)
    assert invariants(check(history, snapshot(state.holds, [*state.leases, blocked]))) == []


def test_a_5xx_for_a_client_mistake() -> None:
    history, state = clean_history()
    entry = history.invoke("mistake", at=4.0, mistake="bad-body")
    history.complete(entry, 503, {"title": "Unavailable"}, retry_after=True, at=4.1)
    report = check(history, state)
    assert invariants(report) == ["client-mistake-5xx"]
    # A mistake only Postgres can judge may be a 503, never a 500.
    entry = history.invoke("mistake", at=5.0, mistake="unknown-id", hold_id="G" * 22)
    history.complete(entry, 500, {"title": "Internal Server Error"}, at=5.1)
    assert len(check(history, state).violations) == 2


def test_a_500_and_a_503_without_retry_after() -> None:
    history, state = clean_history()
    entry = history.invoke("read", at=4.0, hold_id=HOLD_A)
    history.complete(entry, 500, {"title": "Internal Server Error"}, at=4.1)
    report = check(history, state)
    assert invariants(report) == ["server-error"]
    entry = history.invoke("read", at=5.0, hold_id=HOLD_A)
    history.complete(entry, 503, {"title": "Unavailable"}, at=5.1)
    details = [v.detail for v in check(history, state).violations]
    assert details == ["500 (only 503 is planned)", "503 without Retry-After"]


def test_a_confirm_that_postgres_lost() -> None:
    history, state = clean_history()
    c = next(h for h in state.holds if h.id == HOLD_C)
    act(history, "confirm", 4.0, HOLD_C, 200, result="confirmed")
    report = check(history, state)  # C is still held in Postgres
    assert invariants(report) == ["confirm-lost"]
    assert HOLD_C in report.violations[0].detail
    # A cancel that failed for sure (409) does not explain it; one with an unknown outcome does.
    act(history, "cancel", 4.5, HOLD_C, 409)
    assert invariants(check(history, state)) == ["confirm-lost"]
    act(history, "cancel", 5.0, HOLD_C, None)
    cancelled = [
        h if h.id != HOLD_C else hold(HOLD_C, c.slots, holder="carol", status="cancelled", extensions=1)
        for h in state.holds
    ]
    events = [*CLEAN_FEED, (HOLD_C, "hold.cancelled")]
    assert check(history, snapshot(cancelled, [], state.idempotency, events=events)).ok


def test_connections_beyond_the_pool_or_growing_while_idle() -> None:
    history, state = clean_history()
    too_many = ConnectionCount("postgres backends", (21, 21, 21), 20)
    growing = ConnectionCount("redis proxy", (4, 5, 6), 257)
    report = check(history, snapshot(state.holds, state.leases, state.idempotency, [too_many, growing]))
    assert invariants(report) == ["connections"]
    assert len(report.violations) == 2


def test_an_extension_whose_expiry_postgres_lost() -> None:
    history, state = clean_history()
    extend(history, 4.0, HOLD_C, 200, expires_at=at_ms(5_000), extensions=2)
    # Counted (and its event written), but expires_at is where the first extension left it.
    c = hold(HOLD_C, ("s2",), holder="carol", remaining_ms=2_000, extensions=2)
    report = check(history, replaced(state, c, events=[*CLEAN_FEED, (HOLD_C, "hold.extended")]))
    assert invariants(report) == ["extend-lost"]
    assert [v.detail for v in report.violations] == [
        f"extend of {HOLD_C} answered expires_at {at_ms(5_000).isoformat()}, "
        f"Postgres has {at_ms(2_000).isoformat()} (held)"
    ]
    # The same, kept: no violation.
    kept = hold(HOLD_C, ("s2",), holder="carol", remaining_ms=5_000, extensions=2)
    assert check(history, replaced(state, kept, events=[*CLEAN_FEED, (HOLD_C, "hold.extended")])).ok


def test_an_extended_hold_that_lapsed_keeps_the_expiry_it_was_given() -> None:
    history, state = clean_history()
    extend(history, 4.0, HOLD_C, 200, expires_at=at_ms(-500), extensions=2)
    expired = hold(HOLD_C, ("s2",), holder="carol", remaining_ms=-500, extensions=2, status="expired")
    holds = [expired if h.id == HOLD_C else h for h in state.holds]
    leases = [lease for lease in state.leases if expired.token not in lease.value]  # gone with its hold
    events = [*CLEAN_FEED, (HOLD_C, "hold.extended"), (HOLD_C, "hold.expired")]
    assert check(history, snapshot(holds, leases, state.idempotency, events=events)).ok
    # Marked expired with an earlier expiry than its extension answered: lost, whatever its status.
    early = hold(HOLD_C, ("s2",), holder="carol", remaining_ms=-501, extensions=2, status="expired")
    holds = [early if h.id == HOLD_C else h for h in state.holds]
    report = check(history, snapshot(holds, leases, state.idempotency, events=events))
    assert invariants(report) == ["extend-lost"]


def test_an_extension_postgres_did_not_count() -> None:
    history, state = clean_history()
    extend(history, 4.0, HOLD_C, 200, expires_at=at_ms(5_000), extensions=2)
    # Its expiry is there, yet Postgres counts one extension where two were answered 200.
    c = hold(HOLD_C, ("s2",), holder="carol", remaining_ms=5_000, extensions=1)
    report = check(history, replaced(state, c))
    assert invariants(report) == ["extend-lost"]
    assert report.violations[0].detail == (
        f"2 extends of {HOLD_C} answered 200 (the last saying extensions=2), Postgres counts 1"
    )
    assert len(report.violations) == 1


def test_an_extension_of_a_hold_postgres_does_not_have() -> None:
    history, state = clean_history()
    extend(history, 4.0, "F" * 22, 200, expires_at=at_ms(5_000))
    report = check(history, state)
    assert invariants(report) == ["extend-lost"]
    assert "Postgres has no such hold" in report.violations[0].detail


def test_an_extension_answered_without_a_usable_expiry() -> None:
    history, state = clean_history()
    for expires_at in (None, "2026-03-01T12:00:09", "tomorrow"):  # absent, without an offset, not a time
        entry = history.invoke("extend", at=4.0, hold_id=HOLD_C, holder="carol", ttl_seconds=5)
        history.complete(entry, 200, {"id": HOLD_C, "status": "held", "expires_at": expires_at}, at=4.01)
    c = hold(HOLD_C, ("s2",), holder="carol", remaining_ms=9_000, extensions=4)
    events = [*CLEAN_FEED, *[(HOLD_C, "hold.extended")] * 3]
    report = check(history, replaced(state, c, events=events))
    assert [v.detail for v in report.violations] == [
        f"extend of {HOLD_C} answered 200 without an expires_at"
    ] * 3


def test_a_later_extension_may_shorten_the_expiry() -> None:
    """Every extension sets expires_at to now + ttl: one that took effect later may leave it earlier than an
    earlier one answered; one known to have failed, or known to have taken effect before, may not."""
    c = hold(HOLD_C, ("s2",), holder="carol", remaining_ms=2_000, extensions=3)
    events = [*CLEAN_FEED, (HOLD_C, "hold.extended"), (HOLD_C, "hold.extended")]

    def judged(*later: tuple[float, int | None, int, float]) -> list[str]:
        history, state = clean_history()
        extend(history, 4.0, HOLD_C, 200, expires_at=at_ms(5_000), extensions=2)
        for at, status, remaining_ms, took_s in later:
            extend(history, at, HOLD_C, status, expires_at=at_ms(remaining_ms), extensions=3, took_s=took_s)
        return invariants(check(history, replaced(state, c, events=events)))

    assert judged((4.5, 200, 2_000, 0.01)) == []  # a later, shorter extension
    assert judged((3.0, 200, 2_000, 1.5)) == []  # overlapping this one: it may have taken effect after it
    assert judged((4.5, None, 0, 0.01)) == []  # unknown outcome: it may have
    assert judged((1.0, 503, 0, 0.01)) == []  # a 503, even an earlier one: its statement may have run late
    assert judged((3.0, 200, 2_000, 0.5)) == ["extend-lost"]  # answered before this one was sent
    assert judged((4.5, 409, 0, 0.01)) == ["extend-lost"]  # refused: it changed nothing
    # A later one that answered a later expiry does not excuse an earlier one (both are lost here).
    history, state = clean_history()
    extend(history, 4.0, HOLD_C, 200, expires_at=at_ms(5_000), extensions=2)
    extend(history, 4.5, HOLD_C, 200, expires_at=at_ms(6_000), extensions=3)
    report = check(history, replaced(state, c, events=events))
    assert [v.invariant for v in report.violations] == ["extend-lost", "extend-lost"]


def test_an_event_missing_from_the_feed() -> None:
    history, state = clean_history()
    for lost, hold_id in [
        ((HOLD_A, "hold.created"), HOLD_A),  # a created hold
        ((HOLD_C, "hold.extended"), HOLD_C),  # an extension
        ((HOLD_B, "hold.confirmed"), HOLD_B),  # the confirm of a hold cancelled since
        ((HOLD_D, "hold.expired"), HOLD_D),  # an expiry
    ]:
        events = [event for event in CLEAN_FEED if event != lost]
        report = check(history, snapshot(state.holds, state.leases, state.idempotency, events=events))
        assert invariants(report) == ["event-feed"], lost
        assert len(report.violations) == 1
        assert report.violations[0].detail.startswith(f"hold {hold_id} is "), report.violations[0].detail


def test_a_hold_expired_twice_in_the_feed() -> None:
    history, state = clean_history()
    events = [*CLEAN_FEED, (HOLD_D, "hold.expired")]  # a claim's copy the sequencer did not delete
    report = check(history, snapshot(state.holds, state.leases, state.idempotency, events=events))
    assert invariants(report) == ["event-feed"]
    assert (
        report.violations[0].detail
        == f"hold {HOLD_D} is expired, extensions=0: expected hold.created hold.expired"
    )
    assert report.violations[0].operations == ("#1 hold.created", "#3 hold.expired", "#10 hold.expired")


def test_an_event_of_a_hold_postgres_does_not_have() -> None:
    history, state = clean_history()
    events = [*CLEAN_FEED, ("F" * 22, "hold.created"), ("F" * 22, "hold.expired")]  # a rolled-back claim's
    report = check(history, snapshot(state.holds, state.leases, state.idempotency, events=events))
    assert invariants(report) == ["event-feed"]
    assert [v.detail for v in report.violations] == [
        f"2 events of hold {'F' * 22}, which Postgres does not have"
    ]


def test_events_that_do_not_tell_the_hold_s_life() -> None:
    history, state = clean_history()

    def without(event: tuple[str, str]) -> list[tuple[str, str]]:
        return [e for e in CLEAN_FEED if e != event]

    wrong = {
        "an expired hold also confirmed": (HOLD_D, [*CLEAN_FEED, (HOLD_D, "hold.confirmed")]),
        # A claim's event for a hold that kept its seat.
        "a live hold expired": (HOLD_C, [*CLEAN_FEED, (HOLD_C, "hold.expired")]),
        "one extension too many": (HOLD_C, [*CLEAN_FEED, (HOLD_C, "hold.extended")]),
        "a confirmed hold confirmed twice": (HOLD_A, [*CLEAN_FEED, (HOLD_A, "hold.confirmed")]),
        "a hold confirmed after it was cancelled": (
            HOLD_B,
            [*without((HOLD_B, "hold.confirmed")), (HOLD_B, "hold.confirmed")],
        ),
        "an extension before the hold was created": (
            HOLD_C,
            [(HOLD_C, "hold.extended"), *without((HOLD_C, "hold.extended"))],
        ),
    }
    for what, (hold_id, events) in wrong.items():
        report = check(history, snapshot(state.holds, state.leases, state.idempotency, events=events))
        assert invariants(report) == ["event-feed"], what
        assert len(report.violations) == 1, what
        assert report.violations[0].detail.startswith(f"hold {hold_id} is "), what


def test_a_feed_read_before_it_settled_is_not_judged() -> None:
    history, state = clean_history()
    report = check(history, snapshot(state.holds, state.leases, state.idempotency, unnumbered_events=2))
    assert invariants(report) == ["event-feed"]
    assert report.violations[0].detail == (
        "not settled when read: 0 lapsed holds not yet marked expired, 2 events not yet numbered "
        "(the feed is not judged)"
    )
    # A hold past its expiry that the sweeper has yet to mark: its hold.expired may not be written yet.
    lapsed = hold("E" * 22, ("s5",), remaining_ms=0)
    events = [*CLEAN_FEED, ("E" * 22, "hold.created")]
    report = check(history, snapshot([*state.holds, lapsed], state.leases, state.idempotency, events=events))
    assert invariants(report) == ["event-feed"]
    assert report.violations[0].operations == (f"hold {'E' * 22} held, remaining_ms=0",)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_short_soak_keeps_every_promise() -> None:
    lines: list[str] = []
    result = asyncio.run(run_soak(SoakOptions(minutes=0.6, seed=7, log=lines.append)))
    report = result.report
    output = report.format()
    assert report.violations == [], output + "\n" + result.gateway_log
    assert len(report.faults) >= 3, output
    assert report.count("create", 201) > 0, output
    assert report.count("create", 409) > 0, output
    assert report.count("confirm", 200) > 0, output
    assert report.count("extend", 200) > 0, output
    assert report.count("extend", 409) > 0, output
    assert sum(report.counts["mistake"].values()) > 0, output
    # The feed was judged, and on every kind of event.
    assert Counter(event.type for event in result.snapshot.events).keys() == {
        "hold.created",
        "hold.extended",
        "hold.confirmed",
        "hold.cancelled",
        "hold.expired",
    }, output
