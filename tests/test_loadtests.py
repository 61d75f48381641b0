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
from tests.conftest import make_settings
from tests.support import Gateway, active_holds_per_slot, running_gateway

LOCUSTFILE = Path(__file__).resolve().parent.parent / "loadtests" / "locustfile.py"
# The scenarios' settings; the tests give each run its own, and nothing leaks in from the shell.
SCENARIO_VARIABLES = ("STORM_", "DEGRADED_", "FLASH_", "MIX_", "EDGE_", "GATEWAY_OPS_TOKEN")
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
