"""Flash sale: many shoppers, one event of S seats in rows (`R{row}-{n}`), until it is sold out.

Each user reads the seat map, then tries groups of 1 to FLASH_MAX_GROUP seats (half the time side by side in a
row, else anywhere), with a short think time between tries, as a frontend would. A 409 crosses its conflicts
off the user's map (every third one re-reads it); now and then a user re-sends a request it won, as a client
whose answer got lost would, and must get 200 with the same hold. A user leaves when a fresh map shows no free
seat (sold out) or after FLASH_GIVE_UP_AFTER 409s in a row, confirming about FLASH_CONFIRM_SHARE of its holds.

Checked when the test stops: every answer is a 201 for exactly the requested seats, a 200 retry of the
user's own hold, or a well-formed 409 whose conflicts are requested seats; no seat is in two holds per the
201s; per the gateway's seat map every seat of the event is held or confirmed, by the hold the 201s gave it
to, in the state its confirm left it; and the event's holds (the operations listing) are exactly those won.

Settings: FLASH_EVENT_ID (default: a new event per run), FLASH_SEATS (500), FLASH_ROW_SIZE (20),
FLASH_TTL_S (600: no hold may expire during the sale), FLASH_MAX_GROUP (4), FLASH_THINK_MS (200),
FLASH_GIVE_UP_AFTER (10), FLASH_CONFIRM_SHARE (0.5), FLASH_RETRY_SHARE (0.05).
"""

import itertools
import random
import uuid
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import quote, urlencode

from locust import FastHttpUser, tag, task
from locust.env import Environment
from locust.exception import StopUser

from loadtests.scenarios.common import (
    KEEP_ALIVE_GUARD_S,
    MAX_LISTED,
    SLOT_UNAVAILABLE,
    SLOTS_PAGE_LIMIT,
    Answer,
    Check,
    GatewayReads,
    GracefulUser,
    Report,
    Scenario,
    env_float,
    env_int,
    event_id,
    send,
)

SEATS = env_int("FLASH_SEATS", 500)
ROW_SIZE = env_int("FLASH_ROW_SIZE", 20)
TTL_S = env_int("FLASH_TTL_S", 600)
MAX_GROUP = min(env_int("FLASH_MAX_GROUP", 4), 10)  # the gateway allows 10 slots per hold
THINK_S = env_float("FLASH_THINK_MS", 200) / 1000
GIVE_UP_AFTER = env_int("FLASH_GIVE_UP_AFTER", 10)
CONFIRM_SHARE = env_float("FLASH_CONFIRM_SHARE", 0.5, maximum=1)
RETRY_SHARE = env_float("FLASH_RETRY_SHARE", 0.05, maximum=1)
REREAD_EVERY = 3  # 409s in a row after which a frontend re-reads the seat map


@dataclass
class SoldHold:
    id: str
    seats: frozenset[str]
    holder: str
    confirmed: bool = False


class FlashSale(Scenario):
    title = "FLASH SALE"

    def __init__(self, user_class: type[FastHttpUser]) -> None:
        super().__init__(user_class)
        self.seats = [f"R{i // ROW_SIZE + 1}-{i % ROW_SIZE + 1}" for i in range(SEATS)]
        self.position = {seat: (i // ROW_SIZE, i % ROW_SIZE) for i, seat in enumerate(self.seats)}
        self.seat_at = {place: seat for seat, place in self.position.items()}
        self.holder_numbers = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        self.event_id = event_id("FLASH_EVENT_ID", "flash")
        self.run_token = uuid.uuid4().hex[:12]
        self.holds: dict[str, SoldHold] = {}
        self.owner: dict[str, str] = {}  # seat -> the hold whose 201 gave it
        self.double_sold: list[str] = []  # seats two 201s gave away, as found
        self.retries = 0  # 200s for a re-sent request
        self.turned_away = 0  # 409s
        self.left: dict[str, int] = {"sold out": 0, "gave up": 0}
        self.last_sale_at: float | None = None

    def headline(self) -> str:
        return f"event {self.event_id!r}  {SEATS} seats in rows of {ROW_SIZE}"

    def start(self, environment: Environment) -> None:
        self.reset()

    def pick_group(self, available: set[str]) -> list[str]:
        size = random.randint(1, min(MAX_GROUP, len(available)))
        if random.random() < 0.5:  # side by side, as people who go together buy
            first = random.choice(tuple(available))
            row, n = self.position[first]
            group = [first]
            for step in (1, -1):
                k = n + step
                while len(group) < size and self.seat_at.get((row, k)) in available:
                    group.append(self.seat_at[(row, k)])
                    k += step
            return group
        return random.sample(tuple(available), size)

    def check_create(self, answer: Answer, seats: list[str], holder: str, mine: list[str]) -> str | None:
        fields = answer.fields
        same_seats = sorted(fields.get("slots") or []) == sorted(seats)
        if answer.status == 201:
            if (
                fields.get("status") == "held"
                and isinstance(fields.get("id"), str)
                and fields.get("event_id") == self.event_id
                and fields.get("holder") == holder
                and same_seats
            ):
                return None
            return "a 201 that is not a held hold of this holder on exactly the requested seats"
        if answer.status == 200:
            if fields.get("id") in mine and fields.get("holder") == holder and same_seats:
                return None
            return "a 200 that is not this user's own hold on exactly these seats"
        if answer.problem(409, SLOT_UNAVAILABLE):
            conflicts = fields.get("conflicts")
            if isinstance(conflicts, list) and conflicts and set(conflicts) <= set(seats):
                return None
            return "a 409 whose conflicts are not some of the requested seats"
        return "expected 201, a 200 retry of its own hold, or 409 slot-unavailable"

    def won(self, answer: Answer, holder: str) -> SoldHold:
        hold = SoldHold(answer.fields["id"], frozenset(answer.fields["slots"]), holder)
        self.holds[hold.id] = hold
        for seat in sorted(hold.seats):
            if seat in self.owner:
                self.double_sold.append(f"{seat} is in holds {self.owner[seat]} and {hold.id} (both 201)")
            self.owner[seat] = hold.id
        self.last_sale_at = answer.received_at
        return hold

    def judge(self, environment: Environment, reads: GatewayReads) -> Report:
        report = Report(breaches=list(self.double_sold))
        confirmed = [hold for hold in self.holds.values() if hold.confirmed]
        sold_in = "-"
        if self.last_sale_at is not None and self.tally.first_sent_at is not None:
            sold_in = f"{self.last_sale_at - self.tally.first_sent_at:.1f} s"
        report.lines += [
            f"holds won (201)          {len(self.holds)} ({len(self.owner)} seats; last one after {sold_in})"
            f"   confirmed {len(confirmed)} ({sum(len(hold.seats) for hold in confirmed)} seats)",
            f"turned away (409)        {self.turned_away}   retries answered 200 {self.retries}",
            f"users who left           {self.users}: sold out {self.left['sold out']}, "
            f"gave up after {GIVE_UP_AFTER} 409s {self.left['gave up']}",
        ]
        report.breaches += self._seat_map_breaches(reads, report)
        report.breaches += self._listing_breaches(reads)
        report.passed = (
            f"sold out: {SEATS} seats in {len(self.holds)} holds, no seat sold twice, the seat map agrees "
            "with every 201"
        )
        return report

    def _seat_map_breaches(self, reads: GatewayReads, report: Report) -> list[str]:
        breaches = []
        listed = {slot.get("slot_id"): slot for slot, _ in reads.event_slots(self.event_id)}
        states = {"held": 0, "confirmed": 0, "free": 0}
        for slot in listed.values():
            states[slot.get("state")] = states.get(slot.get("state"), 0) + 1
        report.lines.append(
            f"seat map (GET slots)     held {states['held']}, confirmed {states['confirmed']}, "
            f"free {states['free'] + SEATS - len(set(listed) & set(self.seats))}"
        )
        strangers = sorted(str(seat) for seat in set(listed) - set(self.seats))
        if strangers:
            breaches.append(
                f"the seat map lists {len(strangers)} seats not on sale: {strangers[:MAX_LISTED]}"
            )
        unsold = []
        for seat in self.seats:
            slot = listed.get(seat) or {"state": "free", "hold_id": None}
            state, hold_id, sold_to = slot.get("state"), slot.get("hold_id"), self.owner.get(seat)
            if state not in ("held", "confirmed"):
                unsold.append(seat)
                if sold_to is not None:
                    breaches.append(f"{seat}: a 201 gave it to hold {sold_to}, the seat map says {state}")
            elif hold_id not in self.holds:
                breaches.append(f"{seat} is {state} by hold {hold_id}, which no 201 of this run created")
            elif hold_id != sold_to:
                breaches.append(f"{seat} is {state} by hold {hold_id}, but the 201s gave it to {sold_to}")
            elif state != ("confirmed" if self.holds[hold_id].confirmed else "held"):
                breaches.append(f"{seat} is {state}, but its hold {hold_id} was answered otherwise")
        if unsold:
            breaches.append(
                f"not sold out: {len(unsold)} of {SEATS} seats are free at the end ({', '.join(unsold[:5])}"
                f"{', ...' if len(unsold) > 5 else ''}); raise --run-time or FLASH_GIVE_UP_AFTER"
            )
        return breaches

    def _listing_breaches(self, reads: GatewayReads) -> list[str]:
        """The event's holds per the operations listing: exactly the holds won, in the state answered."""
        listed = {hold.get("id"): hold for hold, _ in reads.event_holds(self.event_id)}
        breaches = []
        phantoms = sorted(str(hold_id) for hold_id in set(listed) - set(self.holds))
        if phantoms:
            breaches.append(f"the event has {len(phantoms)} holds no 201 of this run created: {phantoms[:5]}")
        missing = sorted(set(self.holds) - set(listed))
        if missing:
            breaches.append(f"{len(missing)} holds won are missing from the event's holds: {missing[:5]}")
        for hold_id, hold in self.holds.items():
            status = listed.get(hold_id, {}).get("status")
            expected = "confirmed" if hold.confirmed else "held"
            if hold_id in listed and status != expected:
                breaches.append(f"hold {hold_id} is listed {status}, expected {expected}")
        return breaches


class FlashSaleUser(GracefulUser):
    """A shopper: reads the seat map, tries groups of seats until it has to give up or nothing is left."""

    scenario: ClassVar[FlashSale]
    connection_per_request = THINK_S * 1.5 >= KEEP_ALIVE_GUARD_S

    def wait_time(self) -> float:
        return random.uniform(0.5, 1.5) * THINK_S

    def on_start(self) -> None:
        sale = self.scenario
        self.holder = f"flash-{sale.run_token}-{next(sale.holder_numbers)}"
        self.mine: list[str] = []  # hold ids this user won
        self.turned_away_in_a_row = 0
        self.available = self.read_seat_map()

    @tag("flash-sale")
    @task
    def buy(self) -> None:
        sale = self.scenario
        if not self.available:
            self.available = self.read_seat_map()
            if not self.available:
                self.leave("sold out")
        seats = sale.pick_group(self.available)
        body = {"event_id": sale.event_id, "slots": seats, "holder": self.holder, "ttl_seconds": TTL_S}
        answer = self.hold(body, lambda a: sale.check_create(a, seats, self.holder, self.mine))
        if answer.status == 201 and "id" in answer.fields:
            hold = sale.won(answer, self.holder)
            self.mine.append(hold.id)
            self.available -= hold.seats
            self.turned_away_in_a_row = 0
            if random.random() < RETRY_SHARE:
                self.retry(body, hold)
            return
        if answer.status == 409:
            sale.turned_away += 1
            self.available -= set(answer.fields.get("conflicts") or seats)
        else:
            self.available -= set(seats)  # an answer it cannot use (already recorded): try other seats
        self.turned_away_in_a_row += 1
        if self.turned_away_in_a_row >= GIVE_UP_AFTER:
            self.leave("gave up")
        if self.turned_away_in_a_row % REREAD_EVERY == 0:
            self.available = self.read_seat_map()

    def hold(self, body: dict[str, object], check: Check, name: str = "POST /v1/holds") -> Answer:
        return send(self, self.scenario.tally, "POST", "/v1/holds", name=name, body=body, check=check)

    def retry(self, body: dict[str, object], hold: SoldHold) -> None:
        """Re-send a request it won, as a client that lost the answer would: 200, the same hold."""

        def check(answer: Answer) -> str | None:
            same = answer.fields.get("id") == hold.id and set(answer.fields.get("slots") or []) == hold.seats
            return None if answer.status == 200 and same else "a re-sent won request must get 200, same hold"

        if self.hold(body, check, name="POST /v1/holds [retry]").status == 200:
            self.scenario.retries += 1

    def read_seat_map(self) -> set[str]:
        """The seats no live hold has: free ones, and those never held (which the map does not list)."""
        sale = self.scenario
        taken: set[str] = set()
        cursor = None
        while True:
            query = {"limit": SLOTS_PAGE_LIMIT} | ({} if cursor is None else {"cursor": cursor})
            answer = send(
                self,
                sale.tally,
                "GET",
                f"/v1/events/{quote(sale.event_id)}/slots?{urlencode(query)}",
                name="GET /v1/events/{e}/slots [seat map]",
                check=lambda a: (
                    None if isinstance(a.fields.get("slots"), list) else "expected 200, a slot list"
                ),
            )
            slots = answer.fields.get("slots") or []
            taken |= {slot.get("slot_id") for slot in slots if slot.get("state") in ("held", "confirmed")}
            cursor = answer.fields.get("next_cursor")
            if not cursor:
                return set(sale.seats) - taken

    def leave(self, why: str) -> None:
        """Confirm some of the holds won, then stop."""
        sale = self.scenario
        for hold_id in self.mine:
            if random.random() >= CONFIRM_SHARE:
                continue
            answer = send(
                self,
                sale.tally,
                "POST",
                f"/v1/holds/{hold_id}/confirm",
                name="POST /v1/holds/{id}/confirm",
                body={"holder": self.holder},
                check=lambda a, hold_id=hold_id: (
                    None
                    if a.status == 200
                    and a.fields.get("status") == "confirmed"
                    and a.fields.get("id") == hold_id
                    else "expected 200, confirmed"
                ),
            )
            if answer.status == 200:
                sale.holds[hold_id].confirmed = True
        sale.left[why] += 1
        sale.user_finished(self.environment, sum(sale.left.values()))
        raise StopUser


FlashSaleUser.scenario = FlashSale(FlashSaleUser)
