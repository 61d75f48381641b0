"""Confirm against expiry: holds confirmed at the very instant they expire, while a rival grabs the slot.

Each round takes a fresh slot with a hold of EDGE_TTL_S (the gateway's minimum by default). From the
answer's `ttl_ms` and the moment it arrived, the user works out when the hold expires on its own clock, then
sends the confirm at that instant + δ (δ uniform in ±EDGE_SPREAD_MS) while a rival holder asks for the slot
at the instant + |δ'| (just after expiry). Rounds run until EDGE_HOLDS holds have been tried.

Checked when the test stops: every hold ends confirmed or expired, never both: a 200 confirm reads back
confirmed, a 409 invalid-transition (current_status expired) reads back expired; no confirm succeeded after
the hold had surely expired, and none was refused before it could have; the rival never got the slot of a
confirmed hold, nor of a surely live one; the slot reads confirmed by the hold, held by the rival's hold, or
free, as the answers say; and the event's holds are exactly the holds and rival holds created.

Settings: EDGE_EVENT_ID (default: a new event per run), EDGE_HOLDS (200), EDGE_TTL_S (5), EDGE_SPREAD_MS (50),
EDGE_RIVAL_TTL_S (600: the rival's holds outlive the run).
"""

import itertools
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import gevent
from locust import FastHttpUser, constant, tag, task
from locust.env import Environment
from locust.exception import StopUser

from loadtests.scenarios.common import (
    INVALID_TRANSITION,
    SLOT_UNAVAILABLE,
    Answer,
    Check,
    ExpiryWindow,
    GatewayReads,
    GracefulUser,
    Report,
    Scenario,
    env_float,
    env_int,
    event_id,
    send,
)

HOLDS = env_int("EDGE_HOLDS", 200)
TTL_S = env_int("EDGE_TTL_S", 5)
SPREAD_S = env_float("EDGE_SPREAD_MS", 50) / 1000
RIVAL_TTL_S = env_int("EDGE_RIVAL_TTL_S", 600)
# Offsets of the confirm from the expected expiry, for the summary's table: (upper bound ms, label).
BUCKETS = (
    (-20.0, "< -20 ms"),
    (-5.0, "-20..-5 ms"),
    (5.0, "-5..+5 ms"),
    (20.0, "+5..+20 ms"),
    (1e9, "> +20 ms"),
)


@dataclass
class Round:
    """One hold, its confirm at the edge of expiry, and the rival's try for its slot."""

    slot: str
    hold_id: str
    window: ExpiryWindow
    expected_at: float  # when the hold should expire, per its answer (time.perf_counter(), s)
    confirm: Answer
    rival: Answer

    @property
    def confirmed(self) -> bool:
        return self.confirm.status == 200

    @property
    def rival_won(self) -> bool:
        return self.rival.status == 201

    @property
    def offset_ms(self) -> float:
        """When the confirm went out, relative to the expected expiry."""
        return (self.confirm.sent_at - self.expected_at) * 1000


class ConfirmVsExpiry(Scenario):
    title = "CONFIRM VS EXPIRY"

    def __init__(self, user_class: type[FastHttpUser]) -> None:
        super().__init__(user_class)
        self.reset()

    def reset(self) -> None:
        self.event_id = event_id("EDGE_EVENT_ID", "edge")
        self.run_token = uuid.uuid4().hex[:12]
        self.numbers = itertools.count()
        self.rounds: list[Round] = []
        self.failed_creates = 0
        self.finished = 0

    def headline(self) -> str:
        spread_ms = SPREAD_S * 1000
        return f"event {self.event_id!r}  {HOLDS} holds  ttl {TTL_S} s  confirm at expiry ±{spread_ms:g} ms"

    def start(self, environment: Environment) -> None:
        self.reset()

    def check_create(self, slot: str, holder: str) -> Check:
        def check(answer: Answer) -> str | None:
            fields = answer.fields
            if (
                answer.status == 201
                and fields.get("status") == "held"
                and fields.get("slots") == [slot]
                and fields.get("holder") == holder
                and isinstance(fields.get("ttl_ms"), int)
            ):
                return None
            return "a fresh slot must be held at once: expected 201, held, with ttl_ms"

        return check

    def check_confirm(self, answer: Answer) -> str | None:
        if answer.status == 200 and answer.fields.get("status") == "confirmed":
            return None
        if answer.problem(409, INVALID_TRANSITION) and answer.fields.get("current_status") == "expired":
            return None
        return "expected 200 confirmed, or 409 invalid-transition with current_status expired"

    def check_rival(self, slot: str) -> Check:
        def check(answer: Answer) -> str | None:
            if answer.status == 201 and answer.fields.get("status") == "held":
                return None
            if answer.problem(409, SLOT_UNAVAILABLE) and answer.fields.get("conflicts") == [slot]:
                return None
            return "expected 201 held or 409 slot-unavailable naming the slot"

        return check

    def judge(self, environment: Environment, reads: GatewayReads) -> Report:
        report = Report()
        outcomes: Counter[tuple[str, str]] = Counter()
        table: dict[str, Counter[str]] = {label: Counter() for _, label in BUCKETS}
        late_refusals: list[float] = []  # ms after sure expiry at which the rival was still turned away
        for r in self.rounds:
            outcomes[
                "confirmed" if r.confirmed else "expired", "rival won" if r.rival_won else "rival lost"
            ] += 1
            label = next(label for bound, label in BUCKETS if r.offset_ms < bound)
            table[label]["confirmed" if r.confirmed else "expired"] += 1
            report.breaches += self._round_breaches(r)
            if not r.confirmed and not r.rival_won and r.window.surely_expired(r.rival.sent_at):
                late_refusals.append((r.rival.sent_at - r.window.latest) * 1000)
        report.lines.append(
            f"rounds                   {len(self.rounds)} (+{self.failed_creates} creates refused)   "
            + ", ".join(f"{a} & {b}: {n}" for (a, b), n in sorted(outcomes.items()))
        )
        report.lines.append(
            "  confirm sent vs expiry   "
            + "   ".join(f"{label}: {c['confirmed']}/{c['expired']}" for label, c in table.items())
            + "   (confirmed/expired)"
        )
        if late_refusals:
            report.lines.append(
                f"  note: {len(late_refusals)} rivals were turned away although the hold had surely expired "
                f"and was not confirmed (up to {max(late_refusals):.1f} ms after); a later try would win"
            )
        if self.failed_creates:
            report.breaches.append(f"{self.failed_creates} holds on fresh slots were not granted")
        if len(self.rounds) + self.failed_creates < HOLDS:
            report.breaches.append(
                f"only {len(self.rounds) + self.failed_creates} of {HOLDS} rounds ran (raise --run-time)"
            )
        report.breaches += self._read_back(reads)
        report.passed = (
            f"{len(self.rounds)} holds each ended confirmed or expired, never both; no rival took a "
            "confirmed or live hold's slot"
        )
        return report

    def _round_breaches(self, r: Round) -> list[str]:
        found = []
        if r.confirmed and r.rival_won:
            found.append(f"{r.slot}: the confirm of {r.hold_id} succeeded AND the rival got the slot")
        if r.confirmed and r.window.surely_expired(r.confirm.sent_at):
            found.append(
                f"{r.slot}: confirmed {r.offset_ms:+.1f} ms after the expected expiry, surely expired"
            )
        if r.confirm.status == 409 and r.window.surely_live(r.confirm.received_at):
            found.append(f"{r.slot}: the confirm was refused as expired before the hold could have expired")
        if r.rival_won and r.window.surely_live(r.rival.received_at):
            found.append(f"{r.slot}: the rival got the slot while hold {r.hold_id} was surely live")
        return found

    def _read_back(self, reads: GatewayReads) -> list[str]:
        breaches = []
        rivals = {r.rival.fields["id"]: r for r in self.rounds if r.rival_won and "id" in r.rival.fields}
        holds = reads.holds([r.hold_id for r in self.rounds] + list(rivals))
        # The seat map (an operations route): the public slot route never shows hold ids.
        seat_map = {slot["slot_id"]: slot for slot, _ in reads.event_slots(self.event_id)}
        for r in self.rounds:
            status = holds[r.hold_id].body.get("status")
            expected = "confirmed" if r.confirmed else "expired"
            if status != expected:
                breaches.append(f"{r.slot}: hold {r.hold_id} reads {status!r}; its confirm said {expected}")
            slot = seat_map.get(r.slot, {"state": "free", "hold_id": None})
            if r.confirmed:
                want = ("confirmed", r.hold_id)
            elif r.rival_won:
                want = ("held", r.rival.fields.get("id"))
            else:
                want = ("free", None)
            if (slot.get("state"), slot.get("hold_id")) != want:
                breaches.append(
                    f"{r.slot}: reads {slot.get('state')} by {slot.get('hold_id')}, expected {want}"
                )
        for rival_id in rivals:
            if holds[rival_id].body.get("status") != "held":
                breaches.append(
                    f"rival hold {rival_id} reads {holds[rival_id].body.get('status')!r}, not held"
                )
        listed = {hold.get("id") for hold, _ in reads.event_holds(self.event_id)}
        created = {r.hold_id for r in self.rounds} | set(rivals)
        if listed != created:
            breaches.append(
                f"the event's holds differ from those created: {len(listed - created)} unknown "
                f"{sorted(str(i) for i in listed - created)[:3]}, {len(created - listed)} missing"
            )
        return breaches


class ConfirmVsExpiryUser(GracefulUser):
    """Plays rounds: hold a fresh slot, confirm it at the instant it expires while a rival asks for it."""

    scenario: ClassVar[ConfirmVsExpiry]
    wait_time = constant(0)
    concurrency = 2  # the confirm and the rival's request are in flight together
    # Its connections would idle for a hold's lifetime between requests (see KEEP_ALIVE_GUARD_S); and the
    # rival is another client anyway.
    connection_per_request = True

    def on_start(self) -> None:
        # Spread the users' rounds over one lifetime: creates that all go out at once would queue, and the
        # longer a create takes, the less exactly its answer tells when the hold expires.
        gevent.sleep(random.uniform(0, TTL_S))

    @tag("edge")
    @task
    def play_round(self) -> None:
        edge = self.scenario
        number = next(edge.numbers)
        if number >= HOLDS:
            edge.finished += 1
            edge.user_finished(self.environment, edge.finished)
            raise StopUser
        slot = f"slot-{number:05d}"
        holder, rival = f"edge-{edge.run_token}-{number}", f"edge-{edge.run_token}-{number}-rival"
        body = {"event_id": edge.event_id, "slots": [slot], "holder": holder, "ttl_seconds": TTL_S}
        created = send(
            self,
            edge.tally,
            "POST",
            "/v1/holds",
            name="POST /v1/holds",
            body=body,
            check=edge.check_create(slot, holder),
        )
        if created.status != 201 or not isinstance(created.fields.get("ttl_ms"), int):
            edge.failed_creates += 1
            return
        # ttl_ms was measured when Postgres stamped the hold, somewhere while the request was in flight.
        expected_at = (created.sent_at + created.received_at) / 2 + created.fields["ttl_ms"] / 1000
        confirm_at = expected_at + random.uniform(-SPREAD_S, SPREAD_S)
        rival_at = expected_at + random.uniform(0, SPREAD_S)
        confirm = gevent.spawn(
            self.post_at,
            confirm_at,
            f"/v1/holds/{created.fields['id']}/confirm",
            name="POST /v1/holds/{id}/confirm [at expiry]",
            body={"holder": holder},
            check=edge.check_confirm,
        )
        rival_body = {"event_id": edge.event_id, "slots": [slot], "holder": rival, "ttl_seconds": RIVAL_TTL_S}
        grab = gevent.spawn(
            self.post_at,
            rival_at,
            "/v1/holds",
            name="POST /v1/holds [rival after expiry]",
            body=rival_body,
            check=edge.check_rival(slot),
        )
        gevent.joinall([confirm, grab], raise_error=True)
        edge.rounds.append(
            Round(
                slot,
                created.fields["id"],
                ExpiryWindow.of(created, TTL_S),
                expected_at,
                confirm.value,
                grab.value,
            )
        )

    def post_at(self, when: float, path: str, *, name: str, body: object, check: Check) -> Answer:
        """POST at `when` (time.perf_counter(), s)."""
        gevent.sleep(max(0.0, when - time.perf_counter()))
        return send(self, self.scenario.tally, "POST", path, name=name, body=body, check=check)


ConfirmVsExpiryUser.scenario = ConfirmVsExpiry(ConfirmVsExpiryUser)
