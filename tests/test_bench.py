"""The benchmark (loadtests/bench): the parts that could silently lie, and one tiny end-to-end run."""

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

from loadtests.bench import naive, wrk
from loadtests.bench import report as markdown_report
from loadtests.bench.client import Connection
from loadtests.bench.results import (
    BARE,
    DB_ONLY,
    NAIVE,
    POOLS,
    REDIS_FRONT,
    REDIS_FRONT_UNLOGGED,
    REDIS_FRONT_WEBHOOKS,
    WEBHOOKS,
    Cost,
    Delivery,
    FlashSale,
    GaOnSale,
    Lag,
    Machine,
    Plan,
    Report,
    Run,
)
from loadtests.bench.stack import (
    REPO_ROOT,
    Flushed,
    Server,
    Stack,
    bare_server,
    naive_server,
    receiver_server,
)
from loadtests.bench.verdicts import (
    drain_rate_per_s,
    flash_sale_ok,
    ga_onsale_ok,
    transactions_per_request,
    webhooks_ok,
)
from loadtests.bench.webhooks import Receiver
from tests.support import Gateway

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:8000
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   512.00us  100.00us   2.00ms   90.00%
  1000 requests in 1.00s, 200.00KB read
  Non-2xx or 3xx responses: 998
BENCH_JSON {"requests":1000,"duration_us":1002000,"rps":998.0,"latency_us":{"p50":480,"p90":700,"p99":1900,"max":2000,"mean":512.5},"statuses":{"409":998,"503":2},"errors":{"connect":0,"read":1,"write":0,"status":1000,"timeout":3}}
Requests/sec:    998.00
"""  # noqa: E501 - wrk's output, verbatim


@pytest.fixture(scope="module", name="bare")
async def fx_bare(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """The bare Litestar target, 1 worker."""
    with bare_server("bare", tmp_path_factory.mktemp("bare"), workers=1) as server:
        await server.wait_ready("/health")
        yield server


@pytest.fixture(scope="module", name="stack")
def fx_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The benchmark's own Postgres and Redis."""
    with Stack(tmp_path_factory.mktemp("stack")) as stack:
        yield stack


def test_wrk_result_line_is_parsed_with_its_units() -> None:
    result = wrk.parse_output(WRK_OUTPUT, wrk_cpu_s=0.5, wall_s=2.0, connections=4, threads=2)

    assert result.requests == 1000
    assert result.duration_s == 1.002
    assert result.latency == wrk.Latency(p50_us=480, p90_us=700, p99_us=1900, max_us=2000, mean_us=512.5)
    assert result.statuses == {409: 998, 503: 2}
    assert result.socket_errors == wrk.SocketErrors(connect=0, read=1, write=0, timeout=3)
    assert result.other_than(409) == 2 + 4  # two 503s and four requests lost to socket errors
    assert result.cores_used == 0.25


def test_wrk_result_line_carries_the_scripts_own_counters() -> None:
    with_counters = WRK_OUTPUT.replace('"timeout":3}}', '"timeout":3},"counters":{"units":2470}}')

    assert wrk.parse_output(with_counters, wrk_cpu_s=0, wall_s=1, connections=4, threads=2).counters == {
        "units": 2470
    }
    assert wrk.parse_output(WRK_OUTPUT, wrk_cpu_s=0, wall_s=1, connections=4, threads=2).counters == {}


def test_wrk_output_without_a_result_line_is_an_error() -> None:
    with pytest.raises(wrk.WrkError, match="no BENCH_JSON line"):
        wrk.parse_output(
            WRK_OUTPUT.replace("BENCH_JSON", "something else"),
            wrk_cpu_s=0,
            wall_s=1,
            connections=4,
            threads=2,
        )


async def test_statuses_counted_in_lua_add_up_to_wrks_own_request_count(bare: Server) -> None:
    result = await asyncio.to_thread(
        wrk.run, bare.url, "reject.lua", args=["bench", "A-1"], threads=2, connections=4, duration_s=1
    )

    assert result.requests > 100
    assert result.statuses == {409: result.requests}
    assert result.socket_errors.total == 0
    assert result.wrk_cpu_s > 0
    assert result.latency.p50_us <= result.latency.p99_us <= result.latency.max_us


async def test_onsale_script_sends_exactly_its_requests_and_stops_early(bare: Server) -> None:
    """Regression: wrk calls request() once before the run to check it (never sent), which used up one
    request of the first thread's share, so that thread waited for an answer that never came until -d."""
    started = time.monotonic()
    result = await asyncio.to_thread(
        wrk.run,
        bare.url,
        "onsale.lua",
        args=["onsale", "20", "301", "2"],
        threads=2,
        connections=64,
        duration_s=30,
        until_threads_done=True,
    )

    assert result.statuses == {409: 301}  # bare answers 409 to everything: here only the count matters
    assert time.monotonic() - started < 10


async def test_ga_onsale_script_sends_exactly_its_requests_and_stops_early(bare: Server) -> None:
    """The general-admission on-sale shares the on-sale's quota (quota.lua): the same share, no more."""
    started = time.monotonic()
    result = await asyncio.to_thread(
        wrk.run,
        bare.url,
        "ga_onsale.lua",
        args=["ga-onsale", "ga", "301", "2"],
        threads=2,
        connections=64,
        duration_s=30,
        until_threads_done=True,
    )

    # Bare answers 409, or 422 while its request Struct has no `items`: here only the count matters.
    assert sum(result.statuses.values()) == result.requests == 301
    assert result.counters == {}  # units are counted from 201s only
    assert time.monotonic() - started < 10


@pytest.fixture(name="naive_url")
async def fx_naive_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """A database with the naive baseline's tables and one seeded slot, show-1/A-1."""
    name = "bench_naive_test"
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    url = f"{postgres_admin_url.rpartition('/')[0]}/{name}"
    conn = await asyncpg.connect(url)
    try:
        await naive.create_schema(conn)
        await naive.seed_slots(conn, "show-1", "A-", 1)
    finally:
        await conn.close()
    yield url
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


async def test_naive_baseline_has_exactly_one_winner_per_slot(naive_url: str, tmp_path: Path) -> None:
    with naive_server("naive", tmp_path, database_url=naive_url, workers=2) as server:
        await server.wait_ready("/health")
        connections = [await Connection.open(server.port) for _ in range(50)]
        try:
            barrier = asyncio.Barrier(len(connections))

            async def hold(i: int) -> int:
                await barrier.wait()
                status, _ = await connections[i].post(
                    "/v1/holds", {"event_id": "show-1", "slots": ["A-1"], "holder": f"user-{i}"}
                )
                return status

            statuses = Counter(await asyncio.gather(*(hold(i) for i in range(len(connections)))))
        finally:
            for conn in connections:
                await conn.close()

    assert statuses == {201: 1, 409: 49}
    conn = await asyncpg.connect(naive_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM naive_holds WHERE slot_id = 'A-1'") == 1
    finally:
        await conn.close()


async def test_postgres_cpu_grows_while_postgres_works_and_keeps_exited_backends(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.admin_dsn)
    busy = asyncio.create_task(conn.fetchval("SELECT count(*) FROM generate_series(1, 30000000)"))
    readings = [stack.postgres_cpu_s()]
    for _ in range(3):
        await asyncio.sleep(0.3)
        readings.append(stack.postgres_cpu_s())
    await busy
    await conn.close()  # the backend exits: its CPU moves into the postmaster's cutime/cstime
    await asyncio.sleep(0.3)
    after_exit = stack.postgres_cpu_s()

    assert readings == sorted(readings)
    assert len(set(readings)) == len(readings), readings  # strictly increasing
    assert after_exit >= readings[-1]


async def test_flushed_transactions_counts_every_transaction_of_a_closed_connection(stack: Stack) -> None:
    await stack.create_database("bench_counted")
    before = await stack.transactions("bench_counted")
    conn = await asyncpg.connect(stack.database_url("bench_counted"))
    for _ in range(100):
        await conn.execute("SELECT 1")
    await conn.close()

    flushed = await stack.flushed_transactions("bench_counted")

    assert flushed.settled
    # 100 statements, plus the few of the connection's own start-up.
    assert 100 <= flushed.transactions - before <= 110
    await stack.drop_database("bench_counted")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_smoke_run_reports_every_section(tmp_path: Path) -> None:
    out, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    finished = subprocess.run(
        # The seat paths; general admission has its own test below.
        [
            sys.executable,
            "-m",
            "loadtests.bench",
            "--smoke",
            "--only",
            "seats",
            "--out",
            str(out),
            "--json",
            str(raw),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr[-3000:]
    text = out.read_text()
    for heading in (
        "## Machine",
        "## Targets",
        "## Ratios",
        "## 1. Rejection path",
        "### Where a rejection's CPU goes",
        "## 2. Contended on-sale",
        "## 3. Commit path",
        "### Where a winner's CPU goes",
        "## 4. Scaling",
        "## 5. Postgres work per rejection",
        "## 6. Bulkhead",
    ):
        assert heading in text
    assert "FAILED" not in text
    report = msgspec.json.decode(raw.read_bytes(), type=Report)
    assert report.errors == []
    assert set(report.cpu_layers) == {
        "redis",
        "service",
        "hot",
        "litestar",
        "bare",
        "win",
        "win_db",
        "win_redis",
    }
    assert all(us > 0 for us in report.cpu_layers.values())
    assert {run.target for run in report.rejection} == {
        REDIS_FRONT,
        REDIS_FRONT_UNLOGGED,
        DB_ONLY,
        NAIVE,
        BARE,
    }
    assert {sale.target for sale in report.onsale} == {REDIS_FRONT, DB_ONLY, NAIVE}
    for sale in report.onsale:
        assert sale.run.wrk.count(201) == sale.seats == report.plan.onsale_seats, sale.target
        assert sale.sold_in_database == sale.seats, sale.target
    assert {run.target for run in report.commit} == {REDIS_FRONT, DB_ONLY, NAIVE}
    assert {run.target for run in report.hold_confirm} == {REDIS_FRONT, DB_ONLY}
    assert {item.target for item in report.bulkhead} == {REDIS_FRONT, DB_ONLY, NAIVE}
    scaled = [run.wrk.connections for run in report.scaling_concurrency if run.target == REDIS_FRONT]
    assert scaled == list(report.plan.concurrency)
    assert [run.target for run in report.scaling_concurrency if run.target != REDIS_FRONT] == [BARE]
    assert len(report.targets) == 9
    assert "## 7. General admission" not in text  # --only seats


def _run(target: str, statuses: dict[int, int], *, transactions: int | None = None) -> Run:
    requests = sum(statuses.values())
    return Run(
        target=target,
        workers=2,
        wrk=wrk.WrkResult(
            requests=requests,
            duration_s=2.0,
            rps=requests / 2,
            latency=wrk.Latency(p50_us=900, p90_us=1500, p99_us=4000, max_us=9000, mean_us=1000),
            statuses=statuses,
            socket_errors=wrk.SocketErrors(connect=0, read=0, write=0, timeout=0),
            wrk_cpu_s=0.5,
            wall_s=3.0,
            connections=64,
            threads=2,
        ),
        cost=Cost(server_cpu_s=1.0, postgres_cpu_s=0.1, redis_cpu_s=0.05),
        started_at_unix_s=1_700_000_000.0,
        transactions=None
        if transactions is None
        else Flushed(transactions=transactions, waited_s=2, settled=True),
        transactions_before_run=None if transactions is None else 0,
    )


def _pools_report(sales: list[GaOnSale]) -> Report:
    machine = Machine(
        cpus=2,
        cpu_model="test",
        memory_gib=1,
        kernel="k",
        python="3",
        postgres="15",
        redis="7",
        wrk="wrk",
        date="today",
        commit="abc",
        dirty=False,
        load_before=(0, 0, 0),
    )
    plan = Plan(
        name="smoke",
        workers=2,
        run_s=1,
        side_run_s=1,
        short_run_s=1,
        warmup_s=1,
        concurrency=(64,),
        onsale_requests=10,
        onsale_seats=5,
        bulkhead_s=1,
        ga_capacity=50,
        ga_requests=200,
    )
    return Report(
        plan=plan,
        machine=machine,
        sections=(POOLS,),
        rejection=[_run(BARE, {409: 10_000})],
        pool_rejection=[_run(REDIS_FRONT, {409: 8_000}, transactions=4), _run(DB_ONLY, {409: 6_000})],
        ga_onsale=sales,
        availability=[_run(REDIS_FRONT, {200: 20_000}, transactions=10)],
    )


def test_report_renders_general_admission_and_says_when_a_pool_was_not_sold_exactly() -> None:
    run = _run(REDIS_FRONT, {201: 20, 409: 180}, transactions=230)
    sold = GaOnSale(
        target=REDIS_FRONT,
        run=run,
        capacity=50,
        units_granted=50,
        units_in_gateway=50,
        holds_in_gateway=20,
        sold_out_s=0.8,
    )
    oversold = GaOnSale(
        target=DB_ONLY,
        run=run,
        capacity=50,
        units_granted=50,
        units_in_gateway=51,  # one unit more in the gateway than its answers granted
        holds_in_gateway=21,
        sold_out_s=1.6,
    )

    good = markdown_report.markdown(_pools_report([sold]))
    bad = markdown_report.markdown(_pools_report([sold, oversold]))

    assert ga_onsale_ok(sold)
    assert not ga_onsale_ok(oversold)
    assert transactions_per_request(run) == 230 / 200
    for heading in (
        "### Rejection storm on a sold-out pool",
        "### On-sale of one pool",
        "### Availability reads",
    ):
        assert heading in good
    assert "## 1. Rejection path" not in good  # --only pools: no seat sections
    assert "| a. gateway, Redis in front | sold-out pool | 4,000 |" in good
    assert "| d. bare Litestar (no I/O) | no I/O | 5,000 |" in good
    assert "Redis in front, sold-out pool ÷ held seat: n/a; sold-out pool ÷ bare Litestar: 80.0%." in good
    assert "| 50 / 50 ok | 50 | 20 / 20 |" in good
    assert "| a. gateway, Redis in front | 10,000 | 0.9 | 4.0 | 0 | 10 | 0.00050 |" in good
    assert "FAILED" not in good
    assert (
        "**FAILED: GA on-sale on b. gateway, db-only sold 50 units by its 201s (20 holds) and 51 per the "
        "holds listing (21 holds), not 50.**"
    ) in bad
    assert "Time to sell out, db-only ÷ Redis in front: 2.00x (1.60 s vs 0.80 s)." in bad


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_smoke_run_reports_the_general_admission_sections(gateway: Gateway, tmp_path: Path) -> None:
    """Section 7 end to end: a sold-out pool storm, a GA on-sale and availability reads, each on Redis in
    front and db-only, measured by the benchmark's own gateways."""
    out, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    finished = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "loadtests.bench",
            "--smoke",
            "--only",
            "pools",
            "--out",
            str(out),
            "--json",
            str(raw),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr[-3000:]
    text = out.read_text()
    for heading in (
        "## 7. General admission",
        "### Rejection storm on a sold-out pool",
        "### On-sale of one pool",
    ):
        assert heading in text
    assert "### Availability reads" in text
    assert "FAILED" not in text
    report = msgspec.json.decode(raw.read_bytes(), type=Report)
    assert report.errors == []
    assert report.sections == (POOLS,)
    assert {run.target for run in report.pool_rejection} == {REDIS_FRONT, DB_ONLY}
    for run in report.pool_rejection:
        assert run.wrk.requests > 0, run.target
        assert run.wrk.other_than(409) == 0, run.target
    storm = report.find(report.pool_rejection, REDIS_FRONT)
    assert storm is not None
    assert transactions_per_request(storm) is not None
    assert {sale.target for sale in report.ga_onsale} == {REDIS_FRONT, DB_ONLY}
    for sale in report.ga_onsale:
        assert ga_onsale_ok(sale), sale
        assert sale.units_granted == report.plan.ga_capacity, sale.target
    assert {run.target for run in report.availability} == {REDIS_FRONT, DB_ONLY}
    for run in report.availability:
        assert run.wrk.requests > 0, run.target
        assert run.wrk.other_than(200) == 0, run.target
        assert transactions_per_request(run) is not None, run.target


async def test_receiver_records_each_webhook_id_once_and_answers_204_on_one_connection(
    tmp_path: Path,
) -> None:
    """The webhook receiver: a redelivery keeps its first receipt; counts and receipts are GETs of its own."""
    with receiver_server("receiver", tmp_path) as server:
        await server.wait_ready("/stats")
        conn = await Connection.open(server.port)
        try:
            before = time.time()
            statuses = [
                (await conn.request("POST", "/hooks", {"id": n}, {"webhook-id": webhook_id}))[0]
                for n, webhook_id in enumerate(("7", "8", "7"))
            ]
            without_id, _ = await conn.post("/hooks", {})  # counted as a request, nothing recorded
            after = time.time()
        finally:
            await conn.close()
        receiver = Receiver(server)
        received = await receiver.received()
        unique = await receiver.unique()

    assert statuses == [204, 204, 204]
    assert without_id == 204
    assert unique == 2
    assert set(received) == {7, 8}
    assert before <= received[7] <= received[8] <= after


def _delivery(events: int, received: int) -> Delivery:
    return Delivery(
        events=events,
        received=received,
        unexpected=0,
        waited_s=1.0,
        first_occurred_unix_s=100.0,
        last_occurred_unix_s=110.0,
        first_received_unix_s=100.5,
        last_received_unix_s=112.0,
        latency=Lag(p50_s=0.5, p99_s=1.5, max_s=2.0),
        received_after_last_event=1_000,
    )


def test_a_flash_sale_with_an_event_missing_fails_the_run_and_says_so() -> None:
    run = _run(REDIS_FRONT_WEBHOOKS, {201: 200, 409: 200})
    sale = FlashSale(
        run=run,
        seats=200,
        confirms_sent=20,
        confirmed=20,
        confirm_wall_s=0.1,
        events_by_type={"hold.created": 200, "hold.confirmed": 20},
        delivery=_delivery(220, 220),
    )
    missing = msgspec.structs.replace(sale, delivery=_delivery(220, 219))
    report = _pools_report([])
    report.sections = (WEBHOOKS,)

    report.flash_sale = sale
    good = markdown_report.markdown(report)
    assert flash_sale_ok(sale)
    assert webhooks_ok(report)
    report.flash_sale = missing
    bad = markdown_report.markdown(report)

    assert not webhooks_ok(report)
    assert drain_rate_per_s(sale.delivery) == 1_000 / 2.0
    assert "## 8. Webhooks" in good
    assert "| Events at the receiver | 220 (every one; 0 unexpected) |" in good
    assert "| Delivery throughput while draining | 500 events/s |" in good
    assert "FAILED" not in good
    assert "219 of its 220 events arrived" in bad
    assert "| Events at the receiver | 219 (**NOT every one**; 0 unexpected) |" in bad


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_smoke_run_reports_the_webhooks_section(tmp_path: Path) -> None:
    """Section 8 end to end: a round each of webhooks off and on, a flash sale whose every event arrives at
    the benchmark's receiver, and holds left to lapse."""
    out, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    finished = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "loadtests.bench",
            "--smoke",
            "--only",
            "webhooks",
            "--out",
            str(out),
            "--json",
            str(raw),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr[-3000:]
    text = out.read_text()
    for heading in (
        "## 8. Webhooks",
        "### The hot paths, webhooks off and on",
        "### Flash sale with webhooks on",
        "### Expiry to delivery",
    ):
        assert heading in text
    assert "FAILED" not in text
    assert "## 1. Rejection path" not in text  # --only webhooks
    report = msgspec.json.decode(raw.read_bytes(), type=Report)
    assert report.errors == []
    assert [(r.round, r.target) for r in report.webhook_rounds] == [
        (1, REDIS_FRONT),
        (1, REDIS_FRONT_WEBHOOKS),
    ]
    for item in report.webhook_rounds:
        assert item.rejection.wrk.other_than(409) == 0, item.target
        assert item.commit.wrk.other_than(201) == 0, item.target
        assert (item.commit_delivery is not None) == (item.target == REDIS_FRONT_WEBHOOKS)
    on, commit = report.webhook_rounds[1].commit_delivery, report.webhook_rounds[1].commit
    assert on is not None
    # wrk stops with a request in flight on each connection: those holds are made, their answers not counted.
    assert commit.wrk.count(201) <= on.events <= commit.wrk.count(201) + commit.wrk.connections
    assert on.received == on.events
    sale = report.flash_sale
    assert sale is not None
    assert flash_sale_ok(sale)
    assert sale.events_by_type == {
        "hold.created": report.plan.webhook_sale_holds,
        "hold.confirmed": sale.confirmed,
    }
    assert sale.delivery.latency is not None
    expiry = report.expiry
    assert expiry is not None
    assert expiry.delivery.received == expiry.delivery.events == report.plan.webhook_expiry_holds
    assert expiry.after_expires is not None
    assert expiry.swept_after is not None
    assert 0 <= expiry.swept_after.p50_s <= expiry.after_expires.p50_s
