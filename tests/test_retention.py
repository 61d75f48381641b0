"""Retention: holds that ended long ago leave the hot tables (archived, or deleted), and nothing else."""

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from gateway.sweeper import sweep_once
from tests.conftest import make_settings
from tests.support import Gateway, running_gateway, statuses

NO_SWEEP = {"sweep_interval_s": 3600.0}  # the test runs each pass itself
DAY_S = 86_400


@pytest.fixture(name="unswept_gateway")
async def fx_unswept_gateway(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Gateway]:
    """A gateway with Redis in front whose sweeper does not run during the test (its first pass, at start,
    finds nothing)."""
    async with running_gateway(make_settings(database_url, redis_url, key_prefix, **NO_SWEEP)) as gateway:
        yield gateway


async def created(gateway: Gateway, slots: list[str], holder: str, key: str | None = None) -> str:
    headers = {"Idempotency-Key": key} if key else None
    body = {"event_id": "show-1", "slots": slots, "holder": holder, "ttl_seconds": 600}
    response = await gateway.post("/v1/holds", body, headers)
    assert response.status_code == 201, response.text
    hold_id: str = response.json()["id"]
    return hold_id


async def act(gateway: Gateway, hold_id: str, action: str, holder: str) -> None:
    response = await gateway.client.post(f"/v1/holds/{hold_id}/{action}", json={"holder": holder})
    assert response.status_code == 200, response.text


async def backdate(conn: asyncpg.Connection, hold_id: str, age_s: int, *, record_too: bool = True) -> None:
    """Move every moment of a hold (and of its idempotency record) `age_s` into the past."""
    shift = timedelta(seconds=age_s)
    await conn.execute(
        "UPDATE holds SET created_at = created_at - $2::interval, expires_at = expires_at - $2::interval,"
        " confirmed_at = confirmed_at - $2::interval, cancelled_at = cancelled_at - $2::interval"
        " WHERE id = $1",
        hold_id,
        shift,
    )
    await conn.execute(
        "UPDATE hold_slots SET expires_at = expires_at - $2::interval WHERE hold_id = $1", hold_id, shift
    )
    if record_too:
        await conn.execute(
            "UPDATE idempotency_keys SET created_at = created_at - $2::interval WHERE hold_id = $1",
            hold_id,
            shift,
        )


async def rows(conn: asyncpg.Connection, table: str) -> dict[tuple[str, ...], dict[str, Any]]:
    """Every row of a table by its key (hold id; hold id and slot id), as a dict of all its columns."""
    key = ("hold_id", "slot_id") if "slots" in table else ("id",)
    records = await conn.fetch(f"SELECT * FROM {table}")  # noqa: S608 - fixed table names
    return {tuple(r[k] for k in key): dict(r.items()) for r in records}


def retention_rows(table: str) -> float:
    return REGISTRY.get_sample_value("gateway_retention_rows_total", {"table": table}) or 0.0


async def test_retention_moves_exactly_the_due_holds_and_archives_them_intact(
    unswept_gateway: Gateway, database_url: str
) -> None:
    gateway = unswept_gateway
    settings = gateway.settings
    store = gateway.service.store
    old = 8 * DAY_S  # past the 7-day terminal retention
    cancelled_old = await created(gateway, ["A-1", "A-2"], "ana")
    expired_old = await created(gateway, ["B-1"], "ben")  # lapses when backdated; the same pass expires it
    keyed_old = await created(gateway, ["C-1"], "cy", key="order-1")
    record_kept = await created(gateway, ["D-1"], "dee", key="order-2")
    cancelled_in_lease_window = await created(gateway, ["E-1"], "eve")
    cancelled_2_days = await created(gateway, ["F-1"], "fay")
    confirmed_old = await created(gateway, ["G-1", "G-2"], "gus")
    live = await created(gateway, ["H-1"], "hal")
    for hold_id, holder in [
        (cancelled_old, "ana"),
        (keyed_old, "cy"),
        (record_kept, "dee"),
        (cancelled_in_lease_window, "eve"),
        (cancelled_2_days, "fay"),
    ]:
        await act(gateway, hold_id, "cancel", holder)
    await act(gateway, confirmed_old, "confirm", "gus")
    conn = await asyncpg.connect(database_url)
    try:
        for hold_id in (cancelled_old, expired_old, keyed_old, confirmed_old):
            await backdate(conn, hold_id, old)
        await backdate(conn, record_kept, old, record_too=False)  # its record is a day old at most
        await backdate(conn, cancelled_in_lease_window, 1800)
        await backdate(conn, cancelled_2_days, 2 * DAY_S)
        await store.expire_holds(1000)
        holds_before = await rows(conn, "holds")
        slots_before = await rows(conn, "hold_slots")
        counted_before = retention_rows("holds"), retention_rows("hold_slots")

        await sweep_once(store, settings)

        holds_after = await rows(conn, "holds")
        slots_after = await rows(conn, "hold_slots")
        holds_archived = await rows(conn, "holds_archive")
        slots_archived = await rows(conn, "hold_slots_archive")
        records = {r["hold_id"] for r in await conn.fetch("SELECT hold_id FROM idempotency_keys")}
    finally:
        await conn.close()

    moved = {(cancelled_old,), (expired_old,), (keyed_old,)}
    assert set(holds_archived) == moved
    assert set(holds_after) == set(holds_before) - moved
    assert set(slots_archived) == {
        (cancelled_old, "A-1"),
        (cancelled_old, "A-2"),
        (expired_old, "B-1"),
        (keyed_old, "C-1"),
    }
    assert set(slots_after) == set(slots_before) - set(slots_archived)
    # Archived intact: every column as it was, but the keyed hold's token, retired when its record went.
    expected = {k: v for k, v in holds_before.items() if k in moved}
    token = expected[(keyed_old,)]["token"]
    expected[(keyed_old,)] = {**expected[(keyed_old,)], "token": f"{token}:retired:{keyed_old}"}
    assert holds_archived == expected
    assert slots_archived == {k: v for k, v in slots_before.items() if k in slots_archived}
    assert holds_archived[(expired_old,)]["status"] == "expired"
    # Everything kept is untouched; the hold whose record is still kept stays with it.
    assert all(holds_after[k] == holds_before[k] for k in holds_after)
    assert records == {record_kept}
    assert holds_after[(live,)]["status"] == "held"
    assert (retention_rows("holds"), retention_rows("hold_slots")) == (
        counted_before[0] + 3,
        counted_before[1] + 4,
    )
    # The archived holds no longer exist for the API, and their slots are free (they were already).
    assert (await gateway.client.get(f"/v1/holds/{cancelled_old}")).status_code == 404
    assert (await gateway.client.get(f"/v1/holds/{cancelled_2_days}")).status_code == 200


async def test_retention_deletes_when_not_archiving_and_moves_old_confirmed_holds_when_told(
    database_url: str, key_prefix: str
) -> None:
    """Without Redis: backdating a hold cannot shorten the confirmed lease its confirm just set there."""
    settings = make_settings(
        database_url,
        None,
        key_prefix,
        retention_archive=False,
        retention_confirmed_s=30 * DAY_S,
        **NO_SWEEP,
    )
    async with running_gateway(settings) as gateway:
        store = gateway.service.store
        confirmed_old = await created(gateway, ["A-1"], "ana")
        confirmed_recent = await created(gateway, ["B-1"], "ben")
        cancelled_old = await created(gateway, ["C-1"], "cy")
        await act(gateway, confirmed_old, "confirm", "ana")
        await act(gateway, confirmed_recent, "confirm", "ben")
        await act(gateway, cancelled_old, "cancel", "cy")
        conn = await asyncpg.connect(database_url)
        try:
            await backdate(conn, confirmed_old, 31 * DAY_S)
            await backdate(conn, confirmed_recent, 29 * DAY_S)
            await backdate(conn, cancelled_old, 8 * DAY_S)

            await sweep_once(store, settings)

            kept = {r["id"] for r in await conn.fetch("SELECT id FROM holds")}
            kept_slots = {r["slot_id"] for r in await conn.fetch("SELECT slot_id FROM hold_slots")}
            archived = await conn.fetchval(
                "SELECT (SELECT count(*) FROM holds_archive) + (SELECT count(*) FROM hold_slots_archive)"
            )
        finally:
            await conn.close()
        assert kept == {confirmed_recent}
        assert kept_slots == {"B-1"}
        assert archived == 0
        # A confirmed hold past its retention has left: its seat is free again.
        assert (await gateway.client.get("/v1/events/show-1/slots/A-1")).json()["state"] == "free"
        assert (await gateway.hold("show-1", ["A-1"], holder="zed")).status_code == 201


BACKLOG = 20_000
STORM_SLOTS_PER_ROUND = 20
CONTENDERS = 3
ANSWER_BUDGET_S = 2.0


async def insert_backlog(database_url: str) -> None:
    """BACKLOG holds that ended 30 days ago, half cancelled, half expired, one slot row each."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """
            INSERT INTO holds (id, token, event_id, holder, slots, status, created_at, expires_at,
                               cancelled_at)
            SELECT 'old-' || i, 'old-token-' || i, 'past-' || (i % 20), 'h', ARRAY['S-' || i],
                   CASE WHEN i % 2 = 0 THEN 'cancelled' ELSE 'expired' END,
                   now() - interval '30 days', now() - interval '30 days' + interval '5 minutes',
                   CASE WHEN i % 2 = 0 THEN now() - interval '30 days' + interval '1 minute' END
            FROM generate_series(1, $1) AS i
            """,
            BACKLOG,
        )
        await conn.execute(
            "INSERT INTO hold_slots (hold_id, event_id, slot_id, status, expires_at)"
            " SELECT id, event_id, slots[1], status, expires_at FROM holds WHERE id LIKE 'old-%'"
        )
    finally:
        await conn.close()


async def test_a_big_backlog_is_retired_while_creates_storm_and_none_waits_on_it(
    database_url: str, key_prefix: str
) -> None:
    """20,000 old terminal holds are retired batch by batch while creates (all decided by Postgres: no Redis)
    keep coming on other slots: every create is answered 201 or 409 within the budget, one winner per slot,
    and no live hold is touched. Correctness under contention, not a benchmark."""
    settings = make_settings(database_url, None, key_prefix, **NO_SWEEP)
    async with running_gateway(settings) as gateway:
        await insert_backlog(database_url)
        store = gateway.service.store
        retired = 0
        retiring = True
        answers: list[tuple[int, str, float, httpx.Response]] = []  # (round, slot, seconds, response)

        async def retire_all() -> None:
            nonlocal retired, retiring
            try:
                while moved := (
                    await store.retire_holds(
                        ended_before_s=settings.retention_terminal_s,
                        confirmed_before_s=0,
                        batch_size=settings.sweep_batch_size,
                        archive=True,
                    )
                ).holds:
                    retired += moved
            finally:
                retiring = False

        async def create(round_: int, slot: str, holder: str) -> None:
            started = time.monotonic()
            response = await gateway.hold("live", [slot], holder=holder, ttl_seconds=600)
            answers.append((round_, slot, time.monotonic() - started, response))

        retirement = asyncio.create_task(retire_all())
        round_ = 0
        while retiring or round_ < 5:
            slots = [f"R{round_}-{i}" for i in range(STORM_SLOTS_PER_ROUND)]
            await asyncio.gather(
                *(create(round_, slot, f"fan-{c}") for slot in slots for c in range(CONTENDERS))
            )
            round_ += 1
        await retirement
        rounds_during = {r for r, _, _, _ in answers if r < round_ - 1}

        conn = await asyncpg.connect(database_url)
        try:
            live = await rows(conn, "holds")
            archived = await conn.fetchval("SELECT count(*) FROM holds_archive")
            live_slot_rows = await conn.fetchval("SELECT count(*) FROM hold_slots")
        finally:
            await conn.close()

    assert retired == BACKLOG
    assert archived == BACKLOG
    assert rounds_during, "the retirement ended before the storm began"
    assert set(statuses(r for _, _, _, r in answers)) <= {201, 409}, statuses(r for _, _, _, r in answers)
    slowest = max(seconds for _, _, seconds, _ in answers)
    assert slowest < ANSWER_BUDGET_S, f"a create waited {slowest:.2f} s"
    winners: dict[str, list[str]] = {}
    for _, slot, _, response in answers:
        if response.status_code == 201:
            winners.setdefault(slot, []).append(response.json()["id"])
    assert len(winners) == round_ * STORM_SLOTS_PER_ROUND
    assert all(len(ids) == 1 for ids in winners.values())
    # Every live hold is there, untouched; only they are left.
    assert set(live) == {(ids[0],) for ids in winners.values()}
    assert all(row["status"] == "held" for row in live.values())
    assert live_slot_rows == len(live)
