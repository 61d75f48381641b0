"""One background leader per database (gateway.leader), and workers told by NOTIFY (gateway.listener).

What Postgres ran proves who did the background work: a server of this module's own logs every statement with
the application_name of the connection, which names the worker. Handovers are tested with real `gateway
serve` processes killed (SIGKILL) or frozen (SIGSTOP, then SIGCONT). Bounds on handover times are loose on
purpose (a busy 2-core machine): with a 2 s lease, under 10 s.
"""

import asyncio
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import IO, Any

import asyncpg
import httpx
import pytest

from gateway.config import Settings
from gateway.embedded import LocalPostgres, free_port
from gateway.listener import Listener
from tests.conftest import make_settings
from tests.support import (
    Gateway,
    eventually,
    migrated_database,
    running_gateway,
    statement_logging_postgres,
    statements_logged_since,
)
from tests.test_cli import GATEWAY, clean_env, read_output

LEASE_S = 2.0
# How long a handover may take here, at most: a lease, the follower's wake-up, and a busy machine's slack.
HANDOVER_BOUND_S = 10.0
# The background leader's statements (first lines): the expiry and the outbox drains, and the sequencer.
LEADER_WORK = ("WITH due AS (", "SELECT pg_try_advisory_xact_lock($1) AS locked;")
CLAIM = "WITH claimed AS ("


@pytest.fixture(scope="module", name="logging_postgres")
def fx_logging_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    """A Postgres of this module's own that logs every statement with its connection's application_name."""
    with statement_logging_postgres(tmp_path_factory.mktemp("leader-postgres")) as server:
        yield server


@dataclass
class Replica:
    """A `gateway serve` process of its own (its own session, so that it can be killed or frozen whole)."""

    process: asyncio.subprocess.Process
    url: str
    output: IO[bytes]

    def stats(self, timeout_s: float = 5) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/v1/stats", timeout=timeout_s).json()
        return result

    def background(self) -> dict[str, Any]:
        role: dict[str, Any] = self.stats()["background"]
        return role

    def signal(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)


def replica_env(database_url: str, redis_url: str, key_prefix: str, **extra: str) -> dict[str, str]:
    return clean_env(
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_REDIS_URL=redis_url,
        GATEWAY_REDIS_KEY_PREFIX=key_prefix,
        GATEWAY_BACKGROUND_LEASE_S=str(LEASE_S),
        GATEWAY_MIN_TTL_S="1",
        GATEWAY_ACCESS_LOG="false",
        **extra,
    )


@asynccontextmanager
async def replica(env: dict[str, str], workers: int = 1, timeout_s: float = 60) -> AsyncIterator[Replica]:
    """Serve until the block ends; ready once /ready answers and every worker has started. Whatever state the
    test left it in (killed, frozen), it is ended."""
    port = free_port()
    output = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, after the process ends
    process = await asyncio.create_subprocess_exec(
        *GATEWAY,
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    served = Replica(process, f"http://127.0.0.1:{port}", output)
    try:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=1) as client:
            while True:
                assert process.returncode is None, f"gateway exited: {read_output(output)}"
                assert time.monotonic() < deadline, f"gateway did not become ready: {read_output(output)}"
                with suppress(httpx.TransportError):
                    ready = (await client.get(f"{served.url}/ready")).status_code == 200
                    if ready and read_output(output).count("Application startup complete.") >= workers:
                        break
                await asyncio.sleep(0.2)
        yield served
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await asyncio.wait_for(process.wait(), 30)
        output.close()


async def until(condition: Any, within_s: float, failure: str) -> float:
    """Wait (off the event loop: the condition may block) until `condition()` holds; the seconds it took."""
    started = time.monotonic()
    while True:
        with suppress(httpx.TransportError):
            if await asyncio.to_thread(condition):
                return time.monotonic() - started
        assert time.monotonic() - started < within_s, f"after {within_s} s: {failure}"
        await asyncio.sleep(0.05)


def expired_event_of(url: str, hold_id: str) -> bool:
    """Whether the feed (as this gateway serves it) has the hold's hold.expired."""
    after = 0
    while True:
        page = httpx.get(f"{url}/v1/hold-events", params={"after": after, "limit": 1000}, timeout=5).json()
        if any(e["type"] == "hold.expired" and e["hold"]["id"] == hold_id for e in page["events"]):
            return True
        if not page["events"]:
            return False
        after = int(page["next_cursor"])


def create_hold(url: str, slot: str, ttl_s: int) -> str:
    body = {"event_id": "show", "slots": [slot], "holder": "alice", "ttl_seconds": ttl_s}
    response = httpx.post(f"{url}/v1/holds", json=body, timeout=10)
    assert response.status_code == 201, response.text
    hold_id: str = response.json()["id"]
    return hold_id


async def leader_row(database_url: str) -> asyncpg.Record:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT holder, term FROM background_leader")
    finally:
        await conn.close()
    assert row is not None
    return row


# ---- one worker does the background work, as Postgres saw it ----


@pytest.mark.timeout(180)
async def test_two_workers_run_the_background_work_in_one_of_them(
    logging_postgres: LocalPostgres, redis_url: str, key_prefix: str
) -> None:
    """`gateway serve --workers 2` sweeping every 0.2 s: every statement of the sweeper and the sequencer that
    Postgres ran over a few seconds came from one worker's connections, the leader's; both workers took part
    in the election (their claims are there too)."""
    database_url = await migrated_database(logging_postgres, "two_workers_one_leader")
    env = replica_env(database_url, redis_url, key_prefix, GATEWAY_SWEEP_INTERVAL_S="0.2")
    log_path = logging_postgres.log_path
    async with replica(env, workers=2) as served:
        offset = log_path.stat().st_size
        # A window of at least two leases, so that the follower's claims fall in it; no fixed sleep: the
        # window ends once the leader has swept at least ten times (and two leases passed).
        started = time.monotonic()

        def enough() -> bool:
            logged = statements_logged_since(log_path, offset, "two_workers_one_leader")
            sweeps = sum(s.first_line.startswith(LEADER_WORK) for s in logged)
            return sweeps >= 10 and time.monotonic() - started > 2 * LEASE_S + 1

        await until(enough, 60, "the leader did not sweep")
        logged = statements_logged_since(log_path, offset, "two_workers_one_leader")
        background = served.background()
        metrics = (await asyncio.to_thread(httpx.get, f"{served.url}/metrics", timeout=5)).text

    leader_apps = {s.app for s in logged if s.first_line.startswith(LEADER_WORK)}
    claiming_apps = {s.app for s in logged if s.first_line == CLAIM}
    assert len(leader_apps) == 1, leader_apps
    assert leader_apps == {f"reservation-gateway/{background['leader_id']}"[:63]}
    assert len(claiming_apps) == 2, claiming_apps  # both workers are there, and elect
    assert leader_apps < claiming_apps
    # One sample per worker: 1 in the leader, 0 in the other.
    gauge = sorted(
        float(line.rpartition(" ")[2])
        for line in metrics.splitlines()
        if line.startswith("gateway_background_leader{")
    )
    assert gauge == [0.0, 1.0], metrics


# ---- handovers: a leader killed, a leader frozen, a leader stopping ----


@pytest.mark.timeout(180)
async def test_a_killed_leader_is_replaced_and_a_lapsed_hold_still_expires(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """Two replicas; the leader is killed (SIGKILL) as a 1 s hold is made: the other takes over within a lease
    or so, expires the hold and its hold.expired reaches the feed, well within HANDOVER_BOUND_S."""
    env = replica_env(database_url, redis_url, key_prefix)
    async with replica(env) as first, replica(env) as second:
        roles = {r.url: r.background() for r in (first, second)}
        assert sorted(role["leader"] for role in roles.values()) == [False, True], roles
        leader, survivor = (first, second) if roles[first.url]["leader"] else (second, first)
        term_before = roles[leader.url]["term"]

        hold_id = create_hold(survivor.url, "A-1", ttl_s=1)
        leader.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await until(lambda: expired_event_of(survivor.url, hold_id), 60, "the hold never expired")
        expired_after_s = time.monotonic() - killed_at
        role = survivor.background()
        row = await leader_row(database_url)  # before the survivor stops (and releases)

    assert expired_after_s < HANDOVER_BOUND_S, expired_after_s
    assert role["leader"] is True
    assert role["term"] == term_before + 1
    assert (row["holder"], row["term"]) == (role["worker_id"], term_before + 1)


@pytest.mark.timeout(180)
async def test_a_frozen_leader_is_replaced_and_steps_down_once_it_thaws(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The leader is frozen (SIGSTOP: its connections stay up, so only a lease can hand over): the other
    replica takes over after the lease; once thawed (SIGCONT), the old leader steps down at its next check,
    and there is one leader again."""
    env = replica_env(database_url, redis_url, key_prefix)
    async with replica(env) as first, replica(env) as second:
        roles = {r.url: r.background() for r in (first, second)}
        leader, other = (first, second) if roles[first.url]["leader"] else (second, first)
        old_id, new_id = roles[leader.url]["worker_id"], roles[other.url]["worker_id"]

        leader.signal(signal.SIGSTOP)
        took_over_s = await until(lambda: other.background()["leader"], 60, "nobody took over")
        hold_id = create_hold(other.url, "B-1", ttl_s=1)
        await until(lambda: expired_event_of(other.url, hold_id), 60, "the hold never expired")
        leader.signal(signal.SIGCONT)
        await until(
            lambda: (role := leader.background())["leader"] is False and role["leader_id"] == new_id,
            60,
            "the thawed leader never stepped down",
        )
        thawed, taken = leader.background(), other.background()
        holder = (await leader_row(database_url))["holder"]  # before either stops (a stop hands over)

    assert took_over_s < HANDOVER_BOUND_S, took_over_s
    assert thawed["worker_id"] == old_id
    assert (thawed["leader"], taken["leader"]) == (False, True)
    assert holder == new_id


async def test_a_leader_that_stops_cleanly_hands_over_at_once(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """With a lease of an hour, only the stopping leader's release (and its NOTIFY) can hand over soon."""
    settings = make_settings(database_url, redis_url, key_prefix, background_lease_s=3600.0)
    async with AsyncExitStack() as leader_stack:
        leader = await leader_stack.enter_async_context(running_gateway(settings))
        async with running_gateway(settings) as follower:
            roles = (leadership(leader).leading, leadership(follower).leading)
            await leader_stack.aclose()
            started = time.monotonic()
            await eventually(lambda: leadership(follower).leading, HANDOVER_BOUND_S, "no handover")
            took_over_s = time.monotonic() - started
            term = leadership(follower).term

    assert roles == (True, False)
    assert took_over_s < HANDOVER_BOUND_S
    assert term == 2


def leadership(gateway: Gateway) -> Any:
    return gateway.server.config.loaded_app.app.state.leadership  # type: ignore[union-attr]


def listener_of(gateway: Gateway) -> Listener:
    listener: Listener = gateway.server.config.loaded_app.app.state.listener  # type: ignore[union-attr]
    return listener


# ---- workers told by NOTIFY, not by polling ----


def notified_only(database_url: str, redis_url: str, key_prefix: str, **overrides: object) -> Settings:
    """Settings under which a follower learns the feed's head and the client keys only through NOTIFY (its
    own reads are an hour apart)."""
    return make_settings(
        database_url,
        redis_url,
        key_prefix,
        hold_events_resync_s=3600.0,
        client_keys_refresh_s=60.0,
        **overrides,
    )


async def long_poll(gateway: Gateway, after: int) -> tuple[list[dict[str, Any]], float]:
    started = time.monotonic()
    response = await gateway.client.get("/v1/hold-events", params={"after": after, "wait_seconds": 25})
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events, time.monotonic() - started


async def test_a_followers_long_poll_wakes_through_notify(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The follower never reads the head on its own within the test (hold_events_resync_s is an hour): its
    long poll returns with the event the leader numbered, told by the numbering's NOTIFY."""
    settings = notified_only(database_url, redis_url, key_prefix)
    async with running_gateway(settings) as leader, running_gateway(settings) as follower:
        roles = (leadership(leader).leading, leadership(follower).leading)
        await eventually(listener_of(follower).connected.is_set, 30, "the follower never listened")
        waiting = asyncio.create_task(long_poll(follower, after=0))
        created = await leader.hold("show", ["A-1"])
        events, waited_s = await waiting

    assert roles == (True, False)
    assert created.status_code == 201
    assert [(e["type"], e["hold"]["id"]) for e in events] == [("hold.created", created.json()["id"])]
    assert waited_s < 20  # woken, not timed out (25 s)


async def test_a_follower_whose_listener_connection_dies_reconnects_and_is_told_again(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The follower's LISTEN connection is terminated by the server: it reconnects on its own, and the next
    event still wakes its long poll through NOTIFY."""
    settings = notified_only(database_url, redis_url, key_prefix)
    async with running_gateway(settings) as leader, running_gateway(settings) as follower:
        listener = listener_of(follower)
        await eventually(listener.connected.is_set, 30, "the follower never listened")
        conn = await asyncpg.connect(database_url)
        try:
            terminated = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                f"reservation-gateway-listener/{leadership(follower).worker_id}"[:63],
            )
        finally:
            await conn.close()
        await eventually(lambda: listener.connects >= 2 and listener.connected.is_set(), 30, "no reconnect")
        waiting = asyncio.create_task(long_poll(follower, after=0))
        created = await leader.hold("show", ["A-1"])
        events, waited_s = await waiting

    assert terminated == 1
    assert [e["hold"]["id"] for e in events] == [created.json()["id"]]
    assert waited_s < 20


async def test_a_key_created_on_the_leader_reaches_a_follower_through_notify(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """Client keys reload every minute here: a key made on one gateway is required by the other within
    seconds, and a revoked one refused, because each change NOTIFYs."""
    ops = {"Authorization": "Bearer " + "o" * 16}
    settings = notified_only(database_url, redis_url, key_prefix, ops_token="o" * 16)
    async with running_gateway(settings) as first, running_gateway(settings) as second:
        await eventually(listener_of(second).connected.is_set, 30, "the follower never listened")
        created = (await first.client.post("/v1/client-keys", json={"name": "frontend"}, headers=ops)).json()
        keys = second.server.config.loaded_app.app.state.client_keys  # type: ignore[union-attr]
        await eventually(lambda: keys.required, 10, "the other gateway never learnt of the key")
        accepted = keys.identify(created["key"])
        await first.client.delete(f"/v1/client-keys/{created['id']}", headers=ops)
        await eventually(lambda: not keys.required, 10, "the other gateway never dropped the key")

    assert accepted == created["id"]
