"""The thundering herd: every user takes one shot at the same slot of the same event, all at one instant.

StormUser: exactly one 201, every other answer a 409 slot-unavailable naming the slot, nothing else;
afterwards the slot is held by the winner's hold, and the event has that one hold and no other.
DegradedStormUser: the same while Redis is down; it first asks /ready for "db-only" and refuses to storm a
gateway that Redis still fronts.

Settings: STORM_EVENT_ID / DEGRADED_EVENT_ID (default: a new event per run), STORM_SLOT_ID / DEGRADED_SLOT_ID
(default "seat-1").
"""

import itertools
import logging
import os
import time
import uuid
from typing import ClassVar

from gevent.event import Event
from locust import FastHttpUser, constant, tag, task
from locust.env import Environment
from locust.exception import StopUser

from loadtests.scenarios.common import (
    SLOT_UNAVAILABLE,
    Answer,
    GatewayReads,
    GracefulUser,
    ReadFailed,
    Report,
    Scenario,
    end_run_early,
    event_id,
    send,
)

log = logging.getLogger("loadtests.storm")


class Storm(Scenario):
    title = "STORM"

    def __init__(self, user_class: type[FastHttpUser], variables: str, event_prefix: str) -> None:
        super().__init__(user_class)
        self.variables = variables  # STORM or DEGRADED: the prefix of this scenario's variables
        self.event_prefix = event_prefix
        self.holder_numbers = itertools.count(1)
        self.start_gun = Event()  # the barrier: set once every user has spawned and opened its connection
        self.reset()

    def reset(self) -> None:
        self.event_id = event_id(f"{self.variables}_EVENT_ID", self.event_prefix)
        self.slot_id = os.environ.get(f"{self.variables}_SLOT_ID", "").strip() or "seat-1"
        self.run_token = uuid.uuid4().hex[:12]  # in holder names: no same-holder 200 from an earlier run
        self.ready = 0  # users at the barrier
        self.shots: list[Answer] = []
        self.aborted = False  # the test stopped before the gun: nobody fires
        self.fired_at: float | None = None
        self.preflight: list[str] = []  # breaches found before the storm

    def headline(self) -> str:
        return f"event {self.event_id!r}  slot {self.slot_id!r}"

    def start(self, environment: Environment) -> None:
        self.reset()
        self.start_gun.clear()

    def spawned(self, environment: Environment) -> None:
        self.fire_when_all_ready()

    def stopping(self, environment: Environment) -> None:
        if not self.start_gun.is_set():
            self.aborted = True
            self.start_gun.set()  # release the users at the barrier without a shot

    def fire_when_all_ready(self) -> None:
        # Spawning completes before the users' warm-ups do, so wait for both.
        if self.users and self.ready >= self.users and not self.start_gun.is_set():
            self.fired_at = time.perf_counter()
            self.start_gun.set()

    def check_shot(self, answer: Answer) -> str | None:
        fields = answer.fields
        if answer.status == 201:
            if (
                fields.get("status") == "held"
                and isinstance(fields.get("id"), str)
                and fields.get("event_id") == self.event_id
                and fields.get("slots") == [self.slot_id]
            ):
                return None
            return "a 201 that is not a held hold on the contested slot"
        if answer.problem(409, SLOT_UNAVAILABLE):
            return (
                None
                if fields.get("conflicts") == [self.slot_id]
                else "a 409 whose conflicts are not the slot"
            )
        return "neither 201 nor 409 slot-unavailable"

    @property
    def winners(self) -> list[str]:
        return [shot.fields["id"] for shot in self.shots if shot.status == 201 and "id" in shot.fields]

    def judge(self, environment: Environment, reads: GatewayReads) -> Report:
        report = Report(breaches=list(self.preflight))
        turned_away = sum(1 for shot in self.shots if shot.problem(409, SLOT_UNAVAILABLE))
        report.lines.append(
            f"users (shots)            {self.users}   answered {len(self.shots)}   "
            f"won (201) {len(self.winners)}   turned away (409) {turned_away}"
        )
        if self.shots and self.fired_at is not None:
            # How long this one process took to get every shot out says how much of the storm was the client.
            sent_ms = (max(shot.sent_at for shot in self.shots) - self.fired_at) * 1000
            answered_ms = (max(shot.received_at for shot in self.shots) - self.fired_at) * 1000
            report.lines.append(
                f"after the start gun      last shot sent {sent_ms:.0f} ms, last answer {answered_ms:.0f} ms"
            )
        if self.users == 0:
            report.breaches.append("no user was spawned: the start gun never fired")
        elif self.aborted:
            report.breaches.append("the test stopped before every user was at the barrier: nobody fired")
        if len(self.shots) < self.users:
            report.breaches.append(
                f"{self.users - len(self.shots)} of {self.users} shots unanswered when the test stopped "
                "(raise --run-time or --stop-timeout)"
            )
        if len(self.winners) != 1:
            report.breaches.append(f"expected exactly one 201, got {len(self.winners)}")
        winner = self.winners[0] if len(self.winners) == 1 else None
        report.lines.append(f"winning hold             {', '.join(self.winners) or '-'}")
        report.breaches.extend(self._read_back(reads, winner, report))
        report.passed = (
            f"one winner of {self.users}, every other shot turned away, the slot held by the winner's hold"
        )
        return report

    def _read_back(self, reads: GatewayReads, winner: str | None, report: Report) -> list[str]:
        """The gateway's own account: the slot is held by the winner's hold, and the event has no other."""
        breaches = []
        slot = reads.seat(self.event_id, self.slot_id)
        report.lines.append(f"GET slot                 {slot.get('state')} by hold {slot.get('hold_id')}")
        if winner is not None and (slot.get("state") != "held" or slot.get("hold_id") != winner):
            breaches.append(
                f"the slot is {slot.get('state')!r} by hold {slot.get('hold_id')!r}, not the winner's"
            )
        holds = [hold for hold, _ in reads.event_holds(self.event_id)]
        listed = sorted(f"{hold.get('id')} ({hold.get('status')})" for hold in holds)
        report.lines.append(f"holds of the event       {', '.join(listed) or '-'}")
        if winner is not None and [(h.get("id"), h.get("status")) for h in holds] != [(winner, "held")]:
            breaches.append(f"the event's holds are {listed}, expected only the winner's, held")
        return breaches


class DegradedStorm(Storm):
    title = "DEGRADED STORM"

    def reset(self) -> None:
        super().reset()
        self.mode_at_start: str | None = None

    def headline(self) -> str:
        return f"{super().headline()}  (Redis down: Postgres alone)"

    def start(self, environment: Environment) -> None:
        super().start(environment)
        problem = self._not_db_only(GatewayReads(environment.host), "before the storm")
        if problem is not None:
            log.error("%s", problem)
            self.preflight.append(problem)
            self.aborted = True
            self.start_gun.set()
            end_run_early(environment)

    def judge(self, environment: Environment, reads: GatewayReads) -> Report:
        if self.aborted and self.preflight:
            return Report(breaches=list(self.preflight))  # there was no storm
        report = super().judge(environment, reads)
        report.lines.insert(0, f"gateway mode             db-only ({self.mode_at_start})")
        problem = self._not_db_only(reads, "after the storm")
        if problem is not None:
            report.breaches.append(problem)
        report.passed = f"with Redis down: {report.passed}"
        return report

    def _not_db_only(self, reads: GatewayReads, when: str) -> str | None:
        try:
            ready = reads.ready()
        except ReadFailed as exc:
            return f"could not ask the gateway's mode {when}: {exc}"
        if ready.get("mode") == "db-only":
            self.mode_at_start = self.mode_at_start or str(ready.get("mode_reason"))
            return None
        return (
            f"GET /ready says mode {ready.get('mode')!r} {when}, not 'db-only': this scenario storms a "
            "gateway whose Redis is down. Start the gateway with GATEWAY_REDIS_URL pointing at a port where "
            "nothing listens (e.g. redis://127.0.0.1:1/0), or stop its Redis, then run it again"
        )


class _StormShooter(GracefulUser):
    """Opens its connection, waits for the start gun, sends one POST /v1/holds for the contested slot."""

    abstract = True
    scenario: ClassVar[Storm]
    wait_time = constant(0)  # it stops after its one shot

    def on_start(self) -> None:
        self.holder = f"storm-{self.scenario.run_token}-{next(self.scenario.holder_numbers)}"
        # Open the keep-alive connection now, so after the gun only the POST itself goes out.
        send(
            self,
            self.scenario.tally,
            "GET",
            "/health",
            name="GET /health [warm-up]",
            check=lambda answer: None if answer.status == 200 else "expected 200",
        )

    def shoot(self) -> None:
        storm = self.scenario
        storm.ready += 1
        storm.fire_when_all_ready()
        storm.start_gun.wait()
        if storm.aborted:
            raise StopUser
        body = {"event_id": storm.event_id, "slots": [storm.slot_id], "holder": self.holder}
        answer = send(
            self,
            storm.tally,
            "POST",
            "/v1/holds",
            name="POST /v1/holds [storm]",
            body=body,
            check=storm.check_shot,
        )
        storm.shots.append(answer)
        if len(storm.shots) >= storm.users:
            end_run_early(self.environment)
        raise StopUser


class StormUser(_StormShooter):
    """Many holders, one slot, one instant: exactly one wins."""

    @tag("storm")
    @task
    def take_the_slot(self) -> None:
        self.shoot()


class DegradedStormUser(_StormShooter):
    """StormUser against a gateway whose Redis is down (GET /ready must say db-only)."""

    @tag("degraded")
    @task
    def take_the_slot(self) -> None:
        self.shoot()


# Each user class and its scenario refer to each other: bound here, once both exist.
StormUser.scenario = Storm(StormUser, "STORM", "storm")
DegradedStormUser.scenario = DegradedStorm(DegradedStormUser, "DEGRADED", "degraded")
