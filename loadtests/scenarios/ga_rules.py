"""The rules of the general-admission sale, as pure functions over what the scenario collected.

No Locust here (importing it monkey-patches the process with gevent), so that tests/test_loadtests.py can
prove, with crafted data and no server, that each rule fails when it is broken. ga_sale.py applies them to
the answers its users saw and to what the gateway's read API says afterwards:

- per answer: a create is a 201 for exactly the items asked, a 200 that is the holder's own live hold on the
  same items, a 409 holder-limit exactly when the holder's live units of an event plus the request pass the
  limit (with the numbers the holder knows), or a 409 slot-unavailable naming requested pools that lack
  units; never a 201 past the limit;
- per hold (the operations listing): exactly the holds the 201s made, in the status their confirms and
  cancels left them, on the same items; none behind a refusal (all or nothing), none of a stranger;
- per pool: held + confirmed units across the holds == capacity (sold out) and never more (oversold);
- per holder and event: live units within the limit;
- per event: availability agrees with the holds (available == capacity - held - confirmed, and held and
  confirmed are the holds' sums).
"""

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PROBLEM_JSON = "application/problem+json"
SLOT_UNAVAILABLE = "/slot-unavailable"  # how the type URI of a create refused for lack of units ends
HOLDER_LIMIT = "/holder-limit"  # ... and of one refused for the holder's limit on an event
LIVE = ("held", "confirmed")  # the statuses that keep units out of a pool (the run's TTL outlasts it)
MAX_SHOWN = 5  # ids or pools named in one breach line

PoolKey = tuple[str, str]  # (event_id, pool_id)


@dataclass(frozen=True, slots=True, order=True)
class PoolItem:
    """Units of one pool in one hold, as a request asks for them and a hold's `items` show them."""

    event_id: str
    pool_id: str
    quantity: int

    @property
    def key(self) -> PoolKey:
        return (self.event_id, self.pool_id)

    def body(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "pool_id": self.pool_id, "quantity": self.quantity}


def units_per_event(items: Iterable[PoolItem]) -> Counter[str]:
    units: Counter[str] = Counter()
    for item in items:
        units[item.event_id] += item.quantity
    return units


def pool_items(hold: Mapping[str, Any]) -> tuple[PoolItem, ...]:
    """A hold's pool items, sorted (items with a `pool_id`; seat items have `slots` instead)."""
    found = []
    for item in hold.get("items") or ():
        if isinstance(item, Mapping) and "pool_id" in item:
            found.append(
                PoolItem(str(item.get("event_id")), str(item["pool_id"]), _int(item.get("quantity")))
            )
    return tuple(sorted(found))


def seat_units(hold: Mapping[str, Any]) -> Counter[str]:
    """Seats per event in a hold's seat items (units too, for the holder limit)."""
    units: Counter[str] = Counter()
    for item in hold.get("items") or ():
        if isinstance(item, Mapping) and "pool_id" not in item:
            units[str(item.get("event_id"))] += len(item.get("slots") or ())
    return units


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


# --- per answer ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """What a create got back: status, decoded JSON body (or None), Content-Type."""

    status: int
    body: Any
    content_type: str = PROBLEM_JSON

    @property
    def fields(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}

    def problem(self, status: int, type_suffix: str) -> bool:
        """A problem+json answer with this status whose type URI ends with `type_suffix`."""
        return (
            self.status == status
            and self.content_type.startswith(PROBLEM_JSON)
            and str(self.fields.get("type", "")).endswith(type_suffix)
            and self.fields.get("status") == status
        )


@dataclass(frozen=True, slots=True)
class Ask:
    """One create: a holder asks for these pool items in one hold."""

    holder: str
    items: tuple[PoolItem, ...]

    def units(self) -> Counter[str]:
        return units_per_event(self.items)

    def over_limit(self, live: Mapping[str, int], per_holder: int) -> list[str]:
        """The events where the holder's live units plus this ask pass the limit."""
        return sorted(event for event, n in self.units().items() if live.get(event, 0) + n > per_holder)


def create_complaint(
    reply: Reply,
    ask: Ask,
    *,
    live: Mapping[str, int],
    per_holder: int,
    own: Mapping[str, tuple[PoolItem, ...]],
) -> str | None:
    """None if the answer is one the API allows for this ask, else why not.

    live: the holder's live units per event before the ask, as its own answers say; own: its live holds'
    items by hold id (a 200 must be one of them, on exactly the items asked)."""
    fields, over = reply.fields, ask.over_limit(live, per_holder)
    asked = tuple(sorted(ask.items))
    if reply.status == 201:
        events = sorted({item.event_id for item in asked})
        if over:
            return (
                f"a 201 past the per-holder limit of {per_holder} in {', '.join(over)} (live units "
                f"{dict(live)}, asked {dict(ask.units())})"
            )
        if not (
            fields.get("status") == "held"
            and isinstance(fields.get("id"), str)
            and fields.get("holder") == ask.holder
            and pool_items(fields) == asked
            and fields.get("event_id") == (events[0] if len(events) == 1 else None)
        ):
            return "a 201 that is not a held hold of this holder on exactly the items asked"
        return None
    if reply.status == 200:
        if fields.get("holder") == ask.holder and own.get(str(fields.get("id"))) == asked:
            return None
        return "a 200 that is not one of this holder's live holds on exactly these items"
    if reply.problem(409, HOLDER_LIMIT):
        return _holder_limit_complaint(fields, ask, live, per_holder)
    if reply.problem(409, SLOT_UNAVAILABLE):
        return _unavailable_complaint(fields, ask)
    return "expected 201, a 200 of the holder's own hold, 409 slot-unavailable or 409 holder-limit"


def _holder_limit_complaint(
    fields: Mapping[str, Any], ask: Ask, live: Mapping[str, int], per_holder: int
) -> str | None:
    event = fields.get("event_id")
    if not isinstance(event, str) or event not in ask.units():
        return "a 409 holder-limit whose event_id is not an event of the ask"
    expected = {"limit": per_holder, "held": live.get(event, 0), "requested": ask.units()[event]}
    got = {name: fields.get(name) for name in expected}
    if got != expected:
        return f"a 409 holder-limit saying {got}, but the holder knows {expected}"
    if expected["held"] + expected["requested"] <= per_holder:
        return f"a 409 holder-limit although {expected['held']} + {expected['requested']} <= {per_holder}"
    return None


def _unavailable_complaint(fields: Mapping[str, Any], ask: Ask) -> str | None:
    """Every entry a requested pool, with the quantity asked and fewer units available than that."""
    entries = fields.get("unavailable")
    if not isinstance(entries, list) or not entries:
        return "a 409 slot-unavailable without an `unavailable` list"
    asked = {item.key: item.quantity for item in ask.items}
    for entry in entries:
        if not isinstance(entry, Mapping) or "pool_id" not in entry:
            return f"a 409 slot-unavailable naming {entry!r}, which is no pool asked for"
        key = (entry.get("event_id"), entry.get("pool_id"))
        requested, available = entry.get("requested"), entry.get("available")
        if key not in asked or requested != asked[key]:
            return f"a 409 slot-unavailable naming {dict(entry)}, which is not an item asked for"
        if not (isinstance(available, int) and 0 <= available < asked[key]):
            return f"a 409 slot-unavailable naming {dict(entry)}, which has the units asked"
    return None


def unavailable_counts(fields: Mapping[str, Any]) -> dict[PoolKey, int]:
    """From a well-formed 409 slot-unavailable: units available in each pool it names."""
    return {
        (str(entry["event_id"]), str(entry["pool_id"])): entry["available"]
        for entry in fields.get("unavailable") or ()
        if isinstance(entry, Mapping) and "pool_id" in entry and isinstance(entry.get("available"), int)
    }


# --- per hold -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class WonHold:
    """A hold a 201 gave, and the statuses its confirm and cancel answers allow it to have now."""

    id: str
    holder: str
    items: tuple[PoolItem, ...]
    allowed: frozenset[str] = field(default=frozenset({"held"}))


def ledger_breaches(
    won: Mapping[str, WonHold], listed: Mapping[str, Mapping[str, Any]], holders: set[str]
) -> list[str]:
    """The holds the gateway lists (this run's holders' and any other on the run's pools) are exactly the
    holds the 201s made, on the same items, in the statuses their answers allow."""
    breaches = []
    missing = sorted(set(won) - set(listed))
    if missing:
        breaches.append(f"{len(missing)} holds won (201) are not listed: {missing[:MAX_SHOWN]}")
    phantoms = sorted(
        hold_id for hold_id, hold in listed.items() if hold_id not in won and hold.get("holder") in holders
    )
    if phantoms:
        breaches.append(
            f"{len(phantoms)} holds of this run's holders that no 201 made (granted behind a refusal?): "
            f"{phantoms[:MAX_SHOWN]}"
        )
    strangers = sorted(
        hold_id
        for hold_id, hold in listed.items()
        if hold.get("holder") not in holders and hold.get("status") in LIVE
    )
    if strangers:
        breaches.append(
            f"{len(strangers)} live holds on the run's pools are not this run's: {strangers[:MAX_SHOWN]}"
        )
    for hold_id in sorted(set(won) & set(listed)):
        hold, shown = won[hold_id], listed[hold_id]
        if shown.get("status") not in hold.allowed:
            breaches.append(
                f"hold {hold_id} is listed {shown.get('status')}, but its answers say "
                f"{' or '.join(sorted(hold.allowed))}"
            )
        if pool_items(shown) != hold.items or shown.get("holder") != hold.holder:
            breaches.append(f"hold {hold_id} is listed with other items or holder than its 201 gave")
    return breaches


# --- per pool, per holder, per event ------------------------------------------------------------------------


@dataclass(slots=True)
class Units:
    held: int = 0
    confirmed: int = 0

    @property
    def sold(self) -> int:
        return self.held + self.confirmed


def pool_units(holds: Iterable[Mapping[str, Any]]) -> dict[PoolKey, Units]:
    """Held and confirmed units of each pool, summed over the live holds' pool items."""
    units: dict[PoolKey, Units] = {}
    for hold in holds:
        status = hold.get("status")
        if status not in LIVE:
            continue
        for item in pool_items(hold):
            counted = units.setdefault(item.key, Units())
            if status == "held":
                counted.held += item.quantity
            else:
                counted.confirmed += item.quantity
    return units


def holder_units(holds: Iterable[Mapping[str, Any]]) -> Counter[tuple[str, str]]:
    """Live units (pool units and seats) of each (holder, event)."""
    units: Counter[tuple[str, str]] = Counter()
    for hold in holds:
        if hold.get("status") in LIVE:
            holder = str(hold.get("holder"))
            for event, n in (units_per_event(pool_items(hold)) + seat_units(hold)).items():
                units[(holder, event)] += n
    return units


def _pool(key: PoolKey) -> str:
    return f"{key[0]}/{key[1]}"


def unsold_breaches(capacity: Mapping[PoolKey, int], units: Mapping[PoolKey, Units]) -> list[str]:
    """Sold out: held + confirmed == capacity in every pool. (More than capacity is oversold_breaches'.)"""
    return [
        f"pool {_pool(key)} is not sold out: {units.get(key, Units()).sold} of {cap} units held or confirmed"
        for key, cap in sorted(capacity.items())
        if units.get(key, Units()).sold < cap
    ]


def oversold_breaches(
    capacity: Mapping[PoolKey, int], units: Mapping[PoolKey, Units], *, per: str = "the holds"
) -> list[str]:
    """No pool with more live units than its capacity (nor any units in a pool not on sale)."""
    breaches = []
    for key, counted in sorted(units.items()):
        if key not in capacity and counted.sold:
            breaches.append(f"{counted.sold} units of pool {_pool(key)}, which is not on sale, per {per}")
        elif key in capacity and counted.sold > capacity[key]:
            breaches.append(
                f"pool {_pool(key)} is oversold per {per}: {counted.sold} units live "
                f"({counted.held} held, {counted.confirmed} confirmed) for a capacity of {capacity[key]}"
            )
    return breaches


def holder_limit_breaches(units: Mapping[tuple[str, str], int], per_holder: int) -> list[str]:
    over = sorted((key, n) for key, n in units.items() if n > per_holder)
    if not over:
        return []
    shown = ", ".join(f"{holder} has {n} in {event}" for (holder, event), n in over[:MAX_SHOWN])
    return [f"{len(over)} holders have more than {per_holder} live units of an event: {shown}"]


def availability_breaches(
    event_id: str, body: Mapping[str, Any], capacity: Mapping[PoolKey, int], units: Mapping[PoolKey, Units]
) -> list[str]:
    """GET availability of one event against the holds: the pools on sale, each with its capacity, held and
    confirmed as the holds sum them, and available == capacity - held - confirmed."""
    if body.get("event_id") != event_id:
        return [f"availability of {event_id} names event {body.get('event_id')!r}"]
    shown = {str(pool.get("pool_id")): pool for pool in body.get("pools") or () if isinstance(pool, Mapping)}
    on_sale = {pool for event, pool in capacity if event == event_id}
    breaches = []
    if set(shown) != on_sale:
        breaches.append(f"availability of {event_id} shows pools {sorted(shown)}, on sale {sorted(on_sale)}")
    for pool_id in sorted(on_sale & set(shown)):
        key, pool = (event_id, pool_id), shown[pool_id]
        counted = units.get(key, Units())
        expected = {
            "capacity": capacity[key],
            "held": counted.held,
            "confirmed": counted.confirmed,
            "available": capacity[key] - counted.sold,
        }
        got = {name: pool.get(name) for name in expected}
        # Equal to the holds' sums, available == capacity - held - confirmed follows.
        if got != expected:
            breaches.append(f"availability of {_pool(key)} says {got}, the holds say {expected}")
    return breaches
