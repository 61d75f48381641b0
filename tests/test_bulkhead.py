"""The create bulkhead: wide open for a storm, narrowed while it gives way to confirms.

The Bulkhead itself (places handed over in arrival order, at most `size_giving_way` admitted while giving
way, no place lost to a waiter's timeout or cancel), then the create path's rule through a real gateway: a
confirm arriving while the worker's creates are mostly refused makes them give way; a storm of winners with
its confirms never does."""

import asyncio
import time

import pytest

from gateway import metrics
from gateway.bulkhead import Bulkhead
from gateway.errors import Overloaded
from tests.support import Gateway, eventually


async def passes(n: int = 5) -> None:
    """Let the event loop run what is ready (no clock involved)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_places_go_in_arrival_order_and_narrow_while_giving_way() -> None:
    bulkhead = Bulkhead(3, size_giving_way=1, queue_timeout_s=60, retry_after_s=1)
    for _ in range(3):
        await bulkhead.enter()  # wide: three at once, none waits
    admitted: list[int] = []

    async def waiter(n: int) -> None:
        await bulkhead.enter()
        admitted.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await passes()
    assert admitted == []

    assert bulkhead.give_way(0.2) is True  # it was wide
    assert bulkhead.give_way(0.1) is False  # already giving way (and not shortened)
    bulkhead.leave()
    bulkhead.leave()
    await passes()
    assert admitted == []  # one still inside: giving way, that is all it admits
    bulkhead.leave()
    await passes()
    assert admitted == [0]

    widens_at = time.monotonic() + 0.2
    await eventually(lambda: time.monotonic() > widens_at, within_s=30)
    bulkhead.leave()  # the first leave past the period admits up to the full size again
    await passes()
    assert admitted == [0, 1, 2]
    await asyncio.gather(*tasks)


async def test_a_waiter_timed_out_or_cancelled_loses_no_place() -> None:
    bulkhead = Bulkhead(1, queue_timeout_s=0.05, retry_after_s=7)
    await bulkhead.enter()
    with pytest.raises(Overloaded) as shed:
        await bulkhead.enter()  # waits its budget, then 503 with Retry-After
    assert shed.value.retry_after_s == 7

    patient = Bulkhead(1, queue_timeout_s=60, retry_after_s=1)
    await patient.enter()
    cancelled = asyncio.create_task(patient.enter())
    await passes()
    cancelled.cancel()
    await passes()
    assert cancelled.cancelled()

    for this in (bulkhead, patient):
        this.leave()
        await asyncio.wait_for(this.enter(), timeout=30)  # the one place is free: taken at once
        late = asyncio.create_task(this.enter())
        await passes()
        assert not late.done()  # and it was the only one
        this.leave()
        await asyncio.wait_for(late, timeout=30)
        this.leave()


def giving_way() -> float:
    return metrics.CREATES_GIVING_WAY._value.get()  # prometheus-client's one reader


async def test_creates_give_way_to_a_confirm_during_a_storm_of_losers(gateway: Gateway) -> None:
    """Losers keep coming at a held seat while another hold is confirmed: the worker starts giving way (the
    storm is refused in Redis, so most of its verdicts are refusals)."""
    seat = await gateway.hold("gw", ["held"], "owner")
    assert seat.status_code == 201
    before = giving_way()
    stop = asyncio.Event()

    async def losers() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            rivals = [f"rival-{n}-{i}" for i in range(8)]
            answers = await asyncio.gather(*(gateway.hold("gw", ["held"], rival) for rival in rivals))
            assert {a.status_code for a in answers} == {409}

    storm = asyncio.create_task(losers())
    try:
        deadline = time.monotonic() + 60
        n = 0
        while giving_way() == before:
            assert time.monotonic() < deadline, "creates never gave way to the confirms"
            n += 1
            mine = await gateway.hold("gw", [f"mine-{n}"], "buyer")
            confirmed = await gateway.post(f"/v1/holds/{mine.json()['id']}/confirm", {"holder": "buyer"})
            assert confirmed.status_code == 200
    finally:
        stop.set()
        await storm


async def test_a_storm_of_winners_never_gives_way(gateway: Gateway) -> None:
    """Every create wins and is confirmed at once, from 16 buyers at a time: useful work, never narrowed."""
    before = giving_way()

    async def buyer(n: int) -> None:
        for round_ in range(10):
            held = await gateway.hold("gw", [f"s-{n}-{round_}"], f"buyer-{n}")
            assert held.status_code == 201
            confirmed = await gateway.post(f"/v1/holds/{held.json()['id']}/confirm", {"holder": f"buyer-{n}"})
            assert confirmed.status_code == 200

    await asyncio.gather(*(buyer(n) for n in range(16)))
    assert giving_way() == before
