"""What one benchmark run measured: plain Structs, written out as the JSON report and read by report.py."""

import msgspec

from loadtests.bench.client import ConfirmStream
from loadtests.bench.stack import Flushed
from loadtests.bench.wrk import WrkResult

# Target keys, and their names in the report.
REDIS_FRONT = "redis-front"
REDIS_FRONT_UNLOGGED = "redis-front-access-log-off"
REDIS_FRONT_WEBHOOKS = "redis-front+webhooks"  # one webhook endpoint, registered to the benchmark's receiver
DB_ONLY = "db-only"
NAIVE = "naive"
BARE = "bare"
# Of the rows of every table.
ORDER = (REDIS_FRONT, REDIS_FRONT_UNLOGGED, REDIS_FRONT_WEBHOOKS, DB_ONLY, NAIVE, BARE)
# What a run measures (--only): the seat paths (sections 1-6 of the report), general admission (section 7),
# webhooks on and off (section 8).
SEATS, POOLS, WEBHOOKS = "seats", "pools", "webhooks"
SECTIONS = (SEATS, POOLS, WEBHOOKS)
TARGET_NAMES = {
    REDIS_FRONT: "a. gateway, Redis in front",
    REDIS_FRONT_UNLOGGED: "a. gateway, Redis in front, access log off",
    REDIS_FRONT_WEBHOOKS: "a. gateway, Redis in front, one webhook endpoint",
    DB_ONLY: "b. gateway, db-only",
    NAIVE: "c. naive baseline (SELECT … FOR UPDATE)",
    BARE: "d. bare Litestar (no I/O)",
}


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """How long and how hard each measurement runs."""

    name: str  # full | quick | smoke
    workers: int  # uvicorn workers of every target
    run_s: int  # a rejection-path run of a, b, c and d
    side_run_s: int  # the rejection path with the access log off, and at 1 worker
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
    webhook_rounds: int = 2  # rounds of each, webhooks off and on, alternating (off first)
    webhook_sale_holds: int = 10_000  # the flash sale with webhooks on: seats, each asked for twice
    webhook_expiry_holds: int = 200  # holds of the minimum ttl whose hold.expired is timed to the receiver
    layer_rounds: int = 3  # loadtests.cpu_layers: rounds, and rejections per layer and round
    layer_requests: int = 6_400


class Cost(msgspec.Struct, frozen=True, kw_only=True):
    """CPU seconds during one measured run."""

    server_cpu_s: float  # the target's processes
    postgres_cpu_s: float  # every process of the benchmark's Postgres
    redis_cpu_s: float
    receiver_cpu_s: float = 0.0  # the benchmark's webhook receiver, when the target sends to it
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


class Lag(msgspec.Struct, frozen=True, kw_only=True):
    """How long a set of things took, in seconds (nearest-rank percentiles)."""

    p50_s: float
    p99_s: float
    max_s: float


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """A set of numbered hold events and their arrival at the benchmark's webhook receiver. Times are unix
    seconds: occurred_at as Postgres wrote it, receipts as the receiver saw them, on the same machine."""

    events: int  # numbered in the feed
    received: int  # of those, arrived at the receiver (each webhook-id counted once)
    unexpected: int  # webhook-ids past the set's start that the feed never numbered
    waited_s: float  # from the end of the load that made them until every one had arrived, or the ceiling
    first_occurred_unix_s: float | None
    last_occurred_unix_s: float | None
    first_received_unix_s: float | None
    last_received_unix_s: float | None
    latency: Lag | None  # receipt minus occurred_at
    received_after_last_event: int  # arrived after the last event occurred: the backlog at that moment


class WebhookRound(msgspec.Struct, frozen=True, kw_only=True):
    """One round of the side-by-side: a fresh gateway, Redis in front, with or without a webhook endpoint;
    the rejection path, then the commit path, as sections 1 and 3 measure them."""

    round: int  # from 1; off and on alternate, off first
    target: str  # REDIS_FRONT (webhooks off) or REDIS_FRONT_WEBHOOKS (on)
    rejection: Run
    commit: Run
    commit_delivery: Delivery | None = None  # webhooks on: the measured commit run's events at the receiver


class FlashSale(msgspec.Struct, frozen=True, kw_only=True):
    """A flash sale with webhooks on: every seat asked for twice (one 201, one 409), then a share of the holds
    confirmed; every event the feed numbered waited for at the receiver."""

    run: Run  # the wrk on-sale
    seats: int
    confirms_sent: int
    confirmed: int  # confirms answered 200
    confirm_wall_s: float
    events_by_type: dict[str, int]  # numbered in the feed
    delivery: Delivery


class ExpiryDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """Holds of the minimum ttl left to lapse under the default sweep: each hold.expired's receipt against
    the hold's expires_at."""

    holds: int
    ttl_s: int
    sweep_interval_s: float
    delivery: Delivery  # of their hold.expired events
    after_expires: Lag | None  # receipt minus expires_at
    swept_after: Lag | None  # occurred_at (the sweeper's statement) minus expires_at


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
    # In-process CPU µs per request of each layer (loadtests.cpu_layers: redis, service, hot, litestar, bare
    # for a rejection; win, win_db and Redis's own win_redis for a created hold).
    cpu_layers: dict[str, float] = msgspec.field(default_factory=dict)
    # General admission (pools): the rejection storm on a sold-out pool, the on-sale, availability reads.
    pool_rejection: list[Run] = msgspec.field(default_factory=list)
    ga_onsale: list[GaOnSale] = msgspec.field(default_factory=list)
    availability: list[Run] = msgspec.field(default_factory=list)
    # Webhooks: the hot paths with and without an endpoint, a flash sale delivered, hold.expired's lag.
    webhook_rounds: list[WebhookRound] = msgspec.field(default_factory=list)
    flash_sale: FlashSale | None = None
    expiry: ExpiryDelivery | None = None
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
