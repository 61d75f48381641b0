"""Prometheus metrics (prometheus-client). Under `gateway serve` every worker process writes its samples to
PROMETHEUS_MULTIPROC_DIR and /metrics adds them up across workers; in one process they live in memory.

Counts that are facts about the database (active holds, confirmed slots, sweeper lag) are not kept per
process: /metrics reads them from Postgres at scrape time, so they are right however many workers run.
"""

import os
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

# The `_created` timestamp series double every counter's output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4"  # the server adds the charset

# A request takes about a millisecond on the fast path and up to seconds when a backend stalls.
_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Holds live from seconds (a cancelled cart) to an hour (the longest TTL), and longer once confirmed.
_LIFETIME_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)

HTTP_REQUESTS = Counter(
    "gateway_http_requests",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "gateway_http_request_duration_seconds",
    "Time from request to the end of the response, by route template.",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS_S,
)
ACCESS_LOG_SKIPPED = Counter(
    "gateway_access_log_skipped",
    "Hold-creation 409s the access log's sampling left without a line (GATEWAY_ACCESS_LOG_409_SAMPLE).",
)

HOLDS_CREATED = Counter("gateway_holds_created", "Holds created (201).")
HOLDS_REJECTED = Counter(
    "gateway_holds_rejected",
    "Hold requests refused because a slot was taken, by the layer that refused them (redis or postgres).",
    ["layer"],
)
# The reasons a hold request is refused (by Redis or Postgres alike), one series each.
REJECTION_REASONS = ("taken", "sold_out", "holder_limit", "blocked")
HOLD_REJECTIONS = Counter(
    "gateway_hold_rejections",
    "Hold requests refused, by reason: a seat taken, a pool sold out, the holder's limit, a seat blocked.",
    ["reason"],
)
HOLDS_CONFIRMED = Counter("gateway_holds_confirmed", "Holds confirmed.")
HOLDS_CANCELLED = Counter("gateway_holds_cancelled", "Holds cancelled.")
HOLDS_EXTENDED = Counter("gateway_holds_extended", "Holds extended (each successful extension counts).")
HOLDS_EXPIRED = Counter("gateway_holds_expired", "Holds marked expired by the sweeper.")
HOLD_LIFETIME_SECONDS = Histogram(
    "gateway_hold_lifetime_seconds",
    "Time a hold spent held, by how it ended (confirmed, cancelled or expired).",
    ["outcome"],
    buckets=_LIFETIME_BUCKETS_S,
)
HOLD_TIME_TO_CONFIRM_SECONDS = Histogram(
    "gateway_hold_time_to_confirm_seconds",
    "Time from creating a hold to confirming it.",
    buckets=_LIFETIME_BUCKETS_S,
)

REDIS_CALL_SECONDS = Histogram(
    "gateway_redis_call_duration_seconds",
    "Redis round trips on the request path, by operation; failures included.",
    ["operation"],
    buckets=_LATENCY_BUCKETS_S,
)
POSTGRES_QUERY_SECONDS = Histogram(
    "gateway_postgres_query_duration_seconds",
    "Postgres queries by name, waiting for a pooled connection included; failures included.",
    ["query"],
    buckets=_LATENCY_BUCKETS_S,
)

# Group commit: how many claims rode in one statement, and batches that an error sent back one by one.
CLAIM_BATCH_SIZE = Histogram(
    "gateway_claim_batch_size",
    "Claims sent together in one group-commit statement.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
ACQUIRE_BATCH_SIZE = Histogram(
    "gateway_acquire_batch_size",
    "Creates asking Redis together (one acquire.lua call per event of the batch).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
EXTEND_BATCH_SIZE = Histogram(
    "gateway_extend_batch_size",
    "Post-commit lease extensions sent together (one extend.lua call per event of the batch).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
CREATES_GIVING_WAY = Counter(
    "gateway_creates_giving_way",
    "Times a worker's creates started taking turns narrowly (create_concurrency_giving_way): a confirm, "
    "cancel or extension arrived while its creates were mostly refused.",
)
CLAIM_BATCH_FALLBACKS = Counter(
    "gateway_claim_batch_fallbacks",
    "Group-commit statements that failed as a whole (a deadlock, a constraint), their claims then run alone.",
)

SWEEPER_BATCHES = Counter("gateway_sweeper_batches", "Expiry statements the sweeper ran.")
SWEEPER_ROWS = Counter("gateway_sweeper_rows", "Holds the sweeper marked expired.")
RETENTION_ROWS = Counter(
    "gateway_retention_rows",
    "Rows the retention moved out of the hot tables (archived, or deleted), by table (holds, hold_slots).",
    ["table"],
)

DEGRADED = Gauge(
    "gateway_degraded",
    "1 while a worker serves in db-only mode (Redis unavailable), else 0; the maximum over workers.",
    multiprocess_mode="livemax",
)
MODE_TRANSITIONS = Counter(
    "gateway_mode_transitions", "Changes of serving mode, by the mode entered.", ["mode"]
)
BREAKER_OPENS = Counter(
    "gateway_breaker_opens", "Times a backend's circuit breaker opened, by backend.", ["backend"]
)
BREAKER_PROBES = Counter(
    "gateway_breaker_probes",
    "Half-open probes: calls let through to a backend whose breaker is open, by backend.",
    ["backend"],
)
LEASE_RELEASES = Counter(
    "gateway_lease_releases",
    "Leases of cancelled holds dropped in Redis after the fact, by why: the release outbox, or a Redis "
    "that came back with a past state.",
    ["reason"],
)
LEASE_REBUILDS = Counter(
    "gateway_lease_rebuilds", "Times the leases of live holds were rebuilt in a restarted or flushed Redis."
)
EVENT_LOOP_LAG_SECONDS = Histogram(
    "gateway_event_loop_lag_seconds",
    "How late a 50 ms timer fires in a worker's event loop: time a Redis call waits before it is even sent.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
WORKERS = Gauge("gateway_workers", "Worker processes serving.", multiprocess_mode="livesum")
BACKGROUND_LEADER = Gauge(
    "gateway_background_leader",
    "1 in the worker that runs the database's background work (elected through Postgres), 0 in the others; "
    "one sample per live worker (pid label in multiprocess mode).",
    multiprocess_mode="liveall",
)
STREAM_SUBSCRIBERS = Gauge(
    "gateway_stream_subscribers", "Open live availability streams.", multiprocess_mode="livesum"
)
STREAM_MESSAGES = Counter(
    "gateway_stream_messages", "Messages sent on live availability streams, by type.", ["type"]
)
STREAM_RESYNCS = Counter(
    "gateway_stream_resyncs",
    "Fresh snapshots sent to a stream already open, by why: it fell behind, the event's inventory changed, "
    "or the worker skipped part of the hold event feed.",
    ["reason"],
)

# Webhooks (pending and failed deliveries are database gauges: gateway.ops).
WEBHOOK_OUTCOMES = ("delivered", "retried", "failed")
WEBHOOK_DELIVERIES = Counter(
    "gateway_webhook_deliveries",
    "Webhook delivery attempts, by outcome: delivered (2xx), retried (no 2xx, due again later), failed (no "
    "2xx and the retry window is over: given up until redelivered).",
    ["outcome"],
)
WEBHOOK_DELIVERY_LATENCY_SECONDS = Histogram(
    "gateway_webhook_delivery_latency_seconds",
    "Time from a hold event (its occurred_at, the database's clock) to its webhook's 2xx, retries included.",
    # From a receiver that answers at once (a second: the sweeper, the sequencer, one round trip) to one that
    # was down for hours within the 24 h retry window.
    buckets=(0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0),
)
WEBHOOK_DELIVERED = WEBHOOK_DELIVERIES.labels("delivered")
WEBHOOK_RETRIED = WEBHOOK_DELIVERIES.labels("retried")
WEBHOOK_FAILED = WEBHOOK_DELIVERIES.labels("failed")


class _HttpSeries:
    """The request counter and latency histogram of one (method, route, status), resolved once."""

    __slots__ = ("_count", "_seconds")

    def __init__(self, method: str, route: str, status: int) -> None:
        self._count = HTTP_REQUESTS.labels(method, route, str(status))
        self._seconds = HTTP_REQUEST_SECONDS.labels(method, route)

    def observe(self, elapsed_s: float) -> None:
        self._count.inc()
        self._seconds.observe(elapsed_s)


_http_series: dict[tuple[str, str, int], _HttpSeries] = {}


def http_request(method: str, route: str, status: int) -> _HttpSeries:
    """The series of one kind of request. Routes are templates and methods and statuses few, so the cache
    stays small; resolving labels on every request costs more than the request's own Redis call parsing."""
    key = (method, route, status)
    series = _http_series.get(key)
    if series is None:
        series = _http_series[key] = _HttpSeries(method, route, status)
    return series


HOLDS_REJECTED_BY_REDIS = HOLDS_REJECTED.labels("redis")
HOLDS_REJECTED_BY_POSTGRES = HOLDS_REJECTED.labels("postgres")
REJECTED_FOR = {reason: HOLD_REJECTIONS.labels(reason) for reason in REJECTION_REASONS}


def multiprocess() -> bool:
    return MULTIPROC_DIR_ENV in os.environ


def process_registry() -> CollectorRegistry:
    """The samples of every worker (multiprocess mode) or of this process."""
    if not multiprocess():
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def exposition(database_gauges: dict[str, tuple[str, float]]) -> bytes:
    """The text format for /metrics: the process (or all workers') metrics plus gauges read from Postgres,
    given as {name: (help, value)}."""
    extra = CollectorRegistry()
    extra.register(
        _Families(
            GaugeMetricFamily(name, text, value=value) for name, (text, value) in database_gauges.items()
        )
    )
    return generate_latest(process_registry()) + generate_latest(extra)


def counter_totals() -> dict[str, float]:
    """Every counter's total across workers, by sample name with its labels: {"gateway_holds_created_total":
    3.0, 'gateway_holds_rejected_total{layer="redis"}': 9.0}. For /v1/stats."""
    totals: dict[str, float] = {}
    for family in process_registry().collect():
        if family.type != "counter":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def worker_started() -> None:
    WORKERS.inc()


def worker_stopped() -> None:
    """Drop this worker from the live gauges (multiprocess mode keeps a dead worker's files otherwise)."""
    WORKERS.dec()
    if multiprocess():
        mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
