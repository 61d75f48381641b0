"""What a hold takes, in one canonical form: one part per event (its seats, sorted; its pool quantities, by
pool id), parts in event order. The one owner of the items format: the request's items become parts here,
parts become the stored `holds.items` JSON and the items a hold shows, and stored JSON becomes parts again.

A hold of one event's seats only is stored as before pools existed (event_id and slots, items null), so that
the hot path and holds made before are one format; every other hold stores its items."""

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import InvalidRequest
from gateway.models import HoldItem, HoldItemView


@dataclass(frozen=True, slots=True)
class EventPart:
    """What a hold takes in one event."""

    event_id: str
    seats: tuple[str, ...] = ()  # sorted, distinct
    pools: tuple[tuple[str, int], ...] = ()  # (pool id, quantity), by pool id

    @property
    def units(self) -> int:
        return len(self.seats) + sum(quantity for _, quantity in self.pools)


def parts_from_request(items: Sequence[HoldItem]) -> list[EventPart]:
    """The canonical parts of a request's items; InvalidRequest naming the item for a seat repeated within an
    event or a pool asked twice. Seat items of one event are merged."""
    seats: dict[str, list[str]] = {}
    pools: dict[str, dict[str, int]] = {}
    seen_seats: dict[tuple[str, str], int] = {}
    for index, item in enumerate(items):
        if item.slots is not None:
            for seat in item.slots:
                if (item.event_id, seat) in seen_seats:
                    first = seen_seats[(item.event_id, seat)]
                    where = "twice" if first == index else f"in items[{first}] too"
                    raise InvalidRequest(
                        f"`items[{index}].slots` repeats seat {seat!r} of {item.event_id!r} {where}"
                    )
                seen_seats[(item.event_id, seat)] = index
            seats.setdefault(item.event_id, []).extend(item.slots)
        else:
            assert item.pool_id is not None
            assert item.quantity is not None
            event_pools = pools.setdefault(item.event_id, {})
            if item.pool_id in event_pools:
                raise InvalidRequest(
                    f"`items[{index}].pool_id` asks pool {item.pool_id!r} of {item.event_id!r} again"
                )
            event_pools[item.pool_id] = item.quantity
    events = sorted(set(seats) | set(pools))
    return [
        EventPart(
            event_id=event_id,
            seats=tuple(sorted(seats.get(event_id, ()))),
            pools=tuple(sorted(pools.get(event_id, {}).items())),
        )
        for event_id in events
    ]


def seat_pairs(parts: Sequence[EventPart]) -> list[tuple[str, str]]:
    """Every (event id, seat id) the parts take, in canonical order."""
    return [(part.event_id, seat) for part in parts for seat in part.seats]


def pool_triples(parts: Sequence[EventPart]) -> list[tuple[str, str, int]]:
    """Every (event id, pool id, quantity) the parts take, in canonical order."""
    return [(part.event_id, pool, quantity) for part in parts for pool, quantity in part.pools]


def is_plain(parts: Sequence[EventPart]) -> bool:
    """One event's seats only: stored as event_id and slots, with no items."""
    return len(parts) == 1 and not parts[0].pools


def to_json(parts: Sequence[EventPart]) -> list[dict[str, object]] | None:
    """The stored `holds.items` (None for a plain hold)."""
    if is_plain(parts):
        return None
    return [msg_item for part in parts for msg_item in _items_of(part)]


def from_stored(event_id: str | None, slots: Sequence[str], items: object) -> list[EventPart]:
    """The parts of a stored hold: its `items` JSON, or (items null) its event's `slots`."""
    if items is None:
        assert event_id is not None
        return [EventPart(event_id=event_id, seats=tuple(sorted(slots)))]
    assert isinstance(items, list)
    seats: dict[str, tuple[str, ...]] = {}
    pools: dict[str, list[tuple[str, int]]] = {}
    for item in items:
        if "slots" in item:
            seats[item["event_id"]] = tuple(item["slots"])
        else:
            pools.setdefault(item["event_id"], []).append((item["pool_id"], int(item["quantity"])))
    return [
        EventPart(event_id=e, seats=seats.get(e, ()), pools=tuple(pools.get(e, ())))
        for e in sorted(set(seats) | set(pools))
    ]


def views(parts: Sequence[EventPart]) -> list[HoldItemView]:
    """The items a hold shows, in canonical order."""
    return [HoldItemView(**item) for part in parts for item in _items_of(part)]  # type: ignore[arg-type]


def canonical_items(parts: Sequence[EventPart]) -> list[dict[str, object]]:
    """The items as they enter a request's fingerprint."""
    return [item for part in parts for item in _items_of(part)]


def _items_of(part: EventPart) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    if part.seats:
        items.append({"event_id": part.event_id, "slots": list(part.seats)})
    items.extend({"event_id": part.event_id, "pool_id": p, "quantity": q} for p, q in part.pools)
    return items
