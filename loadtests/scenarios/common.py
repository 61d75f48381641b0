"""What the scenarios share: settings from the environment, one wrapper that sends a request and records its
answer, the gateway's read API for the verdicts, expiry windows, and the one-screen summary with its verdict.

Each scenario is a `Scenario`: reset when a test starts, judged when it stops. Judging compares the answers
the users saw with what the gateway's read API says afterwards; a breach sets locust's exit code to 1.
"""

import json
import logging
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import gevent
import gevent.pool
import requests
from gevent import GreenletExit
from locust import FastHttpUser, events
from locust.env import Environment
from locust.runners import LocalRunner
from locust.user.users import LOCUST_STATE_STOPPING, LOCUST_STATE_WAITING
from requests.adapters import HTTPAdapter

log = logging.getLogger("loadtests")

PROBLEM_JSON = "application/problem+json"
SLOT_UNAVAILABLE = "/slot-unavailable"  # how the type URI of a contended create's 409 ends
INVALID_TRANSITION = "/invalid-transition"  # ... and of a confirm or cancel the hold's status forbids
# A hold is "surely" live or expired only this far outside the window its creation bounds: the local clock
# and Postgres's may tick at slightly different rates (NTP slews them by up to 0.5 ms a second).
CLOCK_SLACK_S = 0.005
CLOCK_DRIFT = 0.0005  # s/s
SLOTS_PAGE_LIMIT = 5000  # the most GET /v1/events/{e}/slots gives in one page
HOLDS_PAGE_LIMIT = 1000  # ... and GET /v1/holds
READ_CONCURRENCY = 16  # parallel reads while judging
READ_TIMEOUT_S = 10.0
SUMMARY_RULE = "=" * 78
MAX_LISTED = 8  # breaches and odd answers shown in a summary; the rest are counted
# Users are stopped after their current action (see GracefulUser); this bounds the wait when the user of
# locust gave no --stop-timeout.
DEFAULT_STOP_TIMEOUT_S = 30.0
# Servers close keep-alive connections that idle a few seconds (uvicorn, under `gateway serve`: 5 s), and a
# request sent just as that happens gets no answer at all. A user that pauses longer than this between
# requests asks for a connection per request instead (and so does a second connection that would idle).
KEEP_ALIVE_GUARD_S = 2.0
CLOSE_CONNECTION = {"Connection": "close"}


# --- settings ---------------------------------------------------------------------------------------------


class SettingError(ValueError):
    """A scenario variable in the environment has a value the scenario cannot use."""


def env_int(name: str, default: int, *, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r}: expected a whole number") from None
    if value < minimum:
        raise SettingError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0, maximum: float = math.inf) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r}: expected a number") from None
    if not minimum <= value <= maximum:
        raise SettingError(f"{name}={raw!r}: must be between {minimum} and {maximum}")
    return value


def event_id(variable: str, prefix: str) -> str:
    """The event a run uses: the variable's value, else a new one for every run, so runs never collide."""
    return os.environ.get(variable, "").strip() or f"{prefix}-{uuid.uuid4().hex[:12]}"


def ops_headers() -> dict[str, str]:
    """The holds listing is an operations route: it needs the token when the gateway has one."""
    token = os.environ.get("GATEWAY_OPS_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def client_headers() -> dict[str, str]:
    """Once any client key exists, the hold routes need one: LOADTEST_CLIENT_KEY, when set."""
    key = os.environ.get("LOADTEST_CLIENT_KEY", "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


# --- answers ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back for one request, with when it was sent and answered (time.perf_counter(), s)."""

    name: str  # the request's label in the statistics
    status: int  # HTTP status; 0 when no response came back
    body: Any  # the decoded JSON body, or None
    headers: dict[str, str]  # names lower-cased
    sent_at: float
    received_at: float
    gist: str  # the start of the body, or the client's error

    @property
    def latency_ms(self) -> float:
        return (self.received_at - self.sent_at) * 1000

    @property
    def fields(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}

    def problem(self, status: int, type_suffix: str) -> bool:
        """A problem+json answer with this status whose type URI ends with `type_suffix`."""
        return (
            self.status == status
            and self.headers.get("content-type", "").startswith(PROBLEM_JSON)
            and str(self.fields.get("type", "")).endswith(type_suffix)
            and self.fields.get("status") == status
        )


Check = Callable[[Answer], str | None]  # None: the answer is one the scenario expects; else why not


@dataclass
class Tally:
    """Every answer a scenario's users got: counts by HTTP status, latencies by request, the odd ones."""

    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)  # the first few, for the summary
    unexpected_count: int = 0
    interrupted: Counter[str] = field(default_factory=Counter)  # by method: requests cut off by a stop
    first_sent_at: float | None = None
    last_received_at: float | None = None

    def add(self, answer: Answer, complaint: str | None) -> None:
        self.statuses[answer.status] += 1
        self.latencies_ms.setdefault(answer.name, []).append(answer.latency_ms)
        if self.first_sent_at is None or answer.sent_at < self.first_sent_at:
            self.first_sent_at = answer.sent_at
        if self.last_received_at is None or answer.received_at > self.last_received_at:
            self.last_received_at = answer.received_at
        if complaint is not None:
            self.note_unexpected(f"{answer.name}: {complaint}")

    def note_unexpected(self, line: str) -> None:
        self.unexpected_count += 1
        if len(self.unexpected) < MAX_LISTED:
            self.unexpected.append(line)

    @property
    def answered(self) -> int:
        return self.statuses.total()

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    @property
    def duration_s(self) -> float:
        if self.first_sent_at is None or self.last_received_at is None:
            return 0.0
        return self.last_received_at - self.first_sent_at

    def breaches(self) -> list[str]:
        """What the answers alone say went wrong."""
        found = []
        if self.statuses[0]:
            found.append(f"{self.statuses[0]} requests got no response (connection errors or timeouts)")
        if self.server_errors:
            found.append(f"{self.server_errors} answers were 5xx")
        if self.unexpected_count:
            found.append(f"{self.unexpected_count} answers were not what the scenario allows (see above)")
        writes = self.interrupted.total() - self.interrupted["GET"]
        if writes:
            found.append(
                f"{writes} requests that change holds were cut off in flight when the test stopped, so "
                "their outcome is unknown (raise --stop-timeout)"
            )
        return found


class GracefulUser(FastHttpUser):
    """A user that a graceful stop (--stop-timeout) never cuts off in the middle of an action.

    Locust kills a user that is waiting between tasks at once. But a user whose wait has just ended may
    already be sending its next request when the kill lands, and then nobody knows what that request did. So
    a waiting user is only marked as stopping: it stops when its wait ends, before its next task.
    """

    abstract = True
    connection_per_request = False  # see KEEP_ALIVE_GUARD_S

    def stop(self, force: bool = False) -> bool:
        if not force and self._state == LOCUST_STATE_WAITING:
            self._state = LOCUST_STATE_STOPPING
            return False
        return bool(super().stop(force))


def send(
    user: FastHttpUser,
    tally: Tally,
    method: str,
    path: str,
    *,
    name: str,
    check: Check,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """Send one request, judge its answer with `check` (plus: no 5xx, a response at all), record it.

    Expected answers, 409s included, are marked successes in locust's statistics; the rest are failures."""
    if getattr(user, "connection_per_request", False):
        headers = (headers or {}) | CLOSE_CONNECTION
    sent_at = time.perf_counter()
    try:
        with user.client.request(
            method, path, name=name, json=body, headers=headers, catch_response=True
        ) as response:
            answer = _answer(name, response, sent_at, time.perf_counter())
            complaint = _complaint(answer, check)
            if complaint is None:
                response.success()
            else:
                response.failure(complaint)
    except GreenletExit:
        tally.interrupted[method] += 1  # the user was killed mid-request; what the gateway did is unknown
        raise
    tally.add(answer, complaint)
    return answer


def _answer(name: str, response: Any, sent_at: float, received_at: float) -> Answer:
    status = response.status_code or 0
    content = response.content if status else None
    body = None
    if content:
        try:
            body = json.loads(content)
        except ValueError:
            body = None
    if status:
        gist = " ".join((content or b"(empty body)").decode("utf-8", "replace").split())[:160]
        headers = {str(k).lower(): str(v) for k, v in (response.headers or {}).items()}
    else:
        gist, headers = repr(getattr(response, "error", None))[:160], {}
    return Answer(name, status, body, headers, sent_at, received_at, gist)


def _complaint(answer: Answer, check: Check) -> str | None:
    if answer.status == 0:
        return f"no response: {answer.gist}"
    if answer.status >= 500:
        return f"{answer.status} {answer.gist}"
    complaint = check(answer)
    return None if complaint is None else f"{complaint} (got {answer.status} {answer.gist})"


# --- expiry windows ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpiryWindow:
    """When a hold expires, on this process's clock. The gateway stamps created_at (Postgres's now()) while
    the create request is in flight, and expires_at = created_at + ttl, so expiry lies between the request's
    send time + ttl and its answer's arrival + ttl."""

    earliest: float
    latest: float

    @classmethod
    def of(cls, created: Answer, ttl_s: float) -> "ExpiryWindow":
        return cls.between(created.sent_at, created.received_at, ttl_s)

    @classmethod
    def between(cls, sent_at: float, received_at: float, ttl_s: float) -> "ExpiryWindow":
        """The window of a hold created by a request sent and answered at these times, plus slack."""
        slack_s = CLOCK_SLACK_S + CLOCK_DRIFT * ttl_s
        return cls(sent_at + ttl_s - slack_s, received_at + ttl_s + slack_s)

    def surely_live(self, answered_at: float) -> bool:
        """The gateway handled a request answered at `answered_at` before the hold could have expired."""
        return answered_at < self.earliest

    def surely_expired(self, sent_at: float) -> bool:
        """The gateway handled a request sent at `sent_at` after the hold had expired."""
        return sent_at > self.latest


# --- the gateway's read API, for the verdicts -------------------------------------------------------------


class ReadFailed(Exception):
    """A read the verdict needs did not answer as documented."""


@dataclass(frozen=True, slots=True)
class Read:
    """One read of the verdict: its answer and when it was sent and answered (time.perf_counter(), s)."""

    status: int
    body: Any
    sent_at: float
    received_at: float


class GatewayReads:
    """The read API, asked after the run (these requests are not part of the scenario's numbers)."""

    def __init__(self, host: str | None) -> None:
        self.base = (host or "").rstrip("/")
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_maxsize=READ_CONCURRENCY)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def get(self, path: str, *, ops: bool = False, timeout_s: float = READ_TIMEOUT_S) -> Read:
        url = self.base + path
        sent_at = time.perf_counter()
        try:
            response = self.session.get(url, headers=ops_headers() if ops else None, timeout=timeout_s)
        except requests.RequestException as exc:
            raise ReadFailed(f"GET {path}: {exc}") from exc
        received_at = time.perf_counter()
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 401 and ops:
            raise ReadFailed(
                f"GET {path}: 401: the holds listing needs the gateway's operations token: "
                "set GATEWAY_OPS_TOKEN"
            )
        if response.status_code != 200 or not isinstance(body, dict):
            raise ReadFailed(f"GET {path}: {response.status_code} {' '.join(response.text.split())[:160]}")
        return Read(response.status_code, body, sent_at, received_at)

    def ready(self) -> dict[str, Any]:
        """/ready's body; it answers 503 (still with a body) while Postgres is down."""
        try:
            response = self.session.get(self.base + "/ready", timeout=READ_TIMEOUT_S)
            body = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise ReadFailed(f"GET /ready: {exc}") from exc
        if not isinstance(body, dict):
            raise ReadFailed(f"GET /ready: {response.status_code} {response.text[:160]}")
        return body

    def seat(self, event: str, slot: str) -> dict[str, Any]:
        """One slot as the seat map shows it (with its hold's id); free if the map does not list it."""
        for listed, _ in self.event_slots(event):
            if listed.get("slot_id") == slot:
                return listed
        return {"slot_id": slot, "state": "free", "hold_id": None}

    def hold(self, hold_id: str) -> Read:
        return self.get(f"/v1/holds/{quote(hold_id)}")

    def event_slots(self, event: str) -> list[tuple[dict[str, Any], Read]]:
        """Every slot of the event that has or had a hold, with its hold's id, each with the read (page) it
        came from: the seat map, an operations route."""
        return list(
            self._pages(f"/v1/events/{quote(event)}/slots", {"limit": SLOTS_PAGE_LIMIT}, "slots", ops=True)
        )

    def event_holds(self, event: str) -> list[tuple[dict[str, Any], Read]]:
        """Every hold of the event, from the operations listing, each with the read (page) it came from."""
        return list(
            self._pages("/v1/holds", {"event_id": event, "limit": HOLDS_PAGE_LIMIT}, "holds", ops=True)
        )

    def holder_holds(self, holder: str) -> list[dict[str, Any]]:
        """Every hold of one holder, whatever its events (a hold on several events has no event_id, so the
        event filter cannot be what finds it), from the operations listing."""
        return [
            hold
            for hold, _ in self._pages(
                "/v1/holds", {"holder": holder, "limit": HOLDS_PAGE_LIMIT}, "holds", ops=True
            )
        ]

    def holders_holds(self, holders: Iterable[str]) -> list[dict[str, Any]]:
        """holder_holds for each holder, a few at a time."""
        pages = gevent.pool.Pool(READ_CONCURRENCY).map(self.holder_holds, list(holders))
        return [hold for holds in pages for hold in holds]

    def holds(self, hold_ids: Iterable[str]) -> dict[str, Read]:
        """GET /v1/holds/{id} for each id, a few at a time."""
        return self._each(self.hold, hold_ids)

    @staticmethod
    def _each(read: Callable[[str], Read], keys: Iterable[str]) -> dict[str, Read]:
        keys = list(keys)
        return dict(zip(keys, gevent.pool.Pool(READ_CONCURRENCY).map(read, keys), strict=True))

    def _pages(
        self, path: str, query: dict[str, Any], key: str, *, ops: bool
    ) -> Iterator[tuple[dict[str, Any], Read]]:
        cursor = None
        while True:
            page_query = query if cursor is None else {**query, "cursor": cursor}
            read = self.get(f"{path}?{urlencode(page_query)}", ops=ops)
            items = read.body.get(key)
            if not isinstance(items, list):
                raise ReadFailed(f"GET {path}: no `{key}` list in {str(read.body)[:160]}")
            for item in items:
                yield item, read
            cursor = read.body.get("next_cursor")
            if not cursor:
                return


# --- the hold event feed, followed as a consumer would ---------------------------------------------------

FEED_WAIT_S = 5  # each long poll of GET /v1/hold-events waits up to this for an event
FEED_PAGE_LIMIT = 1000


class FeedFollower:
    """Follows GET /v1/hold-events from the feed's head when it starts, in a greenlet, as a consumer of the
    feed would, keeping the events of one event id (multi-event holds included) by hold."""

    def __init__(self, host: str | None, event: str) -> None:
        self.reads = GatewayReads(host)
        self.event = event
        self.events: dict[str, list[dict[str, Any]]] = {}  # hold id -> its events, in feed order
        self.failure: str | None = None
        start = self.reads.get("/v1/hold-events?after=latest", ops=True)
        self.cursor = str(start.body["next_cursor"])
        self.greenlet = gevent.spawn(self._follow)

    def _follow(self) -> None:
        while True:
            query = urlencode({"after": self.cursor, "limit": FEED_PAGE_LIMIT, "wait_seconds": FEED_WAIT_S})
            try:
                page = self.reads.get(
                    f"/v1/hold-events?{query}", ops=True, timeout_s=READ_TIMEOUT_S + FEED_WAIT_S
                )
            except ReadFailed as exc:
                self.failure = str(exc)
                return
            for event in page.body["events"]:
                hold = event["hold"]
                if hold["event_id"] == self.event or any(i["event_id"] == self.event for i in hold["items"]):
                    self.events.setdefault(hold["id"], []).append(event)
            self.cursor = str(page.body["next_cursor"])

    def types(self, hold_id: str) -> list[str]:
        return [event["type"] for event in self.events.get(hold_id, [])]

    def wait_for(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Until `done()` holds (the sweeper's hold.expired may lag its hold's expiry by a sweep), at most
        `timeout_s`; whether it does."""
        deadline = time.monotonic() + timeout_s
        while not done() and self.failure is None and time.monotonic() < deadline:
            gevent.sleep(0.1)
        return done()

    def stop(self) -> None:
        self.greenlet.kill()


# --- scenarios, summaries, verdicts -----------------------------------------------------------------------


@dataclass
class Report:
    """What a scenario found: its own summary lines, its breaches, and the line a pass prints."""

    lines: list[str] = field(default_factory=list)
    breaches: list[str] = field(default_factory=list)
    passed: str = "the gateway kept its promise"


class Scenario:
    """One scenario: `start` resets it when a test starts, `judge` checks the outcome when the test stops.

    It acts only when its user class is among the classes locust runs, so several can live in one locustfile.
    """

    title: ClassVar[str]  # first word of the summary
    user_class: type[FastHttpUser]

    def __init__(self, user_class: type[FastHttpUser]) -> None:
        self.user_class = user_class
        self.tally = Tally()
        self.users = 0  # spawned, known once spawning completes
        self.environment: Environment | None = None  # while a test of this scenario runs
        events.test_start.add_listener(self._on_test_start)
        events.spawning_complete.add_listener(self._on_spawning_complete)
        events.test_stopping.add_listener(self._on_test_stopping)
        events.test_stop.add_listener(self._on_test_stop)

    def selected(self, environment: Environment) -> bool:
        return self.user_class in environment.user_classes

    def start(self, environment: Environment) -> None:
        """Reset for a new test: a fresh event, empty counts."""

    def spawned(self, environment: Environment) -> None:
        """Every user has been spawned (self.users says how many)."""

    def stopping(self, environment: Environment) -> None:
        """The test is about to stop its users."""

    def judge(self, environment: Environment, reads: GatewayReads) -> Report:
        raise NotImplementedError

    def headline(self) -> str:
        return ""

    def _on_test_start(self, environment: Environment, **_: Any) -> None:
        self.environment = environment if self.selected(environment) else None
        if self.environment is not None:
            if not environment.stop_timeout:
                # Without it locust kills users mid-request, and the verdict cannot know what those did.
                environment.stop_timeout = DEFAULT_STOP_TIMEOUT_S
            self.tally = Tally()
            self.users = 0
            self.start(environment)
            log.info("%s %s", self.title, self.headline())

    def _on_spawning_complete(self, user_count: int, **_: Any) -> None:
        if self.environment is not None:
            self.users = user_count
            self.spawned(self.environment)

    def _on_test_stopping(self, environment: Environment, **_: Any) -> None:
        if self.selected(environment):
            self.stopping(environment)

    def _on_test_stop(self, environment: Environment, **_: Any) -> None:
        if not self.selected(environment):
            return
        if not isinstance(environment.runner, LocalRunner):
            # A worker sees only its share of the answers; the verdict needs all of them.
            report = Report(
                breaches=["this scenario is judged in one process: run it without --master/--worker"]
            )
        else:
            try:
                report = self.judge(environment, GatewayReads(environment.host))
            except ReadFailed as exc:
                report = Report(breaches=[f"could not read the gateway to check the outcome: {exc}"])
            except Exception as exc:
                # A checker that crashes must not look like a pass, nor leave the run without a verdict.
                log.exception("the verdict of %s crashed", self.title)
                report = Report(breaches=[f"the verdict crashed: {exc!r}"])
        report.breaches[:0] = self.tally.breaches()
        print_summary(self.title, self.headline(), self.tally, report)
        if report.breaches:
            environment.process_exit_code = 1

    def user_finished(self, environment: Environment, finished: int) -> None:
        """A user is done; once all are, a headless run need not wait out --run-time."""
        if self.users and finished >= self.users:
            end_run_early(environment)


def end_run_early(environment: Environment) -> None:
    """The scenario is over: stop a headless run now (the web UI keeps running until its stop button)."""
    options = environment.parsed_options
    if environment.runner is not None and options is not None and options.headless:
        gevent.spawn(environment.runner.quit)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `share` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def print_summary(title: str, headline: str, tally: Tally, report: Report) -> None:
    statuses = ", ".join(f"{status or 'none'}: {n}" for status, n in sorted(tally.statuses.items()))
    lines = [SUMMARY_RULE, f"{title}  {headline}".rstrip(), SUMMARY_RULE]
    lines.append(
        f"answers by HTTP status   {statuses or '-'}   ({tally.answered} in {tally.duration_s:.1f} s)"
    )
    lines.append(f"  {'latency ms':<40} {'n':>7} {'p50':>8} {'p95':>8} {'p99':>8}")
    for name, values in sorted(tally.latencies_ms.items()):
        p50, p95, p99 = (percentile(values, share) for share in (0.50, 0.95, 0.99))
        lines.append(f"  {name[:40]:<40} {len(values):>7} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f}")
    lines.extend(report.lines)
    lines.extend(f"  odd: {line}" for line in tally.unexpected)
    if tally.unexpected_count > len(tally.unexpected):
        lines.append(f"  ... and {tally.unexpected_count - len(tally.unexpected)} more odd answers")
    lines.append(SUMMARY_RULE)
    if report.breaches:
        lines.append(f"VERDICT  FAIL  ({len(report.breaches)} breaches)")
        lines.extend(f"  - {breach}" for breach in report.breaches[:MAX_LISTED])
        if len(report.breaches) > MAX_LISTED:
            lines.append(f"  - ... and {len(report.breaches) - MAX_LISTED} more")
    else:
        lines.append(f"VERDICT  PASS  {report.passed}")
    lines.append(SUMMARY_RULE)
    print("\n".join(lines), flush=True)
