"""General-admission flash sale: two events, each with pools of units (no seats), sold out to many holders.

When the test starts, PUT /v1/events/{e}/inventory sets up both events with the pools of GA_POOLS (default
floor:300,balcony:200) and limits.per_holder = GA_PER_HOLDER (4). Each user is one holder: it reads the
events' availability, then takes one action at a time, with a think time between, until nothing is left
for it:

- a single ask (the rest): 1 to 4 units of one pool;
- a two-step ask (GA_TWO_STEP_SHARE): 2 units of a pool of an event it holds nothing of, then 2 or 3 more of
  that event; the second passes the limit of 4 when it asks 3, and must then be refused (409 holder-limit);
- a multi-event ask (GA_MULTI_SHARE): one item per event in one hold, all or nothing.

Each hold won is then confirmed (GA_CONFIRM_SHARE), cancelled (GA_CANCEL_SHARE: its units go back on sale, for
the users still shopping), or left held for GA_TTL_S (600: none lapses during the run). A 409 slot-unavailable
says how many units each pool it names has left, as Redis counts them (with the pending units of requests
in flight, which come back when Postgres refuses those): a user asks what it last saw left. A pool counts as
sold out once an availability read, sent a second or more after the last cancel was answered, says 0 (users
read it every few refusals). A user leaves when every pool is sold out, when it is at its limit in every
event that still has units, or after GA_GIVE_UP_AFTER refusals in a row.

Checked when the test stops, by the rules of ga_rules.py: every answer is one the API allows for what the
holder knows (never a 201 past the limit); the holds of the run's holders and of its events (operations
listing) are exactly the holds the 201s made, in the states their confirms and cancels left them; each pool
sold exactly its capacity (held + confirmed) and no more, per the holds and per the answers; no holder has
more than the limit of live units in an event; GET availability agrees with the holds (read again for up to
2.5 s: it may lag commits by 1 s).

Settings: GA_EVENT_ID (default: ga-<random>; the events are <it>-1 and <it>-2), GA_POOLS, GA_PER_HOLDER (4),
GA_TTL_S (600), GA_THINK_MS (200), GA_TWO_STEP_SHARE (0.3), GA_MULTI_SHARE (0.2), GA_CONFIRM_SHARE (0.4),
GA_CANCEL_SHARE (0.2), GA_GIVE_UP_AFTER (20). LOADTEST_CLIENT_KEY: the client key the hold routes need, if
any exists.
"""

import itertools
import logging
import math
import os
import random
import time
import uuid
from collections import Counter
from typing import Any, ClassVar
from urllib.parse import quote

import gevent
import requests
from locust import FastHttpUser, tag, task
from locust.env import Environment
from locust.exception import StopUser

from loadtests.scenarios.common import (
    KEEP_ALIVE_GUARD_S,
    READ_TIMEOUT_S,
    Answer,
    GatewayReads,
    GracefulUser,
    Report,
    Scenario,
    SettingError,
    client_headers,
    end_run_early,
    env_float,
    env_int,
    event_id,
    ops_headers,
    send,
)
from loadtests.scenarios.ga_rules import (
    HOLDER_LIMIT,
    LIVE,
    SLOT_UNAVAILABLE,
    Ask,
    PoolItem,
    PoolKey,
    Reply,
    Units,
    WonHold,
    availability_breaches,
    create_complaint,
    holder_limit_breaches,
    holder_units,
    ledger_breaches,
    oversold_breaches,
    pool_items,
    pool_units,
    unavailable_counts,
    unsold_breaches,
)

log = logging.getLogger("loadtests.ga_sale")


def _pools_setting(name: str, default: str) -> list[tuple[str, int]]:
    """`floor:300,balcony:200`: each pool of an event and its capacity."""
    raw = os.environ.get(name, "").strip() or default
    pools = []
    for part in raw.split(","):
        pool_id, _, capacity = part.strip().partition(":")
        if not pool_id or not capacity.isdigit() or int(capacity) < 1:
            raise SettingError(f"{name}={raw!r}: expected pool:capacity pairs, e.g. {default}")
        pools.append((pool_id, int(capacity)))
    if len({pool_id for pool_id, _ in pools}) != len(pools):
        raise SettingError(f"{name}={raw!r}: a pool is named twice")
    return pools


POOLS = _pools_setting("GA_POOLS", "floor:300,balcony:200")
PER_HOLDER = env_int("GA_PER_HOLDER", 4, minimum=2)  # a two-step ask starts with 2
TTL_S = env_int("GA_TTL_S", 600)
THINK_S = env_float("GA_THINK_MS", 200) / 1000
TWO_STEP_SHARE = env_float("GA_TWO_STEP_SHARE", 0.3, maximum=1)
MULTI_SHARE = env_float("GA_MULTI_SHARE", 0.2, maximum=1 - TWO_STEP_SHARE)
CONFIRM_SHARE = env_float("GA_CONFIRM_SHARE", 0.4, maximum=1)
CANCEL_SHARE = env_float("GA_CANCEL_SHARE", 0.2, maximum=1 - CONFIRM_SHARE)
GIVE_UP_AFTER = env_int("GA_GIVE_UP_AFTER", 20)
MAX_SINGLE_ASK = 4  # units of one pool in a single ask
MAX_MULTI_ASK = 2  # units of each event's pool in a multi-event ask
REREAD_EVERY = 3  # refusals in a row after which a user reads availability again
AVAILABILITY_LAG_S = 1.0  # how far availability may lag the holds (the gateway's contract)
AVAILABILITY_WAIT_S = 2.5  # availability may lag commits by up to 1 s (its cache)
AVAILABILITY_POLL_S = 0.25


def outcome(answer: Answer) -> str:
    """`201`, `409 holder-limit`, ...: how a create ended, for the counts."""
    reply = _reply(answer)
    for suffix in (HOLDER_LIMIT, SLOT_UNAVAILABLE):
        if reply.problem(409, suffix):
            return f"409 {suffix.lstrip('/')}"
    return str(answer.status)


def _reply(answer: Answer) -> Reply:
    return Reply(answer.status, answer.body, answer.headers.get("content-type", ""))


class GaSale(Scenario):
    title = "GA SALE"

    def __init__(self, user_class: type[FastHttpUser]) -> None:
        super().__init__(user_class)
        self.holder_numbers = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        base = event_id("GA_EVENT_ID", "ga")
        self.events = [f"{base}-1", f"{base}-2"]
        self.capacity: dict[PoolKey, int] = {(e, pool): cap for e in self.events for pool, cap in POOLS}
        self.run_token = uuid.uuid4().hex[:12]  # in holder names: no hold of an earlier run is this run's
        self.holders: set[str] = set()  # every holder that sent a create
        self.won: dict[str, WonHold] = {}
        self.outcomes: Counter[str] = Counter()  # "single 201", "two-step 409 holder-limit", ...
        self.over_limit: Counter[str] = Counter()  # outcomes of the asks that passed the limit
        self.preflight: list[str] = []
        self.aborted = False
        self.left: Counter[str] = Counter()
        self.last_sale_at: float | None = None
        # What says a pool is sold out: the availability read empty, sent AVAILABILITY_LAG_S or more after the
        # last cancel was answered. (Not a 409's count: Redis counts the pending units of requests in flight,
        # which come back when Postgres refuses them, at the holder's limit or in another event.)
        self.empty_seen_at: dict[PoolKey, float] = {}
        self.last_release_at = -math.inf
        self.cancels_in_flight = 0

    def headline(self) -> str:
        pools = ", ".join(f"{pool} {cap}" for pool, cap in POOLS)
        return f"events {', '.join(self.events)}  pools {pools} each  {PER_HOLDER} units per holder and event"

    def start(self, environment: Environment) -> None:
        self.reset()
        self.preflight = self.set_up(environment.host or "")
        if self.preflight:
            for problem in self.preflight:
                log.error("%s", problem)
            self.aborted = True
            end_run_early(environment)

    def set_up(self, host: str) -> list[str]:
        """PUT each event's inventory; what went wrong, if anything."""
        problems = []
        limits = {"per_holder": PER_HOLDER, "per_hold": PER_HOLDER}
        for event in self.events:
            path = f"/v1/events/{quote(event)}/inventory"
            pools = [{"pool_id": pool, "capacity": cap} for pool, cap in POOLS]
            try:
                response = requests.put(
                    host.rstrip("/") + path,
                    json={"pools": pools, "limits": limits},
                    headers=ops_headers(),
                    timeout=READ_TIMEOUT_S,
                )
            except requests.RequestException as exc:
                problems.append(f"could not set up the sale: PUT {path}: {exc}")
                continue
            try:
                body = response.json()
            except ValueError:
                body = None
            if response.status_code in (404, 405):
                problems.append(
                    f"PUT {path} answered {response.status_code}: this gateway has no inventory API (general "
                    "admission), which this scenario needs"
                )
            elif response.status_code != 200 or not isinstance(body, dict):
                problems.append(f"PUT {path}: {response.status_code} {' '.join(response.text.split())[:160]}")
            elif (
                sorted((p.get("pool_id"), p.get("capacity")) for p in body.get("pools") or ())
                != sorted(POOLS)
                or (body.get("limits") or {}).get("per_holder") != PER_HOLDER
            ):
                problems.append(f"PUT {path} answered {body}, not the pools and limits set")
        return problems

    # --- what the users learn -------------------------------------------------------------------------------

    def pool_open(self, key: PoolKey) -> bool:
        """Whether the pool may still have units: no availability read found it empty since the last
        cancel."""
        if self.cancels_in_flight:
            return True
        return self.empty_seen_at.get(key, -math.inf) <= self.last_release_at

    def learn(self, answer: Answer) -> None:
        if answer.status == 201:
            self.last_sale_at = answer.received_at

    def learn_availability(self, key: PoolKey, available: int, answer: Answer) -> None:
        """An availability read: empty, and sent late enough to see every cancel answered before it (it lags
        the holds by up to AVAILABILITY_LAG_S), it says the pool is sold out."""
        if available == 0 and answer.sent_at >= self.last_release_at + AVAILABILITY_LAG_S:
            self.empty_seen_at[key] = max(self.empty_seen_at.get(key, -math.inf), answer.sent_at)

    # --- the verdict ----------------------------------------------------------------------------------------

    def judge(self, environment: Environment, reads: GatewayReads) -> Report:
        report = Report(breaches=list(self.preflight))
        if self.aborted:
            return report  # there was no sale
        listed = {str(hold.get("id")): hold for hold in reads.holders_holds(sorted(self.holders))}
        for event in self.events:
            listed.update((str(hold.get("id")), hold) for hold, _ in reads.event_holds(event))
        units = pool_units(listed.values())
        answered = pool_units(self._as_answered())
        report.breaches += ledger_breaches(self.won, listed, self.holders)
        report.breaches += oversold_breaches(self.capacity, units)
        report.breaches += oversold_breaches(self.capacity, answered, per="the answers")
        unsold = unsold_breaches(self.capacity, units)
        report.breaches += unsold
        report.breaches += holder_limit_breaches(holder_units(listed.values()), PER_HOLDER)
        availability, shown = self._availability(reads, units)
        report.breaches += availability
        report.lines += self._summary(units, shown)
        if unsold:
            report.breaches.append(
                "the demand did not outlast the supply: raise -u, --run-time or GA_GIVE_UP_AFTER"
            )
        sold = sum(self.capacity.values())
        report.passed = (
            f"sold out: {sold} units of {len(self.capacity)} pools in {len(self.won)} holds, none oversold, "
            f"no holder past {PER_HOLDER} units of an event, availability agrees with the holds"
        )
        return report

    def _as_answered(self) -> list[dict[str, Any]]:
        """The holds as their answers leave them: live unless a cancel was answered 200."""
        return [
            {
                "status": "confirmed" if hold.allowed == {"confirmed"} else "held",
                "items": [i.body() for i in hold.items],
            }
            for hold in self.won.values()
            if hold.allowed & set(LIVE)
        ]

    def _availability(
        self, reads: GatewayReads, units: dict[PoolKey, Units]
    ) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """GET availability of each event until it agrees with the holds, for AVAILABILITY_WAIT_S at most."""
        deadline = time.monotonic() + AVAILABILITY_WAIT_S
        while True:
            shown = {e: reads.get(f"/v1/events/{quote(e)}/availability").body for e in self.events}
            breaches = [
                b for e in self.events for b in availability_breaches(e, shown[e], self.capacity, units)
            ]
            if not breaches or time.monotonic() >= deadline:
                return breaches, shown
            gevent.sleep(AVAILABILITY_POLL_S)

    def _summary(self, units: dict[PoolKey, Units], shown: dict[str, dict[str, Any]]) -> list[str]:
        lines = []
        for (event, pool), cap in sorted(self.capacity.items()):
            counted = units.get((event, pool), Units())
            said = next((p for p in shown[event].get("pools") or () if p.get("pool_id") == pool), {})
            lines.append(
                f"pool {event}/{pool:<12} capacity {cap}: held {counted.held}, confirmed {counted.confirmed}"
                f"   (availability: available {said.get('available')}, held {said.get('held')}, "
                f"confirmed {said.get('confirmed')})"
            )
        statuses = Counter(
            "cancelled"
            if hold.allowed == {"cancelled"}
            else "confirmed"
            if hold.allowed == {"confirmed"}
            else "held"
            for hold in self.won.values()
        )
        sold_in = "-"
        if self.last_sale_at is not None and self.tally.first_sent_at is not None:
            sold_in = f"{self.last_sale_at - self.tally.first_sent_at:.1f} s"
        by_kind = "   ".join(f"{key}: {n}" for key, n in sorted(self.outcomes.items()))
        limit = ", ".join(f"{key}: {n}" for key, n in sorted(self.over_limit.items())) or "-"
        lines += [
            f"holds won (201)          {len(self.won)}: confirmed {statuses['confirmed']}, cancelled "
            f"{statuses['cancelled']}, left held {statuses['held']}   (last one after {sold_in})",
            f"creates                  {by_kind}",
            f"asks past the limit      {sum(self.over_limit.values())}: {limit}",
            f"users who left           {self.users}: sold out {self.left['sold out']}, at their limit "
            f"{self.left['at their limit']}, gave up after {GIVE_UP_AFTER} refusals {self.left['gave up']}",
        ]
        return lines


class GaSaleUser(GracefulUser):
    """One holder at a general-admission on-sale: asks for units until nothing is left for it."""

    scenario: ClassVar[GaSale]
    connection_per_request = THINK_S * 1.5 >= KEEP_ALIVE_GUARD_S

    def wait_time(self) -> float:
        return random.uniform(0.5, 1.5) * THINK_S

    def on_start(self) -> None:
        sale = self.scenario
        self.holder = f"ga-{sale.run_token}-{next(sale.holder_numbers)}"
        self.live: Counter[str] = Counter()  # live units per event, as this holder's answers say
        self.mine: dict[str, WonHold] = {}  # its live holds
        self.view: dict[PoolKey, int] = {}  # units left per pool, as last read or refused
        self.refused_in_a_row = 0
        if not sale.aborted:
            self.read_availability()

    @tag("ga-sale")
    @task
    def shop(self) -> None:
        sale = self.scenario
        if sale.aborted:
            raise StopUser
        roll = random.random()
        answers = None
        if roll < MULTI_SHARE:
            answers = self.multi_event()
        elif roll < MULTI_SHARE + TWO_STEP_SHARE:
            answers = self.two_step()
        if answers is None:
            answers = self.single()
        if answers is None:
            self.leave("sold out" if not any(map(sale.pool_open, sale.capacity)) else "at their limit")
        won = [
            self.mine[a.fields["id"]] for a in answers if a.status == 201 and a.fields.get("id") in self.mine
        ]
        for hold in won:
            self.decide(hold)
        if won:
            self.refused_in_a_row = 0
            return
        self.refused_in_a_row += 1
        if self.refused_in_a_row >= GIVE_UP_AFTER:
            self.leave("gave up")
        if self.refused_in_a_row % REREAD_EVERY == 0:
            self.read_availability()

    # --- the three kinds of ask -----------------------------------------------------------------------------

    def room(self, event: str) -> int:
        return PER_HOLDER - self.live[event]

    def open_pools(self, *, event: str | None = None, room: int = 1) -> list[PoolKey]:
        """Pools that may have units, in events where this holder has `room` units left; those its view says
        have units first, if any."""
        sale = self.scenario
        keys = [
            key
            for key in sale.capacity
            if (event is None or key[0] == event) and self.room(key[0]) >= room and sale.pool_open(key)
        ]
        promising = [key for key in keys if self.view.get(key, 1) > 0]
        return promising or keys

    def single(self) -> list[Answer] | None:
        keys = self.open_pools()
        if not keys:
            return None
        event, pool = random.choice(keys)
        quantity = random.randint(1, min(MAX_SINGLE_ASK, self.room(event)))
        if self.view.get((event, pool), 0) > 0:  # a frontend offers what it last saw left
            quantity = min(quantity, self.view[(event, pool)])
        return [self.ask([PoolItem(event, pool, quantity)], "single")]

    def two_step(self) -> list[Answer] | None:
        """2 units of a pool, then 2 of another pool of the event or 3 of any: past a limit of 4 with 3."""
        keys = self.open_pools(room=PER_HOLDER)  # an event this holder holds nothing of
        if not keys:
            return None
        event, pool = random.choice(keys)
        first = self.ask([PoolItem(event, pool, 2)], "two-step, 1st")
        if first.status != 201:
            return [first]
        others = [p for e, p in self.scenario.capacity if e == event and p != pool]
        # Never the first ask again: the same items from the same holder may be answered as a retry (200).
        second = PoolItem(event, random.choice(others), 2) if others and random.random() < 0.5 else None
        second = second or PoolItem(event, random.choice([pool, *others]), 3)
        return [first, self.ask([second], "two-step, 2nd")]

    def multi_event(self) -> list[Answer] | None:
        """One item per event in one hold: all granted or none."""
        items = []
        for event in self.scenario.events:
            keys = self.open_pools(event=event)
            if not keys:
                return None
            _, pool = random.choice(keys)
            items.append(PoolItem(event, pool, random.randint(1, min(MAX_MULTI_ASK, self.room(event)))))
        return [self.ask(items, "multi-event")]

    def ask(self, items: list[PoolItem], kind: str) -> Answer:
        sale = self.scenario
        ask = Ask(self.holder, tuple(sorted(items)))
        live, own = dict(self.live), {hold.id: hold.items for hold in self.mine.values()}
        body = {"holder": self.holder, "ttl_seconds": TTL_S, "items": [item.body() for item in items]}
        sale.holders.add(self.holder)
        answer = send(
            self,
            sale.tally,
            "POST",
            "/v1/holds",
            name=f"POST /v1/holds [{kind}]",
            body=body,
            headers=client_headers(),
            check=lambda a: create_complaint(_reply(a), ask, live=live, per_holder=PER_HOLDER, own=own),
        )
        sale.outcomes[f"{kind} {outcome(answer)}"] += 1
        if ask.over_limit(live, PER_HOLDER):
            sale.over_limit[outcome(answer)] += 1
        sale.learn(answer)
        if answer.status == 201 and isinstance(answer.fields.get("id"), str):
            hold = WonHold(answer.fields["id"], self.holder, pool_items(answer.fields))
            sale.won[hold.id] = self.mine[hold.id] = hold
            for item in hold.items:
                self.live[item.event_id] += item.quantity
        if answer.status == 409:
            self.view.update(unavailable_counts(answer.fields))
        return answer

    # --- after a win ----------------------------------------------------------------------------------------

    def decide(self, hold: WonHold) -> None:
        roll = random.random()
        if roll < CONFIRM_SHARE:
            self.transition(hold, "confirm")
        elif roll < CONFIRM_SHARE + CANCEL_SHARE:
            self.transition(hold, "cancel")

    def transition(self, hold: WonHold, action: str) -> None:
        sale, target = self.scenario, "confirmed" if action == "confirm" else "cancelled"

        def check(answer: Answer) -> str | None:
            fields = answer.fields
            if answer.status == 200 and fields.get("id") == hold.id and fields.get("status") == target:
                return None
            # The run's TTL outlasts it, and nobody else acts on the hold: nothing else is allowed.
            return f"expected 200, {target}, for a live hold of its own holder"

        releases = action == "cancel"
        if releases:
            sale.cancels_in_flight += 1
        try:
            answer = send(
                self,
                sale.tally,
                "POST",
                f"/v1/holds/{quote(hold.id)}/{action}",
                name=f"POST /v1/holds/{{id}}/{action}",
                body={"holder": self.holder},
                headers=client_headers(),
                check=check,
            )
        finally:
            if releases:
                sale.cancels_in_flight -= 1
                sale.last_release_at = time.perf_counter()
        if answer.status == 200 and answer.fields.get("status") == target:
            hold.allowed = frozenset({target})
        else:  # what it did is not known: the verdict allows either
            hold.allowed = frozenset({"held", target})
        if releases and hold.allowed == {"cancelled"}:
            del self.mine[hold.id]
            for item in hold.items:
                self.live[item.event_id] -= item.quantity

    # --- reads and leaving ----------------------------------------------------------------------------------

    def read_availability(self) -> None:
        sale = self.scenario
        for event in sale.events:

            def check(answer: Answer, event: str = event) -> str | None:
                pools = answer.fields.get("pools")
                if (
                    answer.status == 200
                    and answer.fields.get("event_id") == event
                    and isinstance(pools, list)
                ):
                    return None
                return "expected 200, the event's availability with its pools"

            answer = send(
                self,
                sale.tally,
                "GET",
                f"/v1/events/{quote(event)}/availability",
                name="GET /v1/events/{e}/availability",
                check=check,
            )
            for pool in answer.fields.get("pools") or ():
                if isinstance(pool, dict) and isinstance(pool.get("available"), int):
                    key = (event, str(pool.get("pool_id")))
                    self.view[key] = pool["available"]
                    sale.learn_availability(key, pool["available"], answer)

    def leave(self, why: str) -> None:
        sale = self.scenario
        sale.left[why] += 1
        sale.user_finished(self.environment, sum(sale.left.values()))
        raise StopUser


GaSaleUser.scenario = GaSale(GaSaleUser)
