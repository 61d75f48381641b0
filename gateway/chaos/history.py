"""What clients saw, and whether it kept the gateway's promises.

A `History` records every client operation as invoked (op, arguments, time) and then as completed (HTTP
status, hold id and status from the body) or unknown (a timeout or a lost connection: the request may or may
not have taken effect). Once the system is quiet (faults healed, the gateway answering, pending leases
lapsed) a `Snapshot` is taken of the Postgres rows and Redis keys, and `check` compares the two. `check` is a
pure function of the history and the snapshot, so hand-made histories test it.

The promises checked, each a `Violation.invariant` name:

- ``one-active-hold``: at most one active hold per slot in Postgres (held and not lapsed, or confirmed);
- ``created-not-committed``: every 201 (and every 200 to a create) names a hold that exists, with the event,
  holder and slots asked for;
- ``idempotency-replay``: every answer to one (holder, Idempotency-Key) that created or replayed a hold
  names the same hold, and the key's record in Postgres names it too;
- ``redis-lease``: every lease left in Redis belongs to a live hold with that token, on one of its slots,
  and does not outlive it (a confirmed hold's lease: `confirmed_lease_ms`) by more than a tolerance;
- ``server-error``: no 500 at all, no 5xx but 503, and a 503 carries Retry-After;
- ``client-mistake-5xx``: a client mistake is a 4xx, even mid-fault; one that only Postgres can judge
  (a wrong holder, an unknown well-formed id) may be a 503 while Postgres is unreachable;
- ``confirm-lost``: a confirm answered 200 is confirmed in Postgres, unless a cancel of it may have
  succeeded since (answered 200, or 5xx/unknown: not known to have failed);
- ``connections``: the gateway's Postgres backends are within its pools, and the open connections through
  each fault proxy stay bounded and do not grow while idle;
- ``extend-lost``: an extend answered 200 names a hold in Postgres whose `extensions` is at least the number
  of its extends answered 200 (and any answer's count), and which expires no earlier than the answer's
  `expires_at`, unless another extend of it, not known to have failed, may have taken effect after this one
  and did not answer an expiry at least as late (an extension moves `expires_at` to now + ttl, so it may
  shorten it; confirm, cancel and expiry leave `expires_at` alone, so they explain nothing);
- ``event-feed``: once the sweeper has marked every lapsed hold and the sequencer has numbered every event,
  each hold's events in the numbered feed are exactly its life: one `hold.created` first, then as many
  `hold.extended` as its `extensions`, then none (held), `hold.confirmed` (confirmed), `hold.cancelled`
  after a `hold.confirmed` if it was ever confirmed (cancelled) or one `hold.expired` (expired); and no event
  names a hold Postgres does not have.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from gateway.keys import is_blocked, parse_lease_value
from gateway.models import HOLD_STATUSES, LIVE_HOLD_STATUS

OpKind = Literal["create", "confirm", "cancel", "extend", "read", "mistake"]
Outcome = Literal["pending", "completed", "unknown"]

# Client mistakes the gateway can judge from the request alone: never a 5xx.
STATELESS_MISTAKES = frozenset(
    {"bad-json", "bad-body", "bad-slots", "bad-ttl", "malformed-id", "bad-key", "bad-extend-ttl"}
)
# Client mistakes only Postgres can judge: a 503 is the honest answer while it is unreachable.
STATEFUL_MISTAKES = frozenset({"wrong-holder", "unknown-id"})


@dataclass
class Operation:
    """One client request: what was asked, and what came back (if anything)."""

    index: int
    op: OpKind
    args: dict[str, Any]
    invoked_at: float
    outcome: Outcome = "pending"
    completed_at: float | None = None
    status: int | None = None  # HTTP status when completed
    hold_id: str | None = None  # from the body, when it is a hold
    hold_status: str | None = None
    expires_at: datetime | None = None  # from the body, when it is a hold
    extensions: int | None = None  # from the body, when it is a hold
    replayed: bool = False  # Idempotent-Replayed: true
    retry_after: bool = False  # a Retry-After header was present
    error: str | None = None  # why the outcome is unknown, or a problem's title

    def describe(self) -> str:
        """One line naming the request and its answer, for a violation's detail."""
        answer = {
            "pending": "no answer yet",
            "unknown": f"unknown ({self.error})",
            "completed": f"{self.status}",
        }[self.outcome]
        if self.hold_id is not None:
            answer += f" hold={self.hold_id}"
        if self.hold_status is not None:
            answer += f" status={self.hold_status}"
        if self.op == "extend" and self.expires_at is not None:
            answer += f" expires_at={self.expires_at.isoformat()} extensions={self.extensions}"
        if self.replayed:
            answer += " replayed"
        args = " ".join(f"{name}={value}" for name, value in sorted(self.args.items()))
        return f"#{self.index} t={self.invoked_at:.3f} {self.op} {args} -> {answer}"


@dataclass(frozen=True)
class Fault:
    """One injected fault: its kind, when it began and when it was healed."""

    kind: str
    started_at: float
    healed_at: float | None
    detail: str = ""


class History:
    """Client operations and faults, in the order they happened. Times are seconds since the history began
    (the monotonic clock); the `at` arguments let a test fabricate them."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []
        self.faults: list[Fault] = []
        self._origin = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._origin

    def invoke(self, op: OpKind, at: float | None = None, **args: Any) -> Operation:
        entry = Operation(len(self.operations), op, dict(args), self.now() if at is None else at)
        self.operations.append(entry)
        return entry

    def complete(
        self,
        entry: Operation,
        status: int,
        body: Mapping[str, Any] | None = None,
        *,
        replayed: bool = False,
        retry_after: bool = False,
        at: float | None = None,
    ) -> Operation:
        entry.outcome = "completed"
        entry.completed_at = self.now() if at is None else at
        entry.status = status
        entry.replayed = replayed
        entry.retry_after = retry_after
        if body is not None:
            if isinstance(body.get("id"), str) and isinstance(body.get("status"), str):
                entry.hold_id = body["id"]
                entry.hold_status = body["status"]
                entry.expires_at = _timestamp(body.get("expires_at"))
                if isinstance(body.get("extensions"), int):
                    entry.extensions = body["extensions"]
            elif isinstance(body.get("title"), str):
                entry.error = body["title"]
        return entry

    def unknown(self, entry: Operation, error: str, at: float | None = None) -> Operation:
        entry.outcome = "unknown"
        entry.completed_at = self.now() if at is None else at
        entry.error = error
        return entry

    def fault(self, kind: str, started_at: float, healed_at: float | None, detail: str = "") -> None:
        self.faults.append(Fault(kind, started_at, healed_at, detail))


def _timestamp(value: object) -> datetime | None:
    """An answer's RFC 3339 timestamp; None if it is not one, or names no offset (the check that needs it
    says so)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


@dataclass(frozen=True)
class HoldRecord:
    """A row of `holds`; remaining_ms is expires_at minus Postgres's now() at the snapshot."""

    id: str
    token: str
    event_id: str
    holder: str
    slots: tuple[str, ...]
    status: str
    remaining_ms: int
    expires_at: datetime
    extensions: int
    confirmed: bool  # confirmed_at is set: confirmed once, whatever its status now

    @property
    def active(self) -> bool:
        return self.status == "confirmed" or (self.status == "held" and self.remaining_ms > 0)

    @property
    def lapsed(self) -> bool:
        """Held by its row, yet past expires_at: the sweeper has yet to mark it expired."""
        return self.status == "held" and self.remaining_ms <= 0


@dataclass(frozen=True)
class LeaseRecord:
    """A slot lease key in Redis: its value ("<token>:<holder fp>") and PTTL (-1: no expiry)."""

    key: str
    value: str
    pttl_ms: int


@dataclass(frozen=True)
class IdempotencyRecord:
    holder: str
    key: str
    hold_id: str
    status_code: int


@dataclass(frozen=True)
class EventRecord:
    """A numbered row of `hold_events`: its feed position, type and hold."""

    id: int
    type: str
    hold_id: str


@dataclass(frozen=True)
class ConnectionCount:
    """Connections one party holds, sampled while quiet, and the most it may hold."""

    name: str
    samples: tuple[int, ...]
    bound: int


@dataclass(frozen=True)
class Snapshot:
    """The state of Postgres and Redis after quiet, plus what the checker must know of the settings."""

    holds: tuple[HoldRecord, ...]
    leases: tuple[LeaseRecord, ...]
    idempotency: tuple[IdempotencyRecord, ...]
    key_prefix: str
    confirmed_lease_ms: int
    events: tuple[EventRecord, ...]  # the numbered feed, in feed order, read in the holds' snapshot
    unnumbered_events: int  # rows of hold_events the sequencer has yet to number (or delete as a copy)
    connections: tuple[ConnectionCount, ...] = ()

    @property
    def settled(self) -> bool:
        """Whether the feed is complete: every lapsed hold marked expired, every event numbered."""
        return self.unnumbered_events == 0 and not any(hold.lapsed for hold in self.holds)


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str
    operations: tuple[str, ...] = ()

    def format(self) -> str:
        lines = [f"[{self.invariant}] {self.detail}"]
        lines += [f"    {line}" for line in self.operations]
        return "\n".join(lines)


@dataclass
class Report:
    counts: dict[str, Counter[str]]  # op -> status (or "unknown", "pending") -> count
    unknowns: int
    faults: Counter[str]
    violations: list[Violation] = field(default_factory=list)
    timeline: list[Fault] = field(default_factory=list)
    checked: str = ""  # what the snapshot held, in a line

    @property
    def ok(self) -> bool:
        return not self.violations

    def count(self, op: str, status: int | str) -> int:
        return self.counts.get(op, Counter())[str(status)]

    def format(self) -> str:
        lines = ["requests:"]
        for op in sorted(self.counts):
            statuses = ", ".join(f"{status}: {n}" for status, n in sorted(self.counts[op].items()))
            lines.append(f"  {op:<8} {sum(self.counts[op].values()):>6}  ({statuses})")
        lines.append(f"unknown outcomes: {self.unknowns}")
        faults = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.faults.items())) or "none"
        lines.append(f"faults injected: {sum(self.faults.values())} ({faults})")
        if self.checked:
            lines.append(f"checked against: {self.checked}")
        lines.append(f"violations: {len(self.violations)}")
        if self.violations:
            lines.append("fault timeline (s):")
            lines += [
                f"  {fault.started_at:8.3f}-{_seconds(fault.healed_at)}  {fault.kind} {fault.detail}"
                for fault in self.timeline
            ]
        lines += [violation.format() for violation in self.violations]
        return "\n".join(lines)


def _seconds(at: float | None) -> str:
    return "   (open)" if at is None else f"{at:8.3f}"


def check(history: History, snapshot: Snapshot, *, tolerance_ms: int = 1_000) -> Report:
    """Every promise above, checked against what clients saw and what the stores hold."""
    operations = history.operations
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for entry in operations:
        counts[entry.op][str(entry.status) if entry.outcome == "completed" else entry.outcome] += 1
    report = Report(
        counts=dict(counts),
        unknowns=sum(1 for entry in operations if entry.outcome == "unknown"),
        faults=Counter(fault.kind for fault in history.faults),
        timeline=list(history.faults),
        checked=_describe(snapshot),
    )
    holds = {hold.id: hold for hold in snapshot.holds}
    violations = report.violations
    violations += _one_active_hold(snapshot.holds)
    violations += _created_is_committed(operations, holds)
    violations += _idempotent_replays(operations, snapshot.idempotency)
    violations += _leases(snapshot, tolerance_ms)
    violations += _server_errors(operations)
    violations += _confirms_kept(operations, holds)
    violations += _connections(snapshot.connections)
    violations += _extensions_kept(operations, holds)
    violations += _event_feed(snapshot)
    return report


def _describe(snapshot: Snapshot) -> str:
    statuses = Counter("active" if hold.active else hold.status for hold in snapshot.holds)
    leases = sum(
        1 for lease in snapshot.leases if _parse_slot_key(snapshot.key_prefix, lease.key) is not None
    )
    connections = ", ".join(f"{c.name} {list(c.samples)} (max {c.bound})" for c in snapshot.connections)
    return (
        f"{len(snapshot.holds)} holds ({', '.join(f'{k}: {n}' for k, n in sorted(statuses.items()))}), "
        f"{leases} leases, {len(snapshot.idempotency)} idempotency records, "
        f"{len(snapshot.events)} hold events; "
        f"{connections or 'no connection counts'}"
    )


def _one_active_hold(holds: Iterable[HoldRecord]) -> list[Violation]:
    owners: dict[tuple[str, str], list[HoldRecord]] = defaultdict(list)
    for hold in holds:
        if hold.active:
            for slot in hold.slots:
                owners[(hold.event_id, slot)].append(hold)
    return [
        Violation(
            "one-active-hold",
            f"slot {event}/{slot} has {len(live)} active holds",
            tuple(
                f"hold {h.id} holder={h.holder} status={h.status} remaining_ms={h.remaining_ms}" for h in live
            ),
        )
        for (event, slot), live in sorted(owners.items())
        if len(live) > 1
    ]


def _created_is_committed(
    operations: Iterable[Operation], holds: Mapping[str, HoldRecord]
) -> list[Violation]:
    violations = []
    for entry in operations:
        # A 200 (the holder's existing hold, or a replay) must name a committed hold just as a 201 does.
        if entry.op != "create" or entry.outcome != "completed" or entry.status not in (200, 201):
            continue
        hold = holds.get(entry.hold_id or "")
        if hold is None:
            violations.append(
                Violation(
                    "created-not-committed",
                    f"{entry.status} for hold {entry.hold_id}, not in Postgres",
                    (entry.describe(),),
                )
            )
            continue
        asked = (
            entry.args.get("event_id"),
            entry.args.get("holder"),
            tuple(sorted(entry.args.get("slots", ()))),
        )
        if asked != (hold.event_id, hold.holder, tuple(sorted(hold.slots))):
            violations.append(
                Violation(
                    "created-not-committed",
                    f"{entry.status} for hold {hold.id}, which Postgres has as {hold.event_id} {hold.holder} "
                    f"{list(hold.slots)}",
                    (entry.describe(),),
                )
            )
    return violations


def _idempotent_replays(
    operations: Iterable[Operation], records: Iterable[IdempotencyRecord]
) -> list[Violation]:
    answers: dict[tuple[str, str], list[Operation]] = defaultdict(list)
    for entry in operations:
        key = entry.args.get("idempotency_key")
        if entry.op != "create" or key is None or entry.outcome != "completed" or entry.hold_id is None:
            continue
        if entry.status == 201 or entry.replayed:  # a created hold, or the replay of one
            answers[(entry.args["holder"], key)].append(entry)
    recorded = {(record.holder, record.key): record.hold_id for record in records}
    violations = []
    for (holder, key), entries in sorted(answers.items()):
        named = {entry.hold_id for entry in entries}
        if (holder, key) in recorded:
            named.add(recorded[(holder, key)])
        if len(named) > 1:
            violations.append(
                Violation(
                    "idempotency-replay",
                    f"Idempotency-Key {key!r} of {holder!r} answered with holds "
                    f"{sorted(h or '' for h in named)}"
                    f" (Postgres records {recorded.get((holder, key))})",
                    tuple(entry.describe() for entry in entries),
                )
            )
    return violations


def _parse_slot_key(prefix: str, key: str) -> tuple[str, str] | None:
    """(event id, slot id) of a slot lease key "<prefix>:{<event>}:slot:<slot>", else None."""
    head = f"{prefix}:{{"
    if not key.startswith(head):
        return None
    event, sep, rest = key[len(head) :].partition("}:slot:")
    if not sep:
        return None
    return event, rest


def _leases(snapshot: Snapshot, tolerance_ms: int) -> list[Violation]:
    by_token = {hold.token: hold for hold in snapshot.holds}
    violations = []
    for lease in snapshot.leases:
        slot = _parse_slot_key(snapshot.key_prefix, lease.key)
        if slot is None:
            continue  # an idempotency record, not a lease
        if is_blocked(lease.value):
            continue  # a blocked seat, which no hold leases
        where = f"lease {lease.key}={lease.value} pttl={lease.pttl_ms}ms"
        try:
            token = parse_lease_value(lease.value).token
        except ValueError:
            violations.append(Violation("redis-lease", f"{where}: not a lease value"))
            continue
        hold = by_token.get(token)
        if hold is None:
            violations.append(Violation("redis-lease", f"{where}: no hold in Postgres has this token"))
            continue
        about = f"{where} of hold {hold.id} ({hold.status}, remaining_ms={hold.remaining_ms})"
        if not hold.active:
            violations.append(Violation("redis-lease", f"{about}: the hold is not live"))
        elif hold.event_id != slot[0] or slot[1] not in hold.slots:
            violations.append(
                Violation("redis-lease", f"{about}: not a slot of this hold {list(hold.slots)}")
            )
        else:
            limit = snapshot.confirmed_lease_ms if hold.status == "confirmed" else hold.remaining_ms
            if lease.pttl_ms < 0 or lease.pttl_ms > limit + tolerance_ms:
                violations.append(
                    Violation("redis-lease", f"{about}: outlives the hold (limit {limit}+{tolerance_ms} ms)")
                )
    return violations


def _server_errors(operations: Iterable[Operation]) -> list[Violation]:
    violations = []
    for entry in operations:
        if entry.outcome != "completed" or entry.status is None or entry.status < 500:
            continue
        mistake = entry.args.get("mistake") if entry.op == "mistake" else None
        if mistake is not None and (mistake not in STATEFUL_MISTAKES or entry.status != 503):
            violations.append(
                Violation(
                    "client-mistake-5xx",
                    f"client mistake {mistake} answered {entry.status}",
                    (entry.describe(),),
                )
            )
        elif entry.status != 503:
            violations.append(
                Violation("server-error", f"{entry.status} (only 503 is planned)", (entry.describe(),))
            )
        elif not entry.retry_after:
            violations.append(Violation("server-error", "503 without Retry-After", (entry.describe(),)))
    return violations


def _confirms_kept(operations: Iterable[Operation], holds: Mapping[str, HoldRecord]) -> list[Violation]:
    cancels: dict[str, list[Operation]] = defaultdict(list)
    for entry in operations:
        if entry.op == "cancel" and entry.args.get("hold_id") is not None:
            cancels[entry.args["hold_id"]].append(entry)
    violations = []
    for entry in operations:
        if entry.op != "confirm" or entry.outcome != "completed" or entry.status != 200:
            continue
        hold_id = entry.args["hold_id"]
        hold = holds.get(hold_id)
        if hold is not None and hold.status == "confirmed":
            continue
        # A cancel not known to have failed may have cancelled it after this confirm took effect.
        excuses = [
            cancel
            for cancel in cancels[hold_id]
            if (cancel.completed_at is None or cancel.completed_at > entry.invoked_at)
            and (cancel.outcome != "completed" or cancel.status == 200 or (cancel.status or 0) >= 500)
        ]
        if excuses:
            continue
        state = "missing" if hold is None else hold.status
        violations.append(
            Violation(
                "confirm-lost",
                f"confirm of {hold_id} answered 200, Postgres has it {state}",
                (entry.describe(), *(cancel.describe() for cancel in cancels[hold_id])),
            )
        )
    return violations


def _connections(counts: Iterable[ConnectionCount]) -> list[Violation]:
    violations = []
    for count in counts:
        if not count.samples:
            continue
        if max(count.samples) > count.bound:
            violations.append(
                Violation(
                    "connections", f"{count.name}: {max(count.samples)} open, at most {count.bound} expected"
                )
            )
        if count.samples[-1] > count.samples[0]:
            violations.append(
                Violation("connections", f"{count.name}: grew while idle, {list(count.samples)}")
            )
    return violations


def _extensions_kept(operations: Iterable[Operation], holds: Mapping[str, HoldRecord]) -> list[Violation]:
    extends: dict[str, list[Operation]] = defaultdict(list)
    for entry in operations:
        if entry.op == "extend" and entry.args.get("hold_id") is not None:
            extends[entry.args["hold_id"]].append(entry)
    violations = []
    for hold_id, entries in sorted(extends.items()):
        answered = [entry for entry in entries if entry.outcome == "completed" and entry.status == 200]
        if not answered:
            continue
        hold = holds.get(hold_id)
        if hold is None:
            violations.append(
                Violation(
                    "extend-lost",
                    f"{len(answered)} extends of {hold_id} answered 200, Postgres has no such hold",
                    tuple(entry.describe() for entry in answered),
                )
            )
            continue
        # Each 200 is a committed statement of its own that counted one extension (nothing retries one), and
        # the count only grows: Postgres counts at least as many as were answered, and as any answer said.
        counted = max(len(answered), *(entry.extensions or 0 for entry in answered))
        if hold.extensions < counted:
            violations.append(
                Violation(
                    "extend-lost",
                    f"{len(answered)} extends of {hold_id} answered 200 (the last saying extensions="
                    f"{answered[-1].extensions}), Postgres counts {hold.extensions}",
                    tuple(entry.describe() for entry in entries),
                )
            )
        for entry in answered:
            if entry.expires_at is None:
                violations.append(
                    Violation(
                        "extend-lost",
                        f"extend of {hold_id} answered 200 without an expires_at",
                        (entry.describe(),),
                    )
                )
            elif hold.expires_at < entry.expires_at and not _moved_since(entry, entries):
                violations.append(
                    Violation(
                        "extend-lost",
                        f"extend of {hold_id} answered expires_at {entry.expires_at.isoformat()}, "
                        f"Postgres has {hold.expires_at.isoformat()} ({hold.status})",
                        tuple(other.describe() for other in entries),
                    )
                )
    return violations


def _moved_since(entry: Operation, extends: Iterable[Operation]) -> bool:
    """Whether another extend of the hold may have moved its expiry earlier than `entry` answered, after
    `entry` took effect (at some instant between its invocation and its answer)."""
    assert entry.expires_at is not None
    for other in extends:
        if other is entry:
            continue
        if other.outcome == "completed" and other.status == 200:
            # Answered: it took effect before its answer, and at the expiry it answered (a later one's loss
            # is that one's violation).
            assert other.completed_at is not None
            if other.completed_at > entry.invoked_at and (
                other.expires_at is None or other.expires_at < entry.expires_at
            ):
                return True
        elif other.outcome != "completed" or (other.status or 0) >= 500:
            # Not known to have failed, nor when: a request the client gave up on may still run later.
            return True
    return False


# A hold's events in the feed, by its final status after `hold.created` and its `hold.extended`: none while
# it is held, else the event of its status (hold.confirmed, hold.cancelled, hold.expired).
_FINAL_EVENTS: dict[str, tuple[str, ...]] = {
    status: () if status == LIVE_HOLD_STATUS else (f"hold.{status}",) for status in HOLD_STATUSES
}


def _expected_events(hold: HoldRecord) -> tuple[str, ...]:
    """The types of a hold's events in the numbered feed, in order, as its row in Postgres tells its life."""
    final = _FINAL_EVENTS.get(hold.status, ("?",))
    if hold.status == "cancelled" and hold.confirmed:
        final = ("hold.confirmed", *final)
    return ("hold.created", *(["hold.extended"] * hold.extensions), *final)


def _event_feed(snapshot: Snapshot) -> list[Violation]:
    if not snapshot.settled:
        lapsed = [hold for hold in snapshot.holds if hold.lapsed]
        return [
            Violation(
                "event-feed",
                f"not settled when read: {len(lapsed)} lapsed holds not yet marked expired, "
                f"{snapshot.unnumbered_events} events not yet numbered (the feed is not judged)",
                tuple(f"hold {h.id} held, remaining_ms={h.remaining_ms}" for h in lapsed[:10]),
            )
        ]
    feed: dict[str, list[EventRecord]] = defaultdict(list)
    for event in sorted(snapshot.events, key=lambda event: event.id):
        feed[event.hold_id].append(event)
    holds = {hold.id: hold for hold in snapshot.holds}
    violations = [
        Violation(
            "event-feed",
            f"{len(events)} events of hold {hold_id}, which Postgres does not have",
            tuple(f"#{event.id} {event.type}" for event in events),
        )
        for hold_id, events in sorted(feed.items())
        if hold_id not in holds
    ]
    for hold in sorted(snapshot.holds, key=lambda hold: hold.id):
        events = feed.get(hold.id, [])
        expected = _expected_events(hold)
        if tuple(event.type for event in events) != expected:
            state = (
                f"{hold.status}{' (confirmed first)' if hold.confirmed else ''}, extensions={hold.extensions}"
            )
            violations.append(
                Violation(
                    "event-feed",
                    f"hold {hold.id} is {state}: expected {' '.join(expected)}",
                    tuple(f"#{event.id} {event.type}" for event in events) or ("(no event)",),
                )
            )
    return violations
