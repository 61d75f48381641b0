"""Hold / confirm / cancel mix: the steady traffic of a live sale, at a target rate.

Each task is one action, picked by weight: create a hold on 1 to 3 random slots out of MIX_SLOTS (4),
confirm one of the user's held holds (2), extend one (1; a buyer asking for more time to pay), cancel one of
its held or confirmed holds (1), read the state of a slot (2); holds nobody confirms or cancels expire
(ttl_seconds MIX_TTL_S, the gateway's minimum by default). A consumer follows the hold event feed
(GET /v1/hold-events, long polls) all along.
A share of the creates (MIX_KEYED_SHARE) carries an Idempotency-Key and a deliberate duplicate: half re-sent
as the user's next action (a retry after a lost answer), half sent twice at once. Users pace themselves with
constant_throughput so that together they send about MIX_RPS requests a second.

Checked as it runs: every answer is one the API allows for what the user knows (a confirm of a hold that had
surely expired must not succeed, nor be called expired before its time; a slot of a confirmed hold reads
confirmed with its id; ...); a keyed duplicate replays the same hold. Checked when the test stops, with
GET /v1/holds/{id} for every hold: each is in the state its last successful transition implies (held past
its expires_at reads expired); the event's seat map agrees (a confirmed hold's slots are confirmed with its
id, a cancelled or expired hold owns none); the event's holds (the operations listing) are exactly those
created; and the feed has, for every hold, one hold.created, one hold.extended per extension its read shows,
and exactly one final event of the type of the state it ended in (none while it is held), and no event of a
hold no answer named.

Settings: MIX_EVENT_ID (default: a new event per run), MIX_RPS (100, all users together), MIX_SLOTS (1000),
MIX_TTL_S (5), MIX_KEYED_SHARE (0.3).
"""

import itertools
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import gevent
from locust import FastHttpUser, constant_throughput, tag, task
from locust.env import Environment

from loadtests.scenarios.common import (
    CLOSE_CONNECTION,
    INVALID_TRANSITION,
    KEEP_ALIVE_GUARD_S,
    SLOT_UNAVAILABLE,
    Answer,
    Check,
    ExpiryWindow,
    FeedFollower,
    GatewayReads,
    GracefulUser,
    Read,
    ReadFailed,
    Report,
    Scenario,
    env_float,
    env_int,
    event_id,
    send,
)

RPS = env_float("MIX_RPS", 100, minimum=0.1)
SLOTS = env_int("MIX_SLOTS", 1000)
TTL_S = env_int("MIX_TTL_S", 5)
KEYED_SHARE = env_float("MIX_KEYED_SHARE", 0.3, maximum=1)
ACTIONS = ("create", "confirm", "extend", "cancel", "read")
WEIGHTS = (4, 2, 1, 1, 2)
MAX_SLOTS_PER_CREATE = 3
RECENT_HOLDS = 3  # a user confirms or cancels one of its latest holds
ENDED = ("confirmed", "cancelled", "expired")
LIFETIME_EXCEEDED = "/lifetime-exceeded"  # how the type URI of an extension past the hold's lifetime ends
# The final events a hold read in each status may have, in feed order (a hold read held may expire as the
# verdict waits for the feed).
FINAL_EVENTS: dict[str, tuple[list[str], ...]] = {
    "held": ([], ["hold.expired"]),
    "confirmed": (["hold.confirmed"],),
    "cancelled": (["hold.cancelled"], ["hold.confirmed", "hold.cancelled"]),
    "expired": (["hold.expired"],),
}
# After the run, how long the verdict waits for the feed to show every ended hold's final event (an expired
# hold's comes with the sweeper's next pass).
FEED_CATCH_UP_S = 20.0


@dataclass
class MixHold:
    """A hold a user created, and what its last successful transition implies."""

    id: str
    slots: frozenset[str]
    window: ExpiryWindow
    last: str = "held"  # held (nothing since the create), confirmed, cancelled, or expired (a 409 said so)
    extensions: int = 0  # extensions answered 200

    def allowed(self, sent_at: float, received_at: float) -> set[str]:
        """The statuses a read sent and answered at these times may show."""
        if self.last != "held":
            return {self.last}
        if self.window.surely_expired(sent_at):
            return {"expired"}
        if self.window.surely_live(received_at):
            return {"held"}
        return {"held", "expired"}


class Mix(Scenario):
    title = "HOLD MIX"

    def __init__(self, user_class: type[FastHttpUser]) -> None:
        super().__init__(user_class)
        self.pool = [f"m-{i:05d}" for i in range(1, SLOTS + 1)]
        self.holder_numbers = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        self.event_id = event_id("MIX_EVENT_ID", "mix")
        self.run_token = uuid.uuid4().hex[:12]
        self.holds: dict[str, MixHold] = {}
        self.actions: Counter[str] = Counter()  # "create 201", "confirm 409", ...
        self.duplicates: Counter[str] = Counter()  # "sequential" / "concurrent" pairs sent
        self.breaches: list[str] = []  # found while running
        self.feed: FeedFollower | None = None

    def headline(self) -> str:
        return f"event {self.event_id!r}  {RPS:g} req/s target  {SLOTS} slots  ttl {TTL_S} s"

    def start(self, environment: Environment) -> None:
        self.reset()
        try:
            self.feed = FeedFollower(environment.host, self.event_id)
        except ReadFailed as exc:
            self.breach(f"could not start following the hold event feed: {exc}")

    def breach(self, line: str) -> None:
        self.breaches.append(line)

    def learn(self, answer: Answer, window: ExpiryWindow) -> None:
        """Remember the hold a 2xx create answered with (once, however many answers name it)."""
        hold_id = answer.fields.get("id")
        if answer.status in (200, 201) and isinstance(hold_id, str) and hold_id not in self.holds:
            self.holds[hold_id] = MixHold(hold_id, frozenset(answer.fields.get("slots") or []), window)

    # --- what each answer may be ---------------------------------------------------------------------------

    def create_check(self, slots: list[str], holder: str) -> Check:
        def check(answer: Answer) -> str | None:
            fields = answer.fields
            same_slots = sorted(fields.get("slots") or []) == sorted(slots)
            if answer.status in (200, 201):
                if not (fields.get("holder") == holder and same_slots and isinstance(fields.get("id"), str)):
                    return "a 2xx that is not this holder's hold on exactly the requested slots"
                replayed = answer.headers.get("idempotent-replayed") == "true"
                if answer.status == 201 and not replayed and fields.get("status") != "held":
                    return "a new hold that is not held"
                if answer.status == 200 and not replayed and fields.get("id") not in self.holds:
                    return "a 200 that is neither a replay nor a hold this holder already has"
                return None
            if answer.problem(409, SLOT_UNAVAILABLE):
                conflicts = fields.get("conflicts")
                if isinstance(conflicts, list) and conflicts and set(conflicts) <= set(slots):
                    return None
                return "a 409 whose conflicts are not some of the requested slots"
            return "expected 201, 200 or 409 slot-unavailable"

        return check

    def transition_check(self, hold: MixHold, action: str) -> Check:
        target = "confirmed" if action == "confirm" else "cancelled"

        def check(answer: Answer) -> str | None:
            fields = answer.fields
            if answer.status == 200:
                if fields.get("id") != hold.id or fields.get("status") != target:
                    return f"a 200 that is not the hold, {target}"
                if hold.last == "held" and hold.window.surely_expired(answer.sent_at):
                    return f"{action} succeeded on a hold that had surely expired"
                return None
            if answer.problem(409, INVALID_TRANSITION):
                current = fields.get("current_status")
                if current == "expired" and hold.last == "held":
                    if hold.window.surely_live(answer.received_at):
                        return "the hold was called expired before its expires_at could have passed"
                    return None
                return f"a 409 saying {current!r} for a hold last known {hold.last}"
            return "expected 200 or 409 invalid-transition"

        return check

    def extend_check(self, hold: MixHold) -> Check:
        def check(answer: Answer) -> str | None:
            fields = answer.fields
            if answer.status == 200:
                if fields.get("id") != hold.id or fields.get("status") != "held":
                    return "a 200 that is not the hold, held"
                if fields.get("extensions") != hold.extensions + 1:
                    return f"a 200 with extensions {fields.get('extensions')!r} after {hold.extensions}"
                if hold.window.surely_expired(answer.sent_at):
                    return "extend succeeded on a hold that had surely expired"
                return None
            if answer.problem(409, INVALID_TRANSITION):
                current = fields.get("current_status")
                if current == "expired" and hold.window.surely_live(answer.received_at):
                    return "the hold was called expired before its expires_at could have passed"
                if current not in ("expired", hold.last):
                    return f"a 409 saying {current!r} for a hold last known {hold.last}"
                return None
            if answer.problem(409, LIFETIME_EXCEEDED):
                return f"a {TTL_S} s extension refused as past the hold's lifetime"
            return "expected 200 or 409 invalid-transition"

        return check

    def slot_check(self, slot: str, hold: MixHold | None) -> Check:
        """The public slot route: a state and times only (never a hold id or holder), and the state the
        last hold on the slot must have while it surely lives."""

        def check(answer: Answer) -> str | None:
            fields = answer.fields
            state = fields.get("state")
            if answer.status != 200 or fields.get("slot_id") != slot:
                return "expected 200, the slot"
            if "hold_id" in fields or "holder" in fields:
                return "the public slot route showed a hold id or a holder"
            if state not in ("free", "held", "confirmed"):
                return "a slot state other than free, held or confirmed"
            if hold is None:
                return None
            allowed = hold.allowed(answer.sent_at, answer.received_at)
            if allowed == {"confirmed"} and state != "confirmed":
                return f"the slot of confirmed hold {hold.id} reads {state}"
            if allowed == {"held"} and state != "held":
                return f"the slot of live hold {hold.id} reads {state}"
            return None

        return check

    def check_duplicates(self, first: Answer, again: Answer, *, concurrent: bool) -> None:
        """One Idempotency-Key, one hold: the pair's 2xx answers all name the same hold."""
        kind = "concurrent" if concurrent else "sequential"
        self.duplicates[kind] += 1
        won = [answer for answer in (first, again) if answer.status in (200, 201)]
        if concurrent:
            if len(won) == 1:
                # Not a breach: a slot can change hands between the two (a rival's hold expires or is
                # cancelled), so one may lose and the other win. Still one hold between them.
                self.duplicates["concurrent, one 409"] += 1
            elif len(won) == 2 and first.fields.get("id") != again.fields.get("id"):
                self.breach(
                    f"concurrent duplicates got holds {first.fields.get('id')}, {again.fields.get('id')}"
                )
        # A key is recorded only with a hold it created: a retry of a 201 replays it; a retry of a 200 (the
        # holder's existing hold) finds that hold again.
        elif first.status in (200, 201) and (
            again.status != first.status
            or again.fields.get("id") != first.fields.get("id")
            or (first.status == 201 and again.headers.get("idempotent-replayed") != "true")
        ):
            self.breach(
                f"a keyed retry of hold {first.fields.get('id')} ({first.status}) got {again.status} "
                f"{again.fields.get('id')} (replayed: {again.headers.get('idempotent-replayed')})"
            )

    # --- the verdict ---------------------------------------------------------------------------------------

    def judge(self, environment: Environment, reads: GatewayReads) -> Report:
        report = Report(breaches=list(self.breaches))
        elapsed = self.tally.duration_s
        rate = f"{self.tally.answered / elapsed:.0f}" if elapsed else "-"
        by_action = "   ".join(f"{action} {self._answers_to(action)}" for action in ACTIONS)
        report.lines += [
            f"rate                     {rate} req/s over {elapsed:.0f} s (target {RPS:g})",
            f"actions                  {by_action}",
            f"keyed duplicates         sequential {self.duplicates['sequential']}, "
            f"concurrent {self.duplicates['concurrent']} (of which answered 2xx and 409: "
            f"{self.duplicates['concurrent, one 409']})",
        ]
        slots = reads.event_slots(self.event_id)
        hold_reads = reads.holds(self.holds)
        listing = reads.event_holds(self.event_id)
        report.breaches += self._hold_breaches(hold_reads, report)
        report.breaches += self._seat_map_breaches(slots)
        report.breaches += self._listing_breaches(listing)
        report.breaches += self._feed_breaches(hold_reads, report)
        report.passed = (
            f"{len(self.holds)} holds each in the state its last transition implies, keyed duplicates "
            "replayed one hold, the seat map agrees, the event feed has each change once"
        )
        return report

    def _feed_breaches(self, hold_reads: dict[str, Read], report: Report) -> list[str]:
        """Every hold has its hold.created, its extensions and, once ended, exactly one final event of the
        type of its end; the feed names no other hold of the event."""
        feed = self.feed
        if feed is None:
            return []  # already a breach: the follower never started
        final_event = {status: f"hold.{status}" for status in ENDED}
        ended = {
            hold_id: final_event[read.body["status"]]
            for hold_id, read in hold_reads.items()
            if read.body.get("status") in final_event
        }
        feed.wait_for(
            lambda: all(event in feed.types(hold_id) for hold_id, event in ended.items()), FEED_CATCH_UP_S
        )
        feed.stop()
        breaches = [f"the hold event feed failed: {feed.failure}"] if feed.failure else []
        seen: Counter[str] = Counter()
        for hold_id, read in hold_reads.items():
            types = feed.types(hold_id)
            seen.update(types)
            extensions = read.body.get("extensions")
            finals = [t for t in types if t in final_event.values()]
            status = read.body.get("status")
            if types.count("hold.created") != 1 or types[:1] != ["hold.created"]:
                breaches.append(f"hold {hold_id}'s events do not start with one hold.created: {types}")
            elif types.count("hold.extended") != extensions:
                breaches.append(f"hold {hold_id} shows {extensions} extensions, the feed {types}")
            elif finals not in FINAL_EVENTS.get(str(status), ([],)):
                breaches.append(f"hold {hold_id} is {status}, but its events are {types}")
        phantoms = sorted(set(feed.events) - set(self.holds))
        if phantoms:
            breaches.append(f"the feed has events of {len(phantoms)} holds no answer named: {phantoms[:5]}")
        report.lines.append(
            "event feed               "
            + ", ".join(f"{t.removeprefix('hold.')} {seen[t]}" for t in sorted(seen, key=_feed_order))
        )
        return breaches

    def _answers_to(self, action: str) -> str:
        """`201: 80, 409: 12` for one action."""
        counts = sorted((key.split()[1], n) for key, n in self.actions.items() if key.split()[0] == action)
        return ", ".join(f"{status}: {n}" for status, n in counts) or "-"

    def _hold_breaches(self, hold_reads: dict[str, Read], report: Report) -> list[str]:
        breaches = []
        final: Counter[str] = Counter()
        for hold_id, read in hold_reads.items():
            hold, body = self.holds[hold_id], read.body
            status = body.get("status")
            final[str(status)] += 1
            allowed = hold.allowed(read.sent_at, read.received_at)
            if status not in allowed:
                breaches.append(
                    f"hold {hold_id} reads {status!r}; its last transition says {_either(allowed)}"
                )
            elif status == "held" and not (isinstance(body.get("ttl_ms"), int) and body["ttl_ms"] > 0):
                breaches.append(f"hold {hold_id} reads held with ttl_ms {body.get('ttl_ms')!r}")
        report.lines.append(
            f"holds created            {len(self.holds)}: now "
            + ", ".join(f"{status} {final[status]}" for status in ("held", *ENDED))
        )
        return breaches

    def _seat_map_breaches(self, slots: list[tuple[dict[str, Any], Read]]) -> list[str]:
        breaches = []
        for slot, read in slots:
            slot_id, state, hold_id = slot.get("slot_id"), slot.get("state"), slot.get("hold_id")
            if hold_id is None:
                continue
            hold = self.holds.get(hold_id)
            if hold is None:
                breaches.append(f"slot {slot_id} is {state} by hold {hold_id}, which no answer ever named")
                continue
            allowed = hold.allowed(read.sent_at, read.received_at)
            if slot_id not in hold.slots or state not in allowed:
                breaches.append(f"slot {slot_id} shows hold {hold_id} {state}, but it is {_either(allowed)}")
        by_slot = {slot.get("slot_id"): (slot, read) for slot, read in slots}
        reads = [read for _, read in slots]
        for hold in self.holds.values():
            for slot_id in sorted(hold.slots):
                slot, read = by_slot.get(slot_id, ({}, None))
                if read is None:
                    # The seat map lists live slots only: a slot it leaves out reads free, which a hold
                    # surely live through the whole read of the map cannot be.
                    if reads:
                        allowed = hold.allowed(reads[0].sent_at, reads[-1].received_at)
                        if allowed <= {"held", "confirmed"}:
                            breaches.append(
                                f"slot {slot_id} of live hold {hold.id} is missing from the seat map"
                            )
                    continue
                allowed = hold.allowed(read.sent_at, read.received_at)
                if len(allowed) == 1 and allowed <= {"held", "confirmed"} and slot.get("hold_id") != hold.id:
                    breaches.append(
                        f"slot {slot_id} of {allowed.pop()} hold {hold.id} shows {slot.get('state')} by "
                        f"{slot.get('hold_id')}"
                    )
        return breaches

    def _listing_breaches(self, listing: list[tuple[dict[str, Any], Read]]) -> list[str]:
        breaches = []
        listed = {hold.get("id") for hold, _ in listing}
        phantoms = sorted(str(hold_id) for hold_id in listed - set(self.holds))
        if phantoms:
            breaches.append(f"the event has {len(phantoms)} holds no answer ever named: {phantoms[:5]}")
        missing = sorted(set(self.holds) - listed)
        if missing:
            breaches.append(f"{len(missing)} holds created are missing from the event's holds: {missing[:5]}")
        for listed_hold, read in listing:
            hold = self.holds.get(listed_hold.get("id"))
            if hold is None:
                continue
            allowed = hold.allowed(read.sent_at, read.received_at)
            if listed_hold.get("status") not in allowed:
                breaches.append(
                    f"hold {hold.id} is listed {listed_hold.get('status')}, but it is {_either(allowed)}"
                )
        return breaches


def _feed_order(event_type: str) -> int:
    return ("hold.created", "hold.extended", "hold.confirmed", "hold.cancelled", "hold.expired").index(
        event_type
    )


def _either(statuses: set[str]) -> str:
    return " or ".join(sorted(statuses))


class HoldMixUser(GracefulUser):
    """One holder of a live sale: creates, confirms, cancels, reads, and forgets some holds to expiry."""

    scenario: ClassVar[Mix]
    concurrency = 2  # a keyed create and its duplicate may be in flight at once

    def on_start(self) -> None:
        mix = self.scenario
        runner = self.environment.runner
        users = max(1, runner.target_user_count if runner is not None else 1)
        self.pace = constant_throughput(RPS / users)
        self.connection_per_request = users / RPS >= KEEP_ALIVE_GUARD_S
        self.holder = f"mix-{mix.run_token}-{next(mix.holder_numbers)}"
        self.keys = itertools.count(1)
        self.mine: list[MixHold] = []
        self.pending_retry: tuple[dict[str, Any], dict[str, str], Answer] | None = None

    def wait_time(self) -> float:
        return self.pace(self)

    @tag("mix")
    @task
    def act(self) -> None:
        if self.pending_retry is not None:
            self.retry()
            return
        action = random.choices(ACTIONS, WEIGHTS)[0]
        # Like a person at a checkout it acts on its latest holds, and sometimes too late: a confirm or
        # cancel of a hold that has expired meanwhile must be refused as expired.
        recent = self.mine[-RECENT_HOLDS:]
        if action == "confirm":
            held = [hold for hold in recent if hold.last == "held"]
            if held:
                self.transition(random.choice(held), "confirm")
                return
        elif action == "cancel":
            live = [hold for hold in recent if hold.last in ("held", "confirmed")]
            if live:
                self.transition(random.choice(live), "cancel")
                return
        elif action == "extend":
            held = [hold for hold in recent if hold.last == "held"]
            if held:
                self.extend(random.choice(held))
                return
        elif action == "read":
            self.read_slot()
            return
        self.create()

    def create(self) -> None:
        mix = self.scenario
        slots = random.sample(mix.pool, random.randint(1, MAX_SLOTS_PER_CREATE))
        body = {"event_id": mix.event_id, "slots": slots, "holder": self.holder, "ttl_seconds": TTL_S}
        check = mix.create_check(slots, self.holder)
        if random.random() >= KEYED_SHARE:
            answer = self.post_hold(body, {}, check, "POST /v1/holds")
            self.learn(answer, ExpiryWindow.of(answer, TTL_S))
            return
        headers = {"Idempotency-Key": f"{self.holder}-{next(self.keys)}"}
        if random.random() < 0.5:
            answer = self.post_hold(body, headers, check, "POST /v1/holds [keyed]")
            self.learn(answer, ExpiryWindow.of(answer, TTL_S))
            self.pending_retry = (body, headers, answer)  # the next action re-sends it
            return
        # Two connections: the second would then idle until the next pair (see KEEP_ALIVE_GUARD_S).
        headers |= CLOSE_CONNECTION
        first, again = (
            gevent.spawn(self.post_hold, body, headers, check, "POST /v1/holds [keyed, twice at once]")
            for _ in range(2)
        )
        gevent.joinall([first, again], raise_error=True)
        pair = [first.value, again.value]
        window = ExpiryWindow.between(min(a.sent_at for a in pair), max(a.received_at for a in pair), TTL_S)
        for answer in pair:
            self.learn(answer, window)
        mix.check_duplicates(pair[0], pair[1], concurrent=True)

    def retry(self) -> None:
        assert self.pending_retry is not None
        body, headers, first = self.pending_retry
        self.pending_retry = None
        slots = list(body["slots"])
        again = self.post_hold(
            body, headers, self.scenario.create_check(slots, self.holder), "POST /v1/holds [retry]"
        )
        self.learn(again, ExpiryWindow.of(again, TTL_S))
        self.scenario.check_duplicates(first, again, concurrent=False)

    def post_hold(self, body: dict[str, Any], headers: dict[str, str], check: Check, name: str) -> Answer:
        answer = send(
            self, self.scenario.tally, "POST", "/v1/holds", name=name, body=body, headers=headers, check=check
        )
        self.scenario.actions[f"create {answer.status}"] += 1
        return answer

    def learn(self, answer: Answer, window: ExpiryWindow) -> None:
        known = set(self.scenario.holds)
        self.scenario.learn(answer, window)
        hold_id = answer.fields.get("id")
        if hold_id not in known and hold_id in self.scenario.holds:
            self.mine.append(self.scenario.holds[hold_id])

    def transition(self, hold: MixHold, action: str) -> None:
        answer = send(
            self,
            self.scenario.tally,
            "POST",
            f"/v1/holds/{hold.id}/{action}",
            name=f"POST /v1/holds/{{id}}/{action}",
            body={"holder": self.holder},
            check=self.scenario.transition_check(hold, action),
        )
        self.scenario.actions[f"{action} {answer.status}"] += 1
        if answer.status == 200 and answer.fields.get("status") in ENDED:
            hold.last = answer.fields["status"]
        elif answer.status == 409 and answer.fields.get("current_status") in ENDED:
            hold.last = answer.fields["current_status"]

    def extend(self, hold: MixHold) -> None:
        """More time to pay: the hold's expiry moves to TTL_S from now."""
        answer = send(
            self,
            self.scenario.tally,
            "POST",
            f"/v1/holds/{hold.id}/extend",
            name="POST /v1/holds/{id}/extend",
            body={"holder": self.holder, "ttl_seconds": TTL_S},
            check=self.scenario.extend_check(hold),
        )
        self.scenario.actions[f"extend {answer.status}"] += 1
        if answer.status == 200 and answer.fields.get("extensions") == hold.extensions + 1:
            hold.extensions += 1
            hold.window = ExpiryWindow.of(answer, TTL_S)
        elif answer.status == 409 and answer.fields.get("current_status") in ENDED:
            hold.last = answer.fields["current_status"]

    def read_slot(self) -> None:
        mix = self.scenario
        hold = random.choice(self.mine) if self.mine and random.random() < 0.5 else None
        slot = random.choice(sorted(hold.slots)) if hold is not None else random.choice(mix.pool)
        answer = send(
            self,
            mix.tally,
            "GET",
            f"/v1/events/{mix.event_id}/slots/{slot}",
            name="GET /v1/events/{e}/slots/{s}",
            check=mix.slot_check(slot, hold),
        )
        mix.actions[f"read {answer.status}"] += 1


HoldMixUser.scenario = Mix(HoldMixUser)
