"""Load scenarios for the reservation gateway. See loadtests/README.md.

StormUser, the thundering herd: every user takes one shot at the same slot of the same event, all at the same
moment. Exactly one must win (201), every other must be turned away (409 slot-unavailable), nothing else may
come back, and afterwards the slot must be held by the winner's hold. Any breach makes locust exit with 1.

    locust -f loadtests/locustfile.py --headless -u 200 -r 200 -t 30s --host http://127.0.0.1:8000

Settings (environment): STORM_EVENT_ID (default: a new event per run), STORM_SLOT_ID (default "seat-1").
The storm is decided in one process: not for --master/--worker runs.
"""

import itertools
import logging
import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import gevent
import requests
from gevent.event import Event
from locust import HttpUser, constant, events, task
from locust.env import Environment
from locust.runners import LocalRunner

log = logging.getLogger("storm")

RUN_ID = uuid.uuid4().hex[:12]
EVENT_ID = os.environ.get("STORM_EVENT_ID") or f"storm-{RUN_ID}"
SLOT_ID = os.environ.get("STORM_SLOT_ID") or "seat-1"
SLOT_UNAVAILABLE = "/slot-unavailable"  # how the type URI of the expected 409 problem ends

WON, TURNED_AWAY, OTHER = "won (201)", "turned away (409)", "other"


@dataclass
class Storm:
    """One run's shots and what came back. Reset when a test starts."""

    shooters: int = 0  # users spawned, so shots expected; known once spawning completes
    ready: int = 0  # users at the barrier, connection open
    outcomes: Counter[str] = field(default_factory=Counter)  # WON / TURNED_AWAY / OTHER
    statuses: Counter[int] = field(default_factory=Counter)  # HTTP status; 0 = no response
    winners: list[str] = field(default_factory=list)  # hold ids of the 201s
    oddities: list[str] = field(default_factory=list)  # one line per OTHER answer

    @property
    def answered(self) -> int:
        return self.outcomes.total()


storm = Storm()
start_gun = Event()  # the barrier: set once every user has spawned and is ready
holder_numbers = itertools.count(1)


class StormUser(HttpUser):
    """Opens its connection, waits for the start gun, sends one POST /v1/holds for the contested slot."""

    # After its one shot a user only waits, and a waiting user stops at once, whatever --stop-timeout says.
    wait_time = constant(60)

    def on_start(self) -> None:
        self.fired = False
        self.holder = f"storm-{RUN_ID}-{next(holder_numbers)}"  # unique: no same-holder 200 on a rerun
        # Open the keep-alive connection now, so after the gun only the POST itself goes out.
        self.client.get("/health", name="GET /health [warm-up]")

    @task
    def take_the_slot(self) -> None:
        if self.fired:
            return
        self.fired = True
        storm.ready += 1
        _fire_when_all_ready()
        start_gun.wait()
        body = {"event_id": EVENT_ID, "slots": [SLOT_ID], "holder": self.holder}
        with self.client.post(
            "/v1/holds", json=body, name="POST /v1/holds [storm]", catch_response=True
        ) as response:
            outcome, detail = classify(response.status_code, _json_or_none(response), _gist(response))
            storm.outcomes[outcome] += 1
            storm.statuses[response.status_code] += 1
            if outcome == WON:
                storm.winners.append(detail)
            if outcome == OTHER:
                storm.oddities.append(detail)
                response.failure(detail)
            else:
                response.success()  # a 409 is the expected answer for all but one
        if storm.answered >= storm.shooters:
            _end_run_early(self.environment)


def classify(status: int, body: Any, gist: str) -> tuple[str, str]:
    """(outcome, detail): the hold id for WON, a one-line description for OTHER."""
    body = body if isinstance(body, dict) else {}
    if status == 201 and body.get("status") == "held" and isinstance(body.get("id"), str):
        return WON, body["id"]
    if (
        status == 409
        and str(body.get("type", "")).endswith(SLOT_UNAVAILABLE)
        and SLOT_ID in body.get("conflicts", [])
    ):
        return TURNED_AWAY, ""
    return OTHER, f"{status or 'no response'}: {gist}"


def _gist(response: Any) -> str:
    """The start of the body, or the client's error when there was no response."""
    text = response.text if response.status_code else repr(response.error)
    return " ".join((text or "(empty body)").split())[:160]


def _json_or_none(response: Any) -> Any:
    if not response.status_code:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _end_run_early(environment: Environment) -> None:
    """Every shot is answered: a headless run need not wait out --run-time (the web UI keeps running)."""
    options = environment.parsed_options
    if environment.runner is not None and options is not None and options.headless:
        gevent.spawn(environment.runner.quit)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    global storm  # noqa: PLW0603 - one storm per test run
    storm = Storm()
    start_gun.clear()
    log.info("storm on event %r, slot %r (run %s)", EVENT_ID, SLOT_ID, RUN_ID)


@events.spawning_complete.add_listener
def _on_spawning_complete(user_count: int, **_: Any) -> None:
    storm.shooters = user_count
    _fire_when_all_ready()


def _fire_when_all_ready() -> None:
    # Spawning completes before the users' warm-ups do, so wait for both.
    if storm.shooters and storm.ready >= storm.shooters:
        start_gun.set()


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    breaches = verdict(environment)
    print_summary(breaches)
    if breaches:
        environment.process_exit_code = 1


def verdict(environment: Environment) -> list[str]:
    """What went wrong, if anything: an empty list is a pass."""
    if not isinstance(environment.runner, LocalRunner):
        return ["the storm is counted in one process: run it without --master/--worker"]
    breaches = []
    if storm.shooters == 0:
        breaches.append("no user was spawned: the start gun never fired")
    if storm.answered < storm.shooters:
        breaches.append(
            f"{storm.shooters - storm.answered} of {storm.shooters} shots unanswered when the test stopped "
            "(raise --run-time or --stop-timeout)"
        )
    if storm.outcomes[WON] != 1:
        breaches.append(f"expected exactly one 201, got {storm.outcomes[WON]}")
    if storm.outcomes[OTHER]:
        breaches.append(f"{storm.outcomes[OTHER]} answers neither 201 nor 409 slot-unavailable")
    breaches.extend(_slot_breaches(environment.host))
    return breaches


def _slot_breaches(host: str | None) -> list[str]:
    """Ask the gateway who holds the slot now: it must be the one winner's hold."""
    url = f"{(host or '').rstrip('/')}/v1/events/{EVENT_ID}/slots/{SLOT_ID}"
    try:
        response = requests.get(url, timeout=5)
        slot = response.json() if response.status_code == 200 else None
    except (requests.RequestException, ValueError) as exc:
        return [f"GET {url} failed: {exc}"]
    if slot is None:
        return [f"GET {url}: {response.status_code} {response.text[:160]}"]
    winner = storm.winners[0] if len(storm.winners) == 1 else None
    if slot.get("state") != "held" or winner is None or slot.get("hold_id") != winner:
        return [f"slot is {slot.get('state')!r} by hold {slot.get('hold_id')!r}, winner was {winner!r}"]
    return []


def print_summary(breaches: list[str]) -> None:
    rule = "=" * 72
    lines = [rule, f"STORM  event {EVENT_ID!r}  slot {SLOT_ID!r}  run {RUN_ID}", rule]
    lines.append(f"users (shots expected)  {storm.shooters}")
    lines.append(f"answered                {storm.answered}")
    lines.extend(f"  {outcome:<21} {storm.outcomes[outcome]}" for outcome in (WON, TURNED_AWAY, OTHER))
    statuses = ", ".join(f"{status or 'none'}: {count}" for status, count in sorted(storm.statuses.items()))
    lines.append(f"by HTTP status          {statuses or '-'}")
    lines.append(f"winning hold            {', '.join(storm.winners) or '-'}")
    lines.extend(f"  other: {oddity}" for oddity in storm.oddities[:5])
    if len(storm.oddities) > 5:
        lines.append(f"  ... and {len(storm.oddities) - 5} more")
    lines.append(rule)
    if breaches:
        lines.append("VERDICT  FAIL")
        lines.extend(f"  - {breach}" for breach in breaches)
    else:
        lines.append("VERDICT  PASS: one winner, every other shot turned away, the slot held by the winner")
    lines.append(rule)
    print("\n".join(lines), flush=True)
