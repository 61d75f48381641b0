"""The history checker against fabricated histories (one broken promise each, and one clean history), and a
short real chaos soak that must find no violation."""

import asyncio
from collections.abc import Iterable

import pytest

from gateway.chaos.history import (
    ConnectionCount,
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


def hold(
    hold_id: str,
    slots: Iterable[str] = ("s1",),
    *,
    status: str = "held",
    remaining_ms: int = 4_000,
    holder: str = "alice",
    event_id: str = "e1",
) -> HoldRecord:
    return HoldRecord(hold_id, f"token-{hold_id}", event_id, holder, tuple(slots), status, remaining_ms)


def lease(record: HoldRecord, slot: str, pttl_ms: int) -> LeaseRecord:
    return LeaseRecord(
        slot_key(PREFIX, record.event_id, slot), lease_value(record.token, record.holder), pttl_ms
    )


def snapshot(
    holds: Iterable[HoldRecord] = (),
    leases: Iterable[LeaseRecord] = (),
    idempotency: Iterable[IdempotencyRecord] = (),
    connections: Iterable[ConnectionCount] = (),
) -> Snapshot:
    return Snapshot(
        holds=tuple(holds),
        leases=tuple(leases),
        idempotency=tuple(idempotency),
        key_prefix=PREFIX,
        confirmed_lease_ms=60_000,
        connections=tuple(connections),
    )


def hold_body(hold_id: str, status: str = "held") -> dict[str, str]:
    return {"id": hold_id, "status": status}


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
    mistake = history.invoke("mistake", at=3.0, mistake="bad-json")
    history.complete(mistake, 400, {"title": "Bad request"}, at=3.01)
    stateful = history.invoke("mistake", at=3.1, mistake="wrong-holder", hold_id=HOLD_A)
    history.complete(stateful, 503, {"title": "Unavailable"}, retry_after=True, at=3.2)  # mid-fault
    busy = history.invoke("create", at=3.3, event_id="e1", slots=["s9"], holder="dan", ttl_seconds=5)
    history.complete(busy, 503, {"title": "Unavailable"}, retry_after=True, at=3.4)
    history.fault("redis-kill", 2.9, 3.5, "down 0.6s")
    a = hold(HOLD_A, status="confirmed", remaining_ms=-1_000)
    b = hold(HOLD_B, ("s3", "s4"), status="cancelled")
    c = hold(HOLD_C, ("s2",), holder="carol", remaining_ms=2_000)  # the unknown create did commit
    old = hold("D" * 22, ("s2",), status="expired", remaining_ms=-9_000)
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
    assert "violations: 0" in report.format()


def test_two_active_holds_on_one_slot() -> None:
    history, state = clean_history()
    rival = hold("E" * 22, ("s1",), holder="bob", remaining_ms=1_500)
    report = check(history, snapshot([*state.holds, rival], state.leases, state.idempotency))
    assert invariants(report) == ["one-active-hold"]
    assert "e1/s1" in report.violations[0].detail
    # A lapsed held hold beside a live one is not two winners.
    lapsed = hold("E" * 22, ("s1",), holder="bob", remaining_ms=-1)
    assert check(history, snapshot([*state.holds, lapsed], state.leases, state.idempotency)).ok


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
    report = check(history, snapshot([*state.holds, other], state.leases, state.idempotency))
    assert invariants(report) == ["created-not-committed"]


def test_a_replay_that_names_another_hold() -> None:
    history, state = clean_history()
    create(history, 4.0, 200, "F" * 22, key="k1", replayed=True)
    earlier = hold("F" * 22, ("s1",), status="expired", remaining_ms=-5_000)  # alice's, on s1: it fits
    report = check(history, snapshot([*state.holds, earlier], state.leases, state.idempotency))
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
        h if h.id != HOLD_C else hold(HOLD_C, c.slots, holder="carol", status="cancelled")
        for h in state.holds
    ]
    assert check(history, snapshot(cancelled, [], state.idempotency)).ok


def test_connections_beyond_the_pool_or_growing_while_idle() -> None:
    history, state = clean_history()
    too_many = ConnectionCount("postgres backends", (21, 21, 21), 20)
    growing = ConnectionCount("redis proxy", (4, 5, 6), 257)
    report = check(history, snapshot(state.holds, state.leases, state.idempotency, [too_many, growing]))
    assert invariants(report) == ["connections"]
    assert len(report.violations) == 2


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
    assert sum(report.counts["mistake"].values()) > 0, output
