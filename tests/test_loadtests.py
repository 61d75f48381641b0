"""The Locust scenarios of loadtests/, run headless at small scale against a gateway of the fixtures.

Each must pass and exit 0, and the test checks one thing of its own in the database. Each checker must also be
able to fail: a run set up to breach the promise (a slot taken before the storm, a stranger's hold in the
sale, ...) must end in FAIL and exit code 1.

Locust runs in a subprocess: it monkey-patches the process with gevent, which must not happen to this one,
whose event loop serves the gateway meanwhile.
"""

import asyncio
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from gateway.embedded import free_port
from loadtests.scenarios.ga_rules import (
    Ask,
    PoolItem,
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
    unsold_breaches,
)
from tests.conftest import make_settings
from tests.support import (
    Gateway,
    active_holds_per_slot,
    running_gateway,
)

LOCUSTFILE = Path(__file__).resolve().parent.parent / "loadtests" / "locustfile.py"
# The scenarios' settings; the tests give each run its own, and nothing leaks in from the shell.
SCENARIO_VARIABLES = (
    "STORM_",
    "DEGRADED_",
    "FLASH_",
    "MIX_",
    "EDGE_",
    "GA_",
    "GATEWAY_OPS_TOKEN",
    "LOADTEST_",
)
PASS, FAIL = "VERDICT  PASS", "VERDICT  FAIL"


@dataclass
class LocustRun:
    exit_code: int
    output: str

    @property
    def verdict(self) -> str:
        return next((line for line in reversed(self.output.splitlines()) if line.startswith("VERDICT")), "")

    def number(self, label: str) -> int:
        """The first number after `label` at the start of a summary line."""
        match = re.search(rf"^{re.escape(label)}\s+(\d+)", self.output, re.MULTILINE)
        assert match, f"no {label!r} line in the summary:\n{self}"
        return int(match.group(1))

    def __str__(self) -> str:
        return f"exit code {self.exit_code}\n{self.output[-8000:]}"


async def run_locust(
    user_class: str, host: str, *, users: int, env: dict[str, str], run_time_s: int = 60
) -> LocustRun:
    """`locust --headless` for one scenario; it stops by itself when done, `run_time_s` is an upper bound."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(SCENARIO_VARIABLES)} | env
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"),
        *("--host", host, "-u", str(users), "-r", str(users), "-t", f"{run_time_s}s", "--stop-timeout", "20"),
        user_class,
        cwd=LOCUSTFILE.parent.parent,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), run_time_s + 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return LocustRun(process.returncode, output.decode(errors="replace"))


async def holds_of(database_url: str, event_id: str) -> list[asyncpg.Record]:
    """The event's holds as Postgres has them, with whether each is live (held and not yet expired)."""
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(
            """
            SELECT id, holder, status, slots, (status = 'held' AND expires_at > now()) AS live
            FROM holds WHERE event_id = $1
            """,
            event_id,
        )
    finally:
        await conn.close()


def slot_counts(per_slot: dict[tuple[str, str], int], event_id: str) -> dict[str, int]:
    return {slot: n for (event, slot), n in per_slot.items() if event == event_id}


# --- storm ------------------------------------------------------------------------------------------------


async def test_storm_has_exactly_one_winner(gateway: Gateway, database_url: str) -> None:
    run = await run_locust("StormUser", gateway.url, users=100, env={"STORM_EVENT_ID": "storm-t"})

    assert run.exit_code == 0, str(run)
    assert run.verdict.startswith(PASS), run
    assert "won (201) 1   turned away (409) 99" in run.output, run
    assert slot_counts(await active_holds_per_slot(database_url), "storm-t") == {"seat-1": 1}


async def test_storm_fails_when_the_slot_was_taken_before_it(gateway: Gateway, database_url: str) -> None:
    early = await gateway.hold("storm-t", ["seat-1"], holder="early-bird", ttl_seconds=600)
    assert early.status_code == 201

    run = await run_locust("StormUser", gateway.url, users=30, env={"STORM_EVENT_ID": "storm-t"})

    assert run.exit_code == 1, str(run)
    assert run.verdict.startswith(FAIL), run
    assert "expected exactly one 201, got 0" in run.output, run
    holds = await holds_of(database_url, "storm-t")
    assert [(h["id"], h["live"]) for h in holds] == [(early.json()["id"], True)]


# --- flash sale -------------------------------------------------------------------------------------------

FLASH = {"FLASH_SEATS": "60", "FLASH_ROW_SIZE": "10", "FLASH_THINK_MS": "50"}


async def test_flash_sale_sells_every_seat_once(gateway: Gateway, database_url: str) -> None:
    run = await run_locust("FlashSaleUser", gateway.url, users=40, env=FLASH | {"FLASH_EVENT_ID": "sale"})

    assert run.exit_code == 0, str(run)
    assert run.verdict.startswith(PASS), run
    seats = {f"R{row}-{n}" for row in range(1, 7) for n in range(1, 11)}
    assert slot_counts(await active_holds_per_slot(database_url), "sale") == dict.fromkeys(seats, 1)
    holds = await holds_of(database_url, "sale")
    assert len(holds) == run.number("holds won (201)")


async def test_flash_sale_fails_when_a_stranger_holds_a_seat(gateway: Gateway, database_url: str) -> None:
    stranger = await gateway.hold("sale", ["R1-1"], holder="stranger", ttl_seconds=600)
    assert stranger.status_code == 201

    run = await run_locust("FlashSaleUser", gateway.url, users=40, env=FLASH | {"FLASH_EVENT_ID": "sale"})

    assert run.exit_code == 1, str(run)
    assert run.verdict.startswith(FAIL), run
    assert f"R1-1 is held by hold {stranger.json()['id']}, which no 201 of this run created" in run.output, (
        run
    )
    assert set(slot_counts(await active_holds_per_slot(database_url), "sale").values()) == {1}


# --- hold / confirm / cancel mix --------------------------------------------------------------------------

MIX = {"MIX_RPS": "50", "MIX_TTL_S": "1", "MIX_SLOTS": "300", "MIX_EVENT_ID": "mix"}


async def test_mix_ends_every_hold_where_its_transitions_say(gateway: Gateway, database_url: str) -> None:
    run = await run_locust("HoldMixUser", gateway.url, users=10, env=MIX, run_time_s=15)

    assert run.exit_code == 0, str(run)
    assert run.verdict.startswith(PASS), run
    assert max(slot_counts(await active_holds_per_slot(database_url), "mix").values()) == 1
    # Every hold Postgres has is one the scenario was told about: no hold was created behind a 409 or a 5xx.
    assert len(await holds_of(database_url, "mix")) == run.number("holds created")


async def test_mix_fails_on_a_hold_it_did_not_create(gateway: Gateway) -> None:
    stranger = await gateway.hold("mix", ["m-00001"], holder="stranger", ttl_seconds=600)
    assert stranger.status_code == 201

    run = await run_locust("HoldMixUser", gateway.url, users=5, env=MIX | {"MIX_SLOTS": "40"}, run_time_s=3)

    assert run.exit_code == 1, str(run)
    assert run.verdict.startswith(FAIL), run
    assert f"held by hold {stranger.json()['id']}, which no answer ever named" in run.output, run


# --- confirm against expiry -------------------------------------------------------------------------------

EDGE = {"EDGE_HOLDS": "30", "EDGE_TTL_S": "1", "EDGE_EVENT_ID": "edge"}


async def test_confirm_at_expiry_has_one_outcome(gateway: Gateway, database_url: str) -> None:
    run = await run_locust("ConfirmVsExpiryUser", gateway.url, users=30, env=EDGE)

    assert run.exit_code == 0, str(run)
    assert run.verdict.startswith(PASS), run
    assert run.number("rounds") == 30
    assert max(slot_counts(await active_holds_per_slot(database_url), "edge").values()) == 1
    # Every original hold reached its edge: confirmed, or no longer live; never both it and its rival.
    originals = [h for h in await holds_of(database_url, "edge") if not h["holder"].endswith("-rival")]
    assert len(originals) == 30
    assert all(h["status"] == "confirmed" or not h["live"] for h in originals)


async def test_confirm_at_expiry_fails_when_its_slots_are_taken(gateway: Gateway) -> None:
    taken = await gateway.hold("edge", ["slot-00000", "slot-00001"], holder="stranger", ttl_seconds=600)
    assert taken.status_code == 201

    run = await run_locust("ConfirmVsExpiryUser", gateway.url, users=30, env=EDGE)

    assert run.exit_code == 1, str(run)
    assert run.verdict.startswith(FAIL), run
    assert "2 holds on fresh slots were not granted" in run.output, run


# --- degraded: Redis down ---------------------------------------------------------------------------------


async def test_degraded_storm_has_exactly_one_winner(database_url: str, key_prefix: str) -> None:
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    async with running_gateway(make_settings(database_url, nothing_listens, key_prefix)) as gateway:
        run = await run_locust("DegradedStormUser", gateway.url, users=100, env={"DEGRADED_EVENT_ID": "deg"})

    assert run.exit_code == 0, str(run)
    assert run.verdict.startswith(PASS), run
    assert "gateway mode             db-only" in run.output, run
    assert slot_counts(await active_holds_per_slot(database_url), "deg") == {"seat-1": 1}


async def test_degraded_storm_refuses_a_gateway_that_redis_fronts(
    gateway: Gateway, database_url: str
) -> None:
    run = await run_locust("DegradedStormUser", gateway.url, users=20, env={"DEGRADED_EVENT_ID": "deg"})

    assert run.exit_code == 1, str(run)
    assert run.verdict.startswith(FAIL), run
    assert "GET /ready says mode 'redis-front' before the storm, not 'db-only'" in run.output, run
    assert await holds_of(database_url, "deg") == []


# --- general admission: the verdict's rules, on crafted data (no server) ----------------------------------

CAPACITY = {("e1", "floor"): 5, ("e1", "balcony"): 3, ("e2", "floor"): 4}
PER_HOLDER = 4


def ga_hold(hold_id: str, holder: str, status: str, *items: PoolItem) -> dict[str, object]:
    """A hold as the operations listing shows it."""
    events = sorted({item.event_id for item in items})
    return {
        "id": hold_id,
        "holder": holder,
        "status": status,
        "event_id": events[0] if len(events) == 1 else None,
        "items": [item.body() for item in items],
    }


# Sold out, within every limit: 5 + 3 + 4 units over four holders, one hold on both events, and a
# cancelled hold whose units went back on sale.
SOLD_OUT = [
    ga_hold("h1", "ann", "held", PoolItem("e1", "floor", 3)),
    ga_hold("h2", "bob", "confirmed", PoolItem("e1", "floor", 2), PoolItem("e1", "balcony", 2)),
    ga_hold("h3", "cid", "held", PoolItem("e1", "balcony", 1), PoolItem("e2", "floor", 2)),
    ga_hold("h4", "dee", "confirmed", PoolItem("e2", "floor", 2)),
    ga_hold("h5", "dee", "cancelled", PoolItem("e2", "floor", 2)),
]


def availability(event: str, *pools: tuple[str, int, int, int, int]) -> dict[str, object]:
    """GET availability's body; each pool (pool_id, capacity, available, held, confirmed)."""
    keys = ("pool_id", "capacity", "available", "held", "confirmed")
    return {"event_id": event, "pools": [dict(zip(keys, pool, strict=True)) for pool in pools]}


def test_ga_rules_pass_a_pool_sold_out_within_every_limit() -> None:
    units = pool_units(SOLD_OUT)
    won = {
        str(h["id"]): WonHold(str(h["id"]), str(h["holder"]), pool_items(h), frozenset({str(h["status"])}))
        for h in SOLD_OUT
    }
    listed = {str(h["id"]): h for h in SOLD_OUT}

    assert units == {
        ("e1", "floor"): Units(held=3, confirmed=2),
        ("e1", "balcony"): Units(held=1, confirmed=2),
        ("e2", "floor"): Units(held=2, confirmed=2),
    }
    assert unsold_breaches(CAPACITY, units) == []
    assert oversold_breaches(CAPACITY, units) == []
    assert holder_limit_breaches(holder_units(SOLD_OUT), PER_HOLDER) == []
    assert ledger_breaches(won, listed, {"ann", "bob", "cid", "dee"}) == []
    e1 = availability("e1", ("floor", 5, 0, 3, 2), ("balcony", 3, 0, 1, 2))
    assert availability_breaches("e1", e1, CAPACITY, units) == []
    assert availability_breaches("e2", availability("e2", ("floor", 4, 0, 2, 2)), CAPACITY, units) == []


def test_ga_a_pool_with_units_left_is_not_sold_out() -> None:
    units = pool_units(SOLD_OUT[1:])  # ann's 3 units of e1/floor were never sold

    assert unsold_breaches(CAPACITY, units) == [
        "pool e1/floor is not sold out: 2 of 5 units held or confirmed"
    ]
    assert unsold_breaches({**CAPACITY, ("e2", "vip"): 1}, pool_units(SOLD_OUT)) == [
        "pool e2/vip is not sold out: 0 of 1 units held or confirmed"
    ]


def test_ga_more_live_units_than_capacity_is_oversold() -> None:
    extra = ga_hold("h6", "eve", "held", PoolItem("e2", "floor", 1))
    stray = ga_hold("h7", "eve", "confirmed", PoolItem("e3", "floor", 1))

    breaches = oversold_breaches(CAPACITY, pool_units([*SOLD_OUT, extra, stray]))

    assert breaches == [
        "pool e2/floor is oversold per the holds: 5 units live (3 held, 2 confirmed) for a capacity of 4",
        "1 units of pool e3/floor, which is not on sale, per the holds",
    ]
    # A cancelled hold's units are back on sale: they oversell nothing.
    assert oversold_breaches(CAPACITY, pool_units([*SOLD_OUT, {**extra, "status": "cancelled"}])) == []


def test_ga_a_holder_past_the_limit_of_an_event_is_a_breach() -> None:
    # bob's 4 units of e1 plus 1 more: 5 live units of e1. A multi-event hold counts in each of its events.
    more = ga_hold("h6", "bob", "held", PoolItem("e1", "balcony", 1), PoolItem("e2", "floor", 1))

    assert holder_limit_breaches(holder_units([*SOLD_OUT, more]), PER_HOLDER) == [
        "1 holders have more than 4 live units of an event: bob has 5 in e1"
    ]
    # Units of ended holds are not live: dee's cancelled 2 do not add to her confirmed 2.
    assert holder_units(SOLD_OUT)[("dee", "e2")] == 2


def test_ga_availability_that_disagrees_with_the_holds_is_a_breach() -> None:
    units = pool_units(SOLD_OUT)
    # Held one short (a release counted twice) and available derived from it.
    one_short = availability("e1", ("floor", 5, 1, 2, 2), ("balcony", 3, 0, 1, 2))
    # Held and confirmed right, available not capacity - held - confirmed.
    inconsistent = availability("e2", ("floor", 4, 1, 2, 2))

    assert availability_breaches("e1", one_short, CAPACITY, units) == [
        "availability of e1/floor says {'capacity': 5, 'held': 2, 'confirmed': 2, 'available': 1}, the holds "
        "say {'capacity': 5, 'held': 3, 'confirmed': 2, 'available': 0}"
    ]
    assert availability_breaches("e2", inconsistent, CAPACITY, units) == [
        "availability of e2/floor says {'capacity': 4, 'held': 2, 'confirmed': 2, 'available': 1}, the holds "
        "say {'capacity': 4, 'held': 2, 'confirmed': 2, 'available': 0}"
    ]
    missing = availability("e1", ("floor", 5, 0, 3, 2))
    assert availability_breaches("e1", missing, CAPACITY, units) == [
        "availability of e1 shows pools ['floor'], on sale ['balcony', 'floor']"
    ]
    assert availability_breaches("e2", {**inconsistent, "event_id": "e1"}, CAPACITY, units) == [
        "availability of e2 names event 'e1'"
    ]


def test_ga_the_listing_must_be_exactly_the_holds_won() -> None:
    holders = {"ann", "bob", "cid", "dee"}
    won = {str(h["id"]): WonHold(str(h["id"]), str(h["holder"]), pool_items(h)) for h in SOLD_OUT[:3]}
    won["h2"].allowed = frozenset({"confirmed"})
    listed = {str(h["id"]): h for h in SOLD_OUT[:3]}
    # A multi-event ask refused with 409 that still left a hold on the event that had units (not all or
    # nothing), a stranger's live hold on the run's pools, and a cancel answered 200 but listed held.
    partial = ga_hold("p1", "cid", "held", PoolItem("e2", "floor", 1))
    stranger = ga_hold("s1", "zed", "held", PoolItem("e1", "floor", 1))
    uncancelled = {**SOLD_OUT[0], "status": "held"}
    won["h1"].allowed = frozenset({"cancelled"})

    breaches = ledger_breaches(won, {**listed, "h1": uncancelled, "p1": partial, "s1": stranger}, holders)

    assert breaches == [
        "1 holds of this run's holders that no 201 made (granted behind a refusal?): ['p1']",
        "1 live holds on the run's pools are not this run's: ['s1']",
        "hold h1 is listed held, but its answers say cancelled",
    ]
    del listed["h3"]
    assert ledger_breaches(won, listed, holders)[0] == "1 holds won (201) are not listed: ['h3']"
    other_items = {**SOLD_OUT[2], "items": [PoolItem("e2", "floor", 2).body()]}
    assert ledger_breaches(won, {**listed, "h3": other_items}, holders)[-1] == (
        "hold h3 is listed with other items or holder than its 201 gave"
    )


def ga_reply(status: int, **fields: object) -> Reply:
    return Reply(status, {"status": status, **fields})


def test_ga_create_answers_follow_the_holder_limit_and_all_or_nothing() -> None:
    second = Ask("ann", (PoolItem("e1", "floor", 3),))  # ann holds 2 of e1: 2 + 3 passes 4
    live = {"e1": 2}
    granted = {"id": "h9", "holder": "ann", "event_id": "e1", "items": [PoolItem("e1", "floor", 3).body()]}
    limit = {"type": "https://gateway/problems/holder-limit", "event_id": "e1", "limit": 4, "requested": 3}

    def complaint(reply: Reply, ask: Ask = second, held: dict[str, int] = live) -> str | None:
        return create_complaint(reply, ask, live=held, per_holder=PER_HOLDER, own={})

    assert complaint(ga_reply(409, **limit, held=2)) is None
    assert complaint(Reply(201, {**granted, "status": "held"})) == (
        "a 201 past the per-holder limit of 4 in e1 (live units {'e1': 2}, asked {'e1': 3})"
    )
    assert complaint(ga_reply(409, **limit, held=1)) == (
        "a 409 holder-limit saying {'limit': 4, 'held': 1, 'requested': 3}, but the holder knows "
        "{'limit': 4, 'held': 2, 'requested': 3}"
    )
    assert complaint(ga_reply(409, **limit, held=1), held={"e1": 1}) == (
        "a 409 holder-limit although 1 + 3 <= 4"
    )
    assert complaint(Reply(201, {**granted, "status": "held"}), held={"e1": 1}) is None

    both = Ask("bob", (PoolItem("e1", "floor", 2), PoolItem("e2", "floor", 1)))
    short = {"type": "https://gateway/problems/slot-unavailable"}
    e2_empty = {"event_id": "e2", "pool_id": "floor", "requested": 1, "available": 0}
    assert complaint(ga_reply(409, **short, unavailable=[e2_empty]), both, {}) is None
    e1_enough = {"event_id": "e1", "pool_id": "floor", "requested": 2, "available": 2}
    assert complaint(ga_reply(409, **short, unavailable=[e1_enough]), both, {}) == (
        f"a 409 slot-unavailable naming {e1_enough}, which has the units asked"
    )
    multi = {
        "id": "h8",
        "holder": "bob",
        "status": "held",
        "event_id": None,
        "items": [i.body() for i in both.items],
    }
    assert complaint(Reply(201, multi), both, {}) is None
    assert complaint(Reply(201, {**multi, "items": multi["items"][:1], "event_id": "e1"}), both, {}) == (
        "a 201 that is not a held hold of this holder on exactly the items asked"
    )
    assert complaint(Reply(200, multi), both, {}) == (
        "a 200 that is not one of this holder's live holds on exactly these items"
    )
    assert (
        create_complaint(Reply(200, multi), both, live={}, per_holder=PER_HOLDER, own={"h8": both.items})
        is None
    )


# --- general admission, end to end ------------------------------------------------------------------------

GA = {"GA_POOLS": "floor:30,balcony:20", "GA_THINK_MS": "20", "GA_EVENT_ID": "ga"}


async def test_ga_sale_end_to_end(gateway: Gateway) -> None:
    """The general-admission sale against the gateway's inventory API: sold out exactly, PASS, exit 0."""

    run = await run_locust("GaSaleUser", gateway.url, users=60, env=GA)

    assert run.exit_code == 0, str(run)
    assert run.verdict.startswith(PASS), run
    assert "the demand did not outlast the supply" not in run.output, run
    # Its own look, apart from the verdict's code: once the 1 s cache has turned, no pool has a unit left.
    await asyncio.sleep(1.1)
    for event in ("ga-1", "ga-2"):
        shown = (await gateway.client.get(f"/v1/events/{event}/availability")).json()
        assert {pool["pool_id"]: pool["available"] for pool in shown["pools"]} == {"floor": 0, "balcony": 0}
    # And the listing's live holds (this test's database has no others) carry exactly the 100 units on sale.
    units = 0
    for status in ("held", "confirmed"):
        page = await gateway.client.get("/v1/holds", params={"status": status, "limit": 1000})
        units += sum(item.get("quantity", 0) for hold in page.json()["holds"] for item in hold["items"])
    assert units == 2 * (30 + 20)
