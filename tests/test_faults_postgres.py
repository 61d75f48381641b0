"""Postgres faults, one at a time: restarts, killed and frozen backends, lost replies, failed commits, an
exhausted pool, a refusing server, a gateway killed mid-create. Under each: never two winners, never a 201
without a commit, no 500 (a planned 503 is problem+json with Retry-After), no request past its budget, and the
gateway recovers by itself."""

import asyncio
import itertools
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from gateway import keys
from gateway.chaos.proxy import FaultProxy
from gateway.embedded import LocalPostgres, free_port
from gateway.migrations import migrate
from tests.conftest import make_settings
from tests.support import QUIET_BACKGROUND, Gateway, active_holds_per_slot, fetch, redis_keys, running_gateway

PLANNED_PROBLEMS = frozenset({"backend-unavailable", "overloaded", "outcome-unknown"})
# Tight budgets, so that each fault resolves within a second or two.
FAST: dict[str, object] = {
    "db_acquire_timeout_s": 1.0,
    "db_connect_timeout_s": 1.0,
    "db_retry_interval_s": 0.3,
    "claim_resolve_budget_s": 1.5,
    "db_command_timeout_s": 1.5,
    "db_statement_timeout_ms": 1500,
}
# The longest a create may take under FAST: a claim (acquire + command), the resolve budget, one more attempt
# in flight when it runs out, and slack for a 2-core machine shared with other suites.
REQUEST_BUDGET_S = 8.0
_databases = itertools.count()


@dataclass
class Answer:
    """One request as the client saw it."""

    kind: str  # "create" or "confirm"
    status: int  # 0: the request did not finish within REQUEST_BUDGET_S
    body: dict[str, Any]
    headers: httpx.Headers
    seconds: float
    hold_id: str | None = None  # the hold confirmed

    @property
    def problem(self) -> str | None:
        kind = self.body.get("type")
        return kind.rpartition("/")[2] if isinstance(kind, str) else None


async def timed(kind: str, request: Awaitable[httpx.Response], hold_id: str | None = None) -> Answer:
    started = time.monotonic()
    try:
        response = await asyncio.wait_for(request, REQUEST_BUDGET_S)
    except TimeoutError:
        return Answer(kind, 0, {}, httpx.Headers(), time.monotonic() - started, hold_id)
    body = response.json() if response.content else {}
    return Answer(kind, response.status_code, body, response.headers, time.monotonic() - started, hold_id)


def assert_planned_503(answer: Answer, problems: frozenset[str] = PLANNED_PROBLEMS) -> None:
    assert answer.status == 503, answer
    assert answer.headers.get("content-type", "").startswith("application/problem+json"), answer
    assert answer.problem in problems, answer
    assert int(answer.headers["retry-after"]) >= 1, answer


def assert_no_unplanned(answers: list[Answer], allowed: dict[str, set[int]]) -> None:
    """Every answer is one the gateway plans for its kind of request; each 503 is a planned one."""
    for answer in answers:
        assert answer.status in allowed[answer.kind], answer
        if answer.status == 503:
            assert_planned_503(answer)


async def assert_commits_kept(dsn: str, answers: list[Answer]) -> None:
    """Every 201 names a hold Postgres has; every confirm answered 200 is confirmed there."""
    created = [a.body["id"] for a in answers if a.kind == "create" and a.status == 201]
    confirmed = [a.hold_id for a in answers if a.kind == "confirm" and a.status == 200]
    rows = await fetch(dsn, "SELECT id, status FROM holds WHERE id = ANY($1::text[])", created + confirmed)
    status = {r["id"]: r["status"] for r in rows}
    assert set(created) <= set(status), set(created) - set(status)
    assert {status.get(h) for h in confirmed} <= {"confirmed"}


async def assert_one_winner_per_slot(dsn: str) -> None:
    per_slot = await active_holds_per_slot(dsn)
    assert per_slot, "no hold at all"
    assert max(per_slot.values()) == 1, {k: v for k, v in per_slot.items() if v > 1}


async def slot_lease(redis_url: str, prefix: str, event_id: str, slot_id: str) -> tuple[str | None, int]:
    """The lease value on a slot in Redis and its PTTL in ms (-2: no key)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        key = keys.slot_key(prefix, event_id, slot_id)
        value: str | None = await client.get(key)
        return value, await client.pttl(key)
    finally:
        await client.aclose()


async def create_hold(
    gateway: Gateway, event_id: str, slots: list[str], holder: str, key: str | None = None
) -> Answer:
    headers = {"Idempotency-Key": key} if key else None
    body = {"event_id": event_id, "slots": slots, "holder": holder}
    return await timed("create", gateway.post("/v1/holds", body, headers))


async def confirm_hold(gateway: Gateway, hold_id: str, holder: str) -> Answer:
    return await timed("confirm", gateway.post(f"/v1/holds/{hold_id}/confirm", {"holder": holder}), hold_id)


async def until_created(gateway: Gateway, event_id: str, within_s: float) -> Answer:
    """Ask for a fresh slot until a 201 comes (the gateway recovered), or fail after within_s."""
    deadline = time.monotonic() + within_s
    for attempt in itertools.count():
        answer = await create_hold(gateway, event_id, [f"R-{attempt}"], "recovery")
        if answer.status == 201:
            return answer
        assert answer.status == 503, answer
        assert_planned_503(answer)
        assert time.monotonic() < deadline, f"no recovery within {within_s}s: {answer}"
        await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


async def storm(gateway: Gateway, tag: str, stop: asyncio.Event, contenders: int = 8) -> list[Answer]:
    """Waves of creates, `contenders` per hot slot on three slots of a fresh event, beside the confirms of the
    previous wave's winners, until `stop` is set (and at least one wave ran)."""
    answers: list[Answer] = []
    winners: list[tuple[str, str]] = []
    for wave in itertools.count():
        creates = [
            create_hold(gateway, f"{tag}-{wave}", [f"S-{i % 3}"], f"user-{i}") for i in range(3 * contenders)
        ]
        confirms = [confirm_hold(gateway, hold_id, holder) for hold_id, holder in winners]
        done = await asyncio.gather(*creates, *confirms)
        answers += done
        winners = [(a.body["id"], a.body["holder"]) for a in done if a.kind == "create" and a.status == 201]
        if stop.is_set():
            return answers
    raise AssertionError("unreachable")


async def assert_clean_wave(gateway: Gateway, event_id: str) -> None:
    """Three hot slots, eight contenders each: exactly three 201s, the rest 409, the winners confirm."""
    answers = await asyncio.gather(
        *(create_hold(gateway, event_id, [f"S-{i % 3}"], f"user-{i}") for i in range(24))
    )
    assert sorted(a.status for a in answers) == [201] * 3 + [409] * 21, answers
    confirms = await asyncio.gather(
        *(confirm_hold(gateway, a.body["id"], a.body["holder"]) for a in answers if a.status == 201)
    )
    assert [c.status for c in confirms] == [200] * 3, confirms


# Fixtures: a Postgres of this module's own, to restart and freeze; proxies; gateways.


@pytest.fixture(name="own_postgres", scope="module")
def fx_own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    with LocalPostgres(tmp_path_factory.mktemp("own-postgres"), durable=False) as server:
        yield server


@pytest.fixture(name="own_database_url")
async def fx_own_database_url(own_postgres: LocalPostgres) -> AsyncIterator[str]:
    """A fresh, migrated database in the module's own Postgres."""
    name = f"faults_{next(_databases)}"
    admin = await asyncpg.connect(own_postgres.dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    dsn = f"{own_postgres.dsn.rpartition('/')[0]}/{name}"
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield dsn
    admin = await asyncpg.connect(own_postgres.dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture(name="pg_proxy")
async def fx_pg_proxy(database_url: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.in_front_of(database_url, protocol="postgres") as proxy:
        yield proxy


@asynccontextmanager
async def gateway_behind(
    proxy: FaultProxy, database_url: str, redis_url: str, key_prefix: str, **overrides: object
) -> AsyncIterator[Gateway]:
    """A gateway whose Postgres connections go through `proxy`; its background passes run once, at start."""
    settings = make_settings(
        proxy.url(database_url), redis_url, key_prefix, **(FAST | QUIET_BACKGROUND | overrides)
    )
    async with running_gateway(settings) as gateway:
        # Wait out the start-up passes (the sweep, the feed's, the dispatcher's): unless a test asks for more
        # sweeps, none runs after them, so a fault armed next (a dropped COMMIT reply) meets a request's
        # statement, not theirs.
        settle_s = 0.5 if settings.sweep_interval_s >= 60 else 0.0
        deadline = time.monotonic() + 10
        seen, quiet_since = proxy.commands_seen(b""), time.monotonic()
        while proxy.commands_seen(b"COMMIT") < 1 or time.monotonic() - quiet_since < settle_s:
            assert time.monotonic() < deadline, "the start-up passes did not settle"
            await asyncio.sleep(0.01)
            if (now_seen := proxy.commands_seen(b"")) != seen:
                seen, quiet_since = now_seen, time.monotonic()
        yield gateway


async def gateway_backends(dsn: str) -> list[asyncpg.Record]:
    return await fetch(
        dsn,
        """
        SELECT pid, state, wait_event_type FROM pg_stat_activity
        WHERE datname = current_database() AND application_name LIKE 'reservation-gateway/%'
        """,
    )


# 1. Postgres restarted mid-storm.


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_restart_mid_storm(
    mode: str, own_postgres: LocalPostgres, own_database_url: str, redis_url: str, key_prefix: str
) -> None:
    """A restart of Postgres during a storm of creates and confirms: every answer is 201/200/409 or a planned
    503 with Retry-After, none past its budget; at most one live hold per slot; every 201 and every confirm
    is in Postgres after the restart; and the same gateway serves again once Postgres is back."""
    settings = make_settings(own_database_url, redis_url, key_prefix, **FAST)
    async with running_gateway(settings) as gateway:
        stop = asyncio.Event()
        lanes = [asyncio.create_task(storm(gateway, f"show{lane}", stop, contenders=5)) for lane in range(4)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(own_postgres.restart, mode)  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        stop.set()
        answers = [answer for lane in await asyncio.gather(*lanes) for answer in lane]
        recovered = await until_created(gateway, "after", within_s=5)
        await assert_clean_wave(gateway, "after-storm")

    assert_no_unplanned(answers, {"create": {201, 409, 503}, "confirm": {200, 503}})
    assert max(a.seconds for a in answers) < REQUEST_BUDGET_S
    assert any(a.status == 503 for a in answers), "the storm never met the restart"
    assert recovered.status == 201
    await assert_one_winner_per_slot(own_database_url)
    await assert_commits_kept(own_database_url, answers)


# 2. Backends terminated mid-storm.


async def test_backends_terminated_mid_storm(gateway: Gateway, database_url: str) -> None:
    """pg_terminate_backend on every gateway backend, three times during a storm: no 500, no hang, one winner
    per slot, every 201 and confirm committed; the next request after it succeeds at once (the pool opens
    new connections, and the breaker, whose connects never failed, stays closed)."""
    stop = asyncio.Event()
    storming = asyncio.create_task(storm(gateway, "show", stop))
    terminated = 0
    for _ in range(3):
        await asyncio.sleep(0.3)
        rows = await fetch(
            database_url,
            """
            SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity
            WHERE datname = current_database() AND application_name LIKE 'reservation-gateway/%'
            """,
        )
        terminated += sum(r["done"] for r in rows)
    stop.set()
    answers = await storming
    right_after = await create_hold(gateway, "after", ["A-1"], "alice")
    await assert_clean_wave(gateway, "after-storm")

    assert terminated >= 3
    assert_no_unplanned(answers, {"create": {201, 409, 503}, "confirm": {200, 503}})
    assert max(a.seconds for a in answers) < REQUEST_BUDGET_S
    assert right_after.status == 201, right_after
    await assert_one_winner_per_slot(database_url)
    await assert_commits_kept(database_url, answers)


# 3. A frozen backend.


async def test_frozen_backend_costs_its_requests_the_command_budget_only(
    own_database_url: str, redis_url: str, key_prefix: str
) -> None:
    """One gateway backend stopped (SIGSTOP): requests that get its connection wait out db_command_timeout_s
    (plus slack) and never hang: a read then gets a planned 503, a create's unanswered claim is resolved on
    another connection; the others succeed meanwhile; after SIGCONT the gateway serves as before, and no
    slot has two winners."""
    settings = make_settings(
        own_database_url,
        redis_url,
        key_prefix,
        # The background readers run once, at start: a later pass could take the frozen connection before
        # any request.
        **(
            FAST
            | QUIET_BACKGROUND
            | {"db_pool_min_size": 3, "db_pool_max_size": 3, "db_command_timeout_s": 1.0}
        ),
    )
    async with running_gateway(settings) as gateway:
        hold = await create_hold(gateway, "show", ["A-1"], "alice")
        assert hold.status == 201
        pids = [r["pid"] for r in await gateway_backends(own_database_url)]
        assert len(pids) == 3, pids
        os.kill(pids[0], signal.SIGSTOP)
        try:
            answers: list[Answer] = []
            for batch in range(4):
                answers += await asyncio.gather(
                    *(timed("read", gateway.client.get(f"/v1/holds/{hold.body['id']}")) for _ in range(4)),
                    *(create_hold(gateway, "show", [f"B-{batch}-{i}"], f"user-{i}") for i in range(4)),
                )
        finally:
            os.kill(pids[0], signal.SIGCONT)
        await asyncio.sleep(0.2)
        after = await asyncio.gather(
            *(timed("read", gateway.client.get(f"/v1/holds/{hold.body['id']}")) for _ in range(6)),
            *(create_hold(gateway, "show", [f"C-{i}"], f"user-{i}") for i in range(6)),
        )
        rival = await create_hold(gateway, "show", ["A-1"], "bob")

    assert_no_unplanned(answers, {"read": {200, 503}, "create": {201, 503}})
    # The statement's timeout, then as long again for asyncpg to give up on cancelling it and close the
    # connection, plus slack.
    slow = [a for a in answers if a.seconds > 2 * settings.db_command_timeout_s + 0.75]
    # A request that met the frozen backend waited out the command timeout: a read then gets 503, a create
    # (its claim's answer lost) is resolved on another connection and usually gets its 201 after all.
    met = [a for a in answers if a.seconds >= settings.db_command_timeout_s]
    failed = [a for a in answers if a.status == 503]
    assert slow == [], slow
    assert met, "no request met the frozen backend"
    assert len(failed) < len(answers) / 2, failed
    assert [a.status for a in after] == [200] * 6 + [201] * 6, after
    assert rival.status == 409
    await assert_one_winner_per_slot(own_database_url)
    await assert_commits_kept(own_database_url, answers + after)


# 4. A lost reply to the claim.


@pytest.mark.parametrize(
    ("slots", "key", "lost"),
    [
        pytest.param(["A-1"], "key-1", b"COMMIT", id="keyed-commit"),
        pytest.param(["A-1", "A-2"], None, b"COMMIT", id="multi-slot-commit"),
        pytest.param(["A-1"], None, b"INSERT INTO hold_slots", id="single-statement"),
    ],
)
async def test_lost_reply_to_the_claim_is_resolved(
    *,
    slots: list[str],
    key: str | None,
    lost: bytes,
    pg_proxy: FaultProxy,
    database_url: str,
    redis_url: str,
    key_prefix: str,
) -> None:
    """The claim commits but its answer never reaches the gateway: the client still gets 201 naming the one
    hold Postgres has with that token, the Redis lease stays on the slots (the hold's lease value), and a
    rival gets 409."""
    async with gateway_behind(pg_proxy, database_url, redis_url, key_prefix) as gateway:
        seen_before = pg_proxy.commands_seen(lost)
        pg_proxy.drop_reply(lost)
        answer = await create_hold(gateway, "show", slots, "alice", key)
        rival = await create_hold(gateway, "show", slots[-1:], "bob")

    assert pg_proxy.commands_seen(lost) > seen_before
    assert answer.status == 201, answer
    rows = await fetch(database_url, "SELECT id, token FROM holds WHERE holder = 'alice'")
    assert [r["id"] for r in rows] == [answer.body["id"]]
    expected = keys.lease_value(rows[0]["token"], "alice")
    for slot in slots:
        value, ttl_ms = await slot_lease(redis_url, key_prefix, "show", slot)
        assert value == expected
        assert ttl_ms > 60_000  # stretched to the hold's life, not left pending
    assert rival.status == 409, rival
    await assert_one_winner_per_slot(database_url)


async def test_lost_reply_to_a_pool_claim_is_resolved(
    pg_proxy: FaultProxy, database_url: str, redis_url: str, key_prefix: str
) -> None:
    """A quantity hold whose COMMIT reply is lost: the client still gets 201 naming the one hold Postgres
    has, the pool counts its units once (not twice, from the claim run again), Redis's counter carries the
    hold's entry, and the next request past the capacity is refused."""
    async with gateway_behind(pg_proxy, database_url, redis_url, key_prefix) as gateway:
        put = await gateway.client.put(
            "/v1/events/ga/inventory", json={"pools": [{"pool_id": "floor", "capacity": 3}]}
        )
        assert put.status_code == 200, put.text
        pg_proxy.drop_reply(b"COMMIT")
        answer = await timed(
            "create",
            gateway.post(
                "/v1/holds",
                {"holder": "alice", "items": [{"event_id": "ga", "pool_id": "floor", "quantity": 2}]},
            ),
        )
        rival = await gateway.post(
            "/v1/holds", {"holder": "bob", "items": [{"event_id": "ga", "pool_id": "floor", "quantity": 2}]}
        )

    assert answer.status == 201, answer
    rows = await fetch(database_url, "SELECT id, token FROM holds WHERE holder = 'alice'")
    assert [r["id"] for r in rows] == [answer.body["id"]]
    units = await fetch(database_url, "SELECT held_units, confirmed_units FROM inventory_pools")
    assert [(r["held_units"], r["confirmed_units"]) for r in units] == [(2, 0)]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entry = await client.hget(
            keys.pool_key(key_prefix, "ga", "floor"),
            keys.pool_entry_field(keys.lease_value(rows[0]["token"], "alice")),
        )
    finally:
        await client.aclose()
    assert entry == "2"
    assert rival.status_code == 409, rival.text


async def test_lost_reply_then_postgres_gone_is_outcome_unknown(
    pg_proxy: FaultProxy, database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The commit's reply is lost and Postgres stays unreachable past claim_resolve_budget_s: 503
    outcome-unknown, and the pending lease is kept (the hold exists). Once Postgres is back, the client's
    retry with the same Idempotency-Key gets that hold."""
    async with gateway_behind(
        pg_proxy, database_url, redis_url, key_prefix, lease_pending_ms=20_000
    ) as gateway:
        # Each round trip through the proxy now takes 200 ms or more: the refusal below lands before the
        # gateway can ask Postgres again on any connection.
        pg_proxy.latency(100)
        pg_proxy.drop_reply(b"COMMIT")
        request = asyncio.create_task(create_hold(gateway, "show", ["A-1"], "alice", "key-1"))
        conn = await asyncpg.connect(database_url)
        try:
            deadline = time.monotonic() + 5
            while not await conn.fetchval("SELECT count(*) FROM holds WHERE holder = 'alice'"):
                assert time.monotonic() < deadline, "the claim never committed"
                await asyncio.sleep(0.002)
        finally:
            await conn.close()
        pg_proxy.refuse()
        answer = await request
        lease_during = await slot_lease(redis_url, key_prefix, "show", "A-1")
        pg_proxy.heal()
        await asyncio.sleep(gateway.settings.db_retry_interval_s + 0.1)
        retry = await create_hold(gateway, "show", ["A-1"], "alice", "key-1")
        rival = await create_hold(gateway, "show", ["A-1"], "bob")

    assert_planned_503(answer, frozenset({"outcome-unknown"}))
    assert answer.seconds < gateway.settings.claim_resolve_budget_s + 3
    rows = await fetch(database_url, "SELECT id, token FROM holds WHERE holder = 'alice'")
    assert len(rows) == 1
    assert lease_during[0] == keys.lease_value(rows[0]["token"], "alice")
    assert retry.status == 201, retry
    assert retry.body["id"] == rows[0]["id"]
    assert rival.status == 409, rival


# 5. The commit fails after the Redis acquire.

INJECT_FAILURE = """
CREATE FUNCTION fail_doomed_claims() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.holder = 'doomed' THEN
        RAISE EXCEPTION 'injected by the test' USING ERRCODE = '{errcode}', CONSTRAINT = '{constraint}';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_doomed_claims BEFORE INSERT ON holds
    FOR EACH ROW EXECUTE FUNCTION fail_doomed_claims();
"""


@pytest.mark.parametrize("slots", [["A-1"], ["A-1", "A-2"]], ids=["one-slot", "two-slots"])
@pytest.mark.parametrize(
    ("fault", "status", "problem"),
    [
        pytest.param("unique_violation", 409, "slot-unavailable", id="unique-violation"),
        pytest.param("40P01", 503, "backend-unavailable", id="deadlock"),
        pytest.param("refused", 503, "backend-unavailable", id="connection-refused"),
    ],
)
async def test_commit_failing_after_the_redis_acquire(
    *,
    fault: str,
    status: int,
    problem: str,
    slots: list[str],
    pg_proxy: FaultProxy,
    database_url: str,
    redis_url: str,
    key_prefix: str,
) -> None:
    """The Redis lease is taken, then Postgres turns the claim down with an answer (a unique violation of the
    one-active-hold index: 409, a lost race; a deadlock: 503 backend-unavailable, retry) or cannot be reached
    (503 backend-unavailable). The outcome is known either way: no hold row, the pending lease is released
    at once, and the slots go to the next request once the fault is gone. Never a 500."""
    if fault != "refused":
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(INJECT_FAILURE.format(errcode=fault, constraint="hold_slots_one_active_hold"))
        finally:
            await conn.close()
    async with gateway_behind(pg_proxy, database_url, redis_url, key_prefix) as gateway:
        if fault == "refused":
            pg_proxy.refuse()
        answer = await create_hold(gateway, "show", slots, "doomed")
        leases_after = await redis_keys(redis_url, key_prefix)
        pg_proxy.heal()
        next_one = await until_created_on(gateway, slots, within_s=3)

    assert answer.status == status, answer
    assert answer.problem == problem, answer
    if status == 503:
        assert_planned_503(answer)
    assert answer.seconds < 2.0
    assert leases_after == []
    rows = await fetch(database_url, "SELECT holder FROM holds")
    assert [r["holder"] for r in rows] == ["next"]
    assert next_one.body["slots"] == slots


async def until_created_on(gateway: Gateway, slots: list[str], within_s: float) -> Answer:
    deadline = time.monotonic() + within_s
    while True:
        answer = await create_hold(gateway, "show", slots, "next")
        if answer.status == 201 or time.monotonic() > deadline:
            assert answer.status == 201, answer
            return answer
        assert_planned_503(answer)
        await asyncio.sleep(0.1)


# 6. Every pooled connection busy.


async def test_pool_exhaustion_is_503_overloaded_within_the_acquire_timeout(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """Both pooled connections wait on a row lock the test holds: further requests get 503 overloaded with
    Retry-After within db_acquire_timeout_s (plus slack), their pending leases released; none hangs. Once
    the lock goes, the waiting confirms finish and everything succeeds."""
    settings = make_settings(
        database_url,
        redis_url,
        key_prefix,
        db_pool_min_size=2,
        db_pool_max_size=2,
        db_acquire_timeout_s=0.5,
        db_command_timeout_s=10,
        db_statement_timeout_ms=10_000,
        sweep_interval_s=3600,
    )
    async with running_gateway(settings) as gateway:
        hold = await create_hold(gateway, "show", ["A-1"], "alice")
        hold_id = hold.body["id"]
        locker = await asyncpg.connect(database_url)
        try:
            lock = locker.transaction()
            await lock.start()
            await locker.execute("SELECT 1 FROM holds WHERE id = $1 FOR UPDATE", hold_id)
            confirms = [asyncio.create_task(confirm_hold(gateway, hold_id, "alice")) for _ in range(2)]
            deadline = time.monotonic() + 5
            while sum(r["wait_event_type"] == "Lock" for r in await gateway_backends(database_url)) < 2:
                assert time.monotonic() < deadline, "the confirms never waited on the lock"
                await asyncio.sleep(0.02)
            shed = await asyncio.gather(
                *(timed("read", gateway.client.get(f"/v1/holds/{hold_id}")) for _ in range(10)),
                *(create_hold(gateway, "show", [f"B-{i}"], f"user-{i}") for i in range(10)),
            )
            leases_while_shedding = await redis_keys(redis_url, key_prefix)
            await lock.rollback()
        finally:
            await locker.close()
        confirmed = await asyncio.gather(*confirms)
        after = await asyncio.gather(*(create_hold(gateway, "show", [f"B-{i}"], f"u-{i}") for i in range(10)))

    for answer in shed:
        assert_planned_503(answer, frozenset({"overloaded"}))
        assert answer.seconds < settings.db_acquire_timeout_s + 1.0, answer
    assert leases_while_shedding == [keys.slot_key(key_prefix, "show", "A-1")]
    assert [c.status for c in confirmed] == [200, 200], confirmed
    assert [a.status for a in after] == [201] * 10, after


# 7. The thundering herd while Postgres refuses.


async def test_refusing_postgres_sees_one_probe_per_retry_interval(
    pg_proxy: FaultProxy, database_url: str, redis_url: str, key_prefix: str
) -> None:
    """Postgres refuses connections while 300 requests arrive over about 2 s: each gets a fast 503
    backend-unavailable, and the connections Postgres sees are bounded by the breaker (the pool's first
    attempts, then one probe per db_retry_interval_s), not by the request count. After it heals, the
    gateway serves again within a retry interval."""
    pool_max, interval_s = 4, 0.5
    async with gateway_behind(
        pg_proxy,
        database_url,
        redis_url,
        key_prefix,
        db_pool_max_size=pool_max,
        db_retry_interval_s=interval_s,
        sweep_interval_s=0.2,
    ) as gateway:
        pg_proxy.refuse()
        before = pg_proxy.connections_accepted
        started = time.monotonic()
        requests: list[asyncio.Task[Answer]] = []
        for batch in range(20):
            requests += [
                asyncio.create_task(create_hold(gateway, "show", [f"S-{batch}-{i}"], f"user-{i}"))
                for i in range(15)
            ]
            await asyncio.sleep(0.1)
        herd = await asyncio.gather(*requests)
        elapsed_s = time.monotonic() - started
        attempts = pg_proxy.connections_accepted - before
        pg_proxy.heal()
        recovered = await until_created(gateway, "after", within_s=interval_s + 2)
        leases = await redis_keys(redis_url, key_prefix)

    for answer in herd:
        assert_planned_503(answer, frozenset({"backend-unavailable"}))
        assert answer.seconds < 1.0, answer
    assert len(herd) == 300
    # Connect attempts: the pool's first ones (before the breaker opened), then one probe per interval; each
    # is two connections (asyncpg tries again without TLS when a TLS-preferring connect is reset).
    bound = 2 * (pool_max + math.ceil(elapsed_s / interval_s) + 1)
    assert 1 <= attempts <= bound, (attempts, elapsed_s)
    assert recovered.status == 201
    assert leases == [keys.slot_key(key_prefix, "after", recovered.body["slots"][0])]


# 8. The gateway killed between the Redis acquire and the Postgres commit.


def doomed_env(database_url: str, redis_url: str, key_prefix: str, pending_ms: int) -> dict[str, str]:
    """The environment of a `gateway serve` that kills itself right after its first Redis acquire, whose
    pending leases live `pending_ms`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return env | {
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_KEY_PREFIX": key_prefix,
        "GATEWAY_LEASE_PENDING_MS": str(pending_ms),
        "GATEWAY_TEST_FAULT_POINTS": "after_redis_acquire=kill",
    }


@asynccontextmanager
async def doomed_gateway(env: dict[str, str]) -> AsyncIterator[str]:
    """`gateway serve` in a process of its own, which kills itself right after its first Redis acquire."""
    port = free_port()
    output = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, after the process ends
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            deadline = time.monotonic() + 30
            while True:
                if process.returncode is not None:
                    output.seek(0)
                    pytest.fail(f"gateway exited: {output.read().decode()}")
                with suppress(httpx.TransportError):
                    if (await client.get(f"{url}/ready")).status_code == 200:
                        break
                assert time.monotonic() < deadline, "the gateway did not become ready"
                await asyncio.sleep(0.1)
        yield url
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 10)
        output.close()


@pytest.mark.parametrize("key", [None, "key-1"], ids=["no-key", "idempotency-key"])
async def test_gateway_killed_between_redis_acquire_and_commit(
    key: str | None, database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The gateway dies after taking the pending lease, before its claim: the client's connection drops,
    no hold exists, and the lease lapses within lease_pending_ms, so a rival then gets the slot. With an
    Idempotency-Key, the client's retry on a healthy gateway reclaims its own lease at once (201, not 409)."""
    pending_ms = 1000
    env = doomed_env(database_url, redis_url, key_prefix, pending_ms)
    headers = {"Idempotency-Key": key} if key else {}
    body = {"event_id": "show", "slots": ["A-1"], "holder": "alice"}
    settings = make_settings(database_url, redis_url, key_prefix, lease_pending_ms=pending_ms)
    # The healthy gateway is up first, so that it asks while the dead one's lease is still pending.
    async with running_gateway(settings) as gateway:
        async with doomed_gateway(env) as url, httpx.AsyncClient(timeout=10) as client:
            with pytest.raises(httpx.TransportError):
                await client.post(f"{url}/v1/holds", json=body, headers=headers)
        killed_at = time.monotonic()
        lease_value, lease_ttl_ms = await slot_lease(redis_url, key_prefix, "show", "A-1")
        rows_after_kill = await fetch(database_url, "SELECT id FROM holds")
        if key is not None:
            retry = await create_hold(gateway, "show", ["A-1"], "alice", key)
            assert retry.status == 201, retry
        else:
            rival_early = await create_hold(gateway, "show", ["A-1"], "bob")
            assert rival_early.status == 409, rival_early
            while (await slot_lease(redis_url, key_prefix, "show", "A-1"))[0] is not None:
                assert time.monotonic() - killed_at < pending_ms / 1000 + 0.5, "the pending lease outlived it"
                await asyncio.sleep(0.02)
            rival = await create_hold(gateway, "show", ["A-1"], "bob")
            assert rival.status == 201, rival

    assert rows_after_kill == []
    assert lease_value is not None
    assert lease_value.endswith(":" + keys.holder_fingerprint("alice"))
    assert 0 < lease_ttl_ms <= pending_ms
    rows = await fetch(database_url, "SELECT holder FROM holds")
    assert [r["holder"] for r in rows] == ["alice" if key else "bob"]
