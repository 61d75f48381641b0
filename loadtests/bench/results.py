"""What one benchmark run measured: plain Structs, written out as the JSON report and read by report.py."""

import msgspec

from loadtests.bench.client import ConfirmStream
from loadtests.bench.stack import Flushed
from loadtests.bench.wrk import WrkResult

# Target keys, and their names in the report.
REDIS_FRONT = "redis-front"
REDIS_FRONT_LOGGED = "redis-front+access-log"
DB_ONLY = "db-only"
NAIVE = "naive"
BARE = "bare"
ORDER = (REDIS_FRONT, REDIS_FRONT_LOGGED, DB_ONLY, NAIVE, BARE)  # of the rows of every table
# What a run measures (--only): the seat paths (sections 1-6 of the report), general admission (section 7).
SEATS, POOLS = "seats", "pools"
SECTIONS = (SEATS, POOLS)
TARGET_NAMES = {
    REDIS_FRONT: "a. gateway, Redis in front",
    REDIS_FRONT_LOGGED: "a. gateway, Redis in front, access log on (INFO)",
    DB_ONLY: "b. gateway, db-only",
    NAIVE: "c. naive baseline (SELECT … FOR UPDATE)",
    BARE: "d. bare Litestar (no I/O)",
}


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """How long and how hard each measurement runs."""

    name: str  # full | quick | smoke
    workers: int  # uvicorn workers of every target
    run_s: int  # a rejection-path run of a, b, c and d
    side_run_s: int  # the rejection path with the access log on, and at 1 worker
    short_run_s: int  # commit, hold + confirm, scaling points
    warmup_s: int  # before each measured run, same script and connections
    concurrency: tuple[int, ...]  # scaling points at `workers` workers
    onsale_requests: int
    onsale_seats: int
    bulkhead_s: int  # each bulkhead phase sends rate x this confirms
    threads: int = 2  # wrk -t
    storm_connections: int = 64  # rejection path, commit paths and the bulkhead's storm
    onsale_connections: int = 256
    bulkhead_rate_per_s: int = 50
    flush_quiet_s: float = 2.0  # pg_stat_database: "settled" once unchanged this long...
    flush_max_s: float = 15.0  # ...or after this long at most
    ga_capacity: int = 5_000  # units of the general-admission on-sale's pool
    ga_requests: int = 10_000  # hold requests of 1 to 4 units for it (2.5 on average: twice the supply)


class Cost(msgspec.Struct, frozen=True, kw_only=True):
    """CPU seconds during one measured run."""

    server_cpu_s: float  # the target's processes
    postgres_cpu_s: float  # every process of the benchmark's Postgres
    redis_cpu_s: float
    # The machine's CPU that was none of ours (targets, Postgres, Redis, wrk, this benchmark): other processes
    # that shared the cores, and kernel threads (writeback of Postgres's files among them).
    others_cpu_s: float = 0.0


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """One measured wrk run against one target."""

    target: str
    workers: int
    wrk: WrkResult
    cost: Cost
    started_at_unix_s: float  # wall clock when the measured wrk was spawned
    transactions: Flushed | None = None  # Postgres transactions in the target's database, when counted
    transactions_before_run: int | None = None


class OnSale(msgspec.Struct, frozen=True, kw_only=True):
    target: str
    run: Run
    seats: int
    sold_in_database: int  # live holds of the event, read from the target's own tables afterwards
    sold_out_s: float | None  # last successful hold's created_at minus the run's start (wall clock)


class GaOnSale(msgspec.Struct, frozen=True, kw_only=True):
    """A general-admission on-sale: one pool sold to unique holders asking 1 to 4 units each."""

    target: str
    run: Run
    capacity: int
    units_granted: int  # the 201s' units, summed by wrk
    units_in_gateway: int  # held + confirmed units of the pool per the holds listing, read afterwards
    holds_in_gateway: int  # live holds on the pool per the same listing
    sold_out_s: float | None  # last live hold's created_at minus the run's start (wall clock)


class Bulkhead(msgspec.Struct, frozen=True, kw_only=True):
    target: str
    quiet: ConfirmStream
    storm: ConfirmStream
    storm_run: Run


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    cpus: int
    cpu_model: str
    memory_gib: float
    kernel: str
    python: str
    postgres: str
    redis: str
    wrk: str
    date: str
    commit: str
    dirty: bool
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] | None = None


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """One target of the Targets table."""

    target: str
    measured: str
    met: bool | None  # None: not measured


class Report(msgspec.Struct, kw_only=True):
    """Everything, in the order of the Markdown report."""

    plan: Plan
    machine: Machine
    rejection: list[Run] = msgspec.field(default_factory=list)
    onsale: list[OnSale] = msgspec.field(default_factory=list)
    commit: list[Run] = msgspec.field(default_factory=list)
    hold_confirm: list[Run] = msgspec.field(default_factory=list)
    scaling_workers: list[Run] = msgspec.field(default_factory=list)
    scaling_concurrency: list[Run] = msgspec.field(default_factory=list)
    bulkhead: list[Bulkhead] = msgspec.field(default_factory=list)
    # General admission (pools): the rejection storm on a sold-out pool, the on-sale, availability reads.
    pool_rejection: list[Run] = msgspec.field(default_factory=list)
    ga_onsale: list[GaOnSale] = msgspec.field(default_factory=list)
    availability: list[Run] = msgspec.field(default_factory=list)
    sections: tuple[str, ...] = SECTIONS  # what was measured (python -m loadtests.bench --only)
    targets: list[Verdict] = msgspec.field(default_factory=list)
    duration_s: float = 0.0
    errors: list[str] = msgspec.field(default_factory=list)  # measurements that could not be made

    def find(self, runs: list[Run], target: str) -> Run | None:
        return next((run for run in runs if run.target == target), None)

    def sort(self) -> None:
        """Rows in ORDER, whatever order they were measured (or recorded) in."""
        for rows in (
            self.rejection,
            self.onsale,
            self.commit,
            self.hold_confirm,
            self.bulkhead,
            self.pool_rejection,
            self.ga_onsale,
            self.availability,
        ):
            rows.sort(key=lambda row: ORDER.index(row.target))


def encode(report: Report) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report), indent=2)
