"""Settings, read once from GATEWAY_* environment variables into one frozen, typed object."""

import os
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway.shard_map import PodName

ENV_PREFIX = "GATEWAY_"
# Prefixed variables that are not settings: read by gateway.embedded, by the tests (GATEWAY_TEST_*), or by the
# operator commands (GATEWAY_URL, the gateway they ask: an operator may have it set when running `serve`).
NOT_SETTINGS = frozenset({"GATEWAY_POSTGRES_BIN_DIR", "GATEWAY_REDIS_SERVER", "GATEWAY_URL"})

PositiveInt = Annotated[int, Meta(ge=1)]
_SENTINELS_PATTERN = r"\A[^,:\s]+:[0-9]{1,5}(,[^,:\s]+:[0-9]{1,5})*\Z"
PositiveFloat = Annotated[float, Meta(gt=0)]


class ConfigError(Exception):
    """The configuration is invalid; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every setting of the gateway. Each field is read from GATEWAY_<FIELD NAME IN CAPITALS>."""

    # PostgreSQL DSN. Unset: `gateway serve` starts an embedded PostgreSQL in `data_dir`.
    database_url: str | None = None
    # Redis URL. Unset (and no Sentinels): `gateway serve` starts an embedded Redis in `data_dir`.
    redis_url: str | None = None
    # Redis behind Sentinel, instead of redis_url: the Sentinels (`host:port,host:port,...`) and the name of
    # the master they watch. Every connection the gateway opens asks them for the master first, so a
    # failover is followed at the next reconnect. The master's password and database are the next two; the
    # Sentinels' own password, if they require one, the third.
    redis_sentinels: Annotated[str, Meta(pattern=_SENTINELS_PATTERN)] | None = None
    redis_sentinel_master: Annotated[str, Meta(min_length=1)] | None = None
    redis_password: str | None = None
    redis_db: Annotated[int, Meta(ge=0)] = 0
    redis_sentinel_password: str | None = None
    # A replica for the operations reads that decide nothing: the listings (GET /v1/holds, an event's slots)
    # and the hold counts of /v1/stats. They may lag it by the replication delay. Unset: the primary. Every
    # read that decides (a seat's owner, an idempotency record, a hold by id, the rebuild) stays on
    # database_url.
    database_read_url: str | None = None
    # Event-sharded pods (docs/scaling.md): the shard map file every gateway reads, and this gateway's pod in
    # it (its database and Redis are that pod's). A request for another pod's event or hold gets 421
    # wrong-pod naming it. Unset (the default): one database, every event.
    shard_map: str | None = None
    pod: PodName | None = None
    # Where embedded servers keep their data.
    data_dir: str = ".gateway-data"

    # Hold rules.
    default_ttl_s: PositiveInt = 300
    min_ttl_s: PositiveInt = 5
    max_ttl_s: PositiveInt = 3600
    max_slots_per_hold: Annotated[int, Meta(ge=1, le=1000)] = 10
    # No extension moves a hold's expiry past created_at + this (2 hours, as seats.io caps hold tokens).
    max_hold_lifetime_s: PositiveInt = 7_200
    # Largest request body accepted; larger gets 413 before any work.
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 65_536

    # Redis front.
    # Namespace of every key; lets several gateways (or tests) share one Redis.
    redis_key_prefix: Annotated[str, Meta(pattern=r"\A[A-Za-z0-9_.-]{1,32}\Z")] = "gw"
    # Per-call budget. Under a rejection storm (wrk -c64/-c256, 2 workers, a loaded 2-core box) the event loop
    # lagged p99 25 ms, at most 100 ms (gateway_event_loop_lag_seconds), and acquire p99.9 under 50 ms: 0.3 s
    # is 3x the worst lag, so a busy loop is not misread as a dead Redis; a frozen Redis costs one request
    # that much, then the breaker sends the rest straight to Postgres.
    redis_timeout_s: PositiveFloat = 0.3
    # After a Redis failure, go straight to Postgres for this long, then let one request probe Redis.
    redis_retry_interval_s: PositiveFloat = 1.0
    # Opening a connection is a few round trips (connect, HELLO, CLIENT SETINFO) that a busy loop stretches;
    # the pool is opened in full at start, so this is paid on the request path only after Redis restarts.
    redis_connect_timeout_s: PositiveFloat = 1.0
    # Each in-flight Redis call holds a connection; a 300-request burst on one worker needs that many.
    redis_max_connections: PositiveInt = 256
    # Send the scripts' calls of all concurrent requests over one connection, flushed once per event-loop
    # pass (about a third less CPU per rejection than a pooled redis-py call); false: redis-py's pool.
    redis_pipeline: bool = True
    # Hold requests of a worker that may be at the Redis step at once; the rest wait their turn, parked
    # (past create_queue_timeout_s: 503). Winners leave the queue before their Postgres commit. While a
    # confirm, cancel or extension of the worker is in flight, at most create_concurrency_giving_way: a storm
    # of losers otherwise fills every event-loop pass and the confirm waits behind it. Measured (wrk -c64,
    # 2 workers): 4 throughout cost the commit path half its rate and twice its CPU per hold; 64 throughout
    # made confirms during a rejection storm 4x slower at p99.
    create_concurrency: PositiveInt = 64
    create_concurrency_giving_way: PositiveInt = 4
    create_queue_timeout_s: PositiveFloat = 5.0
    # Waiting for a free Redis connection is local overload, not a Redis outage: past this, 503.
    redis_queue_timeout_s: PositiveFloat = 2.0
    # How long an acquired lease lives before its commit extends it: enough for one Postgres commit, short
    # enough that a crash between acquire and commit blocks the slot for seconds only.
    lease_pending_ms: PositiveInt = 5_000
    # Lease TTL of a confirmed hold; past it the next request asks Postgres, which refreshes the lease.
    confirmed_lease_ms: PositiveInt = 3_600_000  # 1 hour

    # PostgreSQL.
    db_pool_min_size: Annotated[int, Meta(ge=0)] = 2
    db_pool_max_size: PositiveInt = 20
    # Waiting for a pooled connection; past it the request gets 503 (overloaded when every connection was
    # busy, backend-unavailable when a new connection could not be opened).
    db_acquire_timeout_s: PositiveFloat = 2.0
    # Opening one connection (asyncpg's default is 60 s: a frozen database would hold requests that long).
    db_connect_timeout_s: PositiveFloat = 2.0
    # After a failed connect, answer 503 at once for this long, then let one request probe the database.
    db_retry_interval_s: PositiveFloat = 1.0
    # After a lost reply to a claim, how long to keep asking the database whether it committed before
    # answering 503 outcome-unknown.
    claim_resolve_budget_s: PositiveFloat = 5.0
    # Group commit: a worker's concurrent one-seat claims without an Idempotency-Key ride in one statement, at
    # most this many (1: each claim alone, as before), with at most `claim_batches_in_flight` such statements
    # running at once; claims that arrive meanwhile form the next batch.
    claim_batch_max_size: PositiveInt = 64
    claim_batches_in_flight: PositiveInt = 2
    # Client-side budget for one statement.
    db_command_timeout_s: PositiveFloat = 5.0
    # Server-side statement_timeout, so a stuck query is cancelled in Postgres too.
    db_statement_timeout_ms: PositiveInt = 5_000

    # Idempotency records are kept at least this long (24 hours). Purging one retires its hold's lease
    # token, so it must outlast every lease (checked below).
    idempotency_retention_s: Annotated[int, Meta(ge=86_400)] = 86_400
    # Cancelled and expired holds leave the hot tables this long after they ended (7 days): no read of the
    # gateway needs them by then (the lease rebuild reads a lease's life back), and claims and the seat map
    # stay as fast as on the first day. At least idempotency_retention_s: a hold leaves after its record.
    retention_terminal_s: PositiveInt = 604_800
    # Confirmed holds leave this long after their confirmation, and their slots then read free; 0: never
    # (a confirmed hold is a sale). Set it only past the end of any event; at least idempotency_retention_s.
    retention_confirmed_s: Annotated[int, Meta(ge=0)] = 0
    # Holds that leave go to holds_archive and hold_slots_archive; false: deleted.
    retention_archive: bool = True
    # The sweeper marks lapsed holds expired this often, at most `sweep_batch_size` per statement.
    sweep_interval_s: PositiveFloat = 1.0
    sweep_batch_size: PositiveInt = 1_000

    # Background work (the sweeper, the hold event sequencer, the outbox drains, the purges) runs in one
    # worker per database, elected through Postgres (gateway.leader): its lease lasts this long and is renewed
    # every third of it; a leader that dies or freezes is replaced within about this long.
    background_lease_s: Annotated[float, Meta(ge=0.3, le=3_600)] = 3.0

    # Hold events (GET /v1/hold-events, webhooks, live streams). The background leader numbers committed
    # events this often and NOTIFYs every worker of the new head: the lag from a commit to its event's read.
    hold_events_interval_s: Annotated[float, Meta(gt=0, le=60)] = 0.1
    # Each worker also reads the head on its own this often (and on each reconnect of its LISTEN connection),
    # should a notification be lost: the longest a lost one delays a long poll, a stream or a webhook.
    hold_events_resync_s: Annotated[float, Meta(gt=0, le=3_600)] = 5.0
    # Events are kept at least this long (7 days), then purged by the sweeper.
    hold_events_retention_s: Annotated[int, Meta(ge=3_600)] = 604_800

    # Live availability streams (GET /v1/events/{event_id}/stream). Open streams per worker, at most: past
    # it, 503. Each costs a socket and a small task; none costs a query per change.
    stream_max_subscribers: PositiveInt = 10_000
    # An event's changes are sent at most once per this long (the first after a quiet spell at once): a
    # burst of holds reaches a seat map as a few messages a second.
    stream_flush_interval_s: Annotated[float, Meta(gt=0, le=10)] = 0.5
    # A comment line on an idle stream this often, so that proxies do not close it.
    stream_heartbeat_s: Annotated[float, Meta(gt=0, le=300)] = 15.0
    # How often a worker asks whether the inventories of the events it streams changed (blocked seats,
    # a replacement): one statement for all of them; a change sends their subscribers a fresh snapshot.
    stream_inventory_check_s: Annotated[float, Meta(gt=0, le=300)] = 2.0

    # Webhooks: every hold event POSTed to each endpoint (POST /v1/webhook-endpoints), signed as Standard
    # Webhooks define, at least once and in order per hold. One attempt's whole budget, connect to the last
    # byte read: a hung receiver holds a delivery slot this long, never longer.
    webhook_timeout_s: Annotated[float, Meta(gt=0, le=300)] = 10.0
    # Retries after a failed attempt (non-2xx, timeout, no connection): exponential backoff from base to max,
    # with full jitter (a uniform delay up to that), so that a recovering receiver is not hit by a wave.
    webhook_retry_base_s: PositiveFloat = 1.0
    webhook_retry_max_s: PositiveFloat = 3_600.0
    # A delivery is retried this long from its event (24 hours), then marked failed (redeliver to try again).
    webhook_retry_window_s: PositiveInt = 86_400
    # Without a move of the feed's head or a finished send, a worker looks for due retries this often.
    webhook_poll_interval_s: Annotated[float, Meta(gt=0, le=60)] = 1.0
    # Deliveries in flight per worker, at most (also its HTTP client's connection pool).
    webhook_concurrency: Annotated[int, Meta(ge=1, le=1_000)] = 16
    # Deliveries in flight to one endpoint per worker, at most: a hung or slow endpoint leaves the other
    # slots to the rest.
    webhook_endpoint_concurrency: PositiveInt = 8
    # While a worker finishes requests at least this fast (per second, over a quarter of a second), its
    # webhook deliveries yield to them: only those owed for webhook_max_defer_s are sent, the rest once the
    # rate drops (a delivery costs a worker more CPU than a hold: a flash sale keeps its capacity). 0: never.
    webhook_yield_above_rps: Annotated[float, Meta(ge=0)] = 100.0
    # How long a delivery waits for a busy worker, at most: past it, it is sent whatever the load.
    webhook_max_defer_s: Annotated[float, Meta(ge=0, le=3_600)] = 10.0

    # HTTP keep-alive for idle client connections. uvicorn's 5 s is shorter than what load balancers and
    # clients assume (often 60 s or more): a request sent as the server closes an idle connection is lost.
    http_keep_alive_s: PositiveInt = 75

    # `Retry-After` seconds on 503.
    retry_after_s: PositiveInt = 1

    # Operations. With a token, /v1/holds (the listing), /v1/stats, /v1/events/{e}/stats, /ops and
    # /metrics require it (`Authorization: Bearer <token>`); without one they are open, and the gateway
    # says so at start.
    ops_token: Annotated[str, Meta(min_length=16)] | None = None
    # A key created or deleted takes effect at once on its own worker and, told by NOTIFY, on the others; each
    # worker also reloads the keys this often, should a notification be lost (the longest a revoked key may
    # still be accepted then).
    client_keys_refresh_s: Annotated[float, Meta(gt=0, le=60)] = 10.0
    # Page sizes of the operations listings.
    list_default_limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    # The Redis/Postgres agreement check in /v1/stats compares at most this many live slots.
    agreement_sample_size: Annotated[int, Meta(ge=0, le=100_000)] = 10_000

    # Serve POST /v1/holds by a raw ASGI route in front of Litestar (same contract, a fraction of the CPU per
    # request); false: Litestar's route serves it, as every other route.
    hot_routes: bool = True

    # Logging: `json` (one object per line) or `text`; one line per request (INFO) unless access_log is off.
    log_level: Annotated[str, Meta(pattern=r"\A(?i:debug|info|warning|error)\Z")] = "INFO"
    log_format: Literal["json", "text"] = "json"
    access_log: bool = True
    # Of the hold-creation 409s (a rejection storm's losers), each worker logs the first of every this many,
    # with `sampled_1_in` on the line; 1 logs them all. Every other request is always logged. A line costs
    # the worker ~3 µs (loadtests/access_log_cpu.py); 100 is for the log's volume: a storm of 10k
    # rejections/s writes ~30 KB/s instead of 3 MB/s for the shipper, often on the same cores, to carry.
    access_log_409_sample: PositiveInt = 100
    # JSON request lines are written this often (or past 1024 pending lines): a worker killed outright
    # loses at most this window of them; a graceful stop loses none.
    access_log_flush_interval_s: Annotated[float, Meta(gt=0, le=10)] = 0.1

    @property
    def redis_configured(self) -> bool:
        """Whether a Redis is set (by URL or through Sentinel): else the gateway runs db-only."""
        return self.redis_url is not None or self.redis_sentinels is not None

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """GATEWAY_REDIS_SENTINELS as (host, port) pairs."""
        if self.redis_sentinels is None:
            return []
        pairs = (address.rpartition(":") for address in self.redis_sentinels.split(","))
        return [(host, int(port)) for host, _, port in pairs]

    def _check_redis(self) -> None:
        """One way to Redis: a URL, or Sentinels with the master's name (and its password and database)."""
        if self.redis_sentinels is not None:
            if self.redis_url is not None:
                raise ValueError("set GATEWAY_REDIS_URL or GATEWAY_REDIS_SENTINELS, not both")
            if self.redis_sentinel_master is None:
                raise ValueError(
                    "GATEWAY_REDIS_SENTINELS needs GATEWAY_REDIS_SENTINEL_MASTER, the master's name"
                )
        elif self.redis_sentinel_master is not None or self.redis_sentinel_password is not None:
            raise ValueError("GATEWAY_REDIS_SENTINEL_MASTER and _PASSWORD go with GATEWAY_REDIS_SENTINELS")
        elif self.redis_password is not None or self.redis_db:
            raise ValueError(
                "GATEWAY_REDIS_PASSWORD and GATEWAY_REDIS_DB go with GATEWAY_REDIS_SENTINELS (a "
                "GATEWAY_REDIS_URL carries its own)"
            )

    def __post_init__(self) -> None:
        self._check_redis()
        if (self.shard_map is None) != (self.pod is None):
            raise ValueError(
                "GATEWAY_SHARD_MAP and GATEWAY_POD go together: the map, and this gateway's pod in it"
            )
        if self.min_ttl_s > self.max_ttl_s:
            raise ValueError("min_ttl_s must not exceed max_ttl_s")
        if not self.min_ttl_s <= self.default_ttl_s <= self.max_ttl_s:
            raise ValueError("default_ttl_s must lie between min_ttl_s and max_ttl_s")
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("db_pool_min_size must not exceed db_pool_max_size")
        if self.max_hold_lifetime_s < self.max_ttl_s:
            raise ValueError("max_hold_lifetime_s must be at least max_ttl_s")
        # The longest a lease carries a hold's token, from the hold's creation: a confirm at the end of its
        # longest life (extensions included), that lease's life, and one more from a rebuild just before it
        # lapsed (lease_sync).
        lease_life_s = self.max_hold_lifetime_s + 2 * -(-self.confirmed_lease_ms // 1000)
        if self.idempotency_retention_s <= lease_life_s:
            raise ValueError(
                f"idempotency_retention_s must exceed the longest life of a lease, max_hold_lifetime_s + 2 x "
                f"confirmed_lease_ms ({lease_life_s} s): purging a record retires its hold's lease token"
            )
        if self.retention_terminal_s < self.idempotency_retention_s:
            raise ValueError(
                "retention_terminal_s must be at least idempotency_retention_s (and so outlast every lease)"
            )
        if 0 < self.retention_confirmed_s < self.idempotency_retention_s:
            raise ValueError("retention_confirmed_s must be 0 (never) or at least idempotency_retention_s")
        if self.webhook_retry_base_s > self.webhook_retry_max_s:
            raise ValueError("webhook_retry_base_s must not exceed webhook_retry_max_s")
        if self.webhook_endpoint_concurrency > self.webhook_concurrency:
            raise ValueError("webhook_endpoint_concurrency must not exceed webhook_concurrency")
        if self.webhook_retry_window_s >= self.hold_events_retention_s:
            # A delivery is sent from its event's row: the event must outlive every retry.
            raise ValueError("webhook_retry_window_s must be shorter than hold_events_retention_s")


def settings_from_env(environ: Mapping[str, str] | None = None, /, **overrides: object) -> Settings:
    """Build the settings from GATEWAY_* variables and overrides; raise ConfigError naming the fault."""
    environ = os.environ if environ is None else environ
    known = set(Settings.__struct_fields__)
    raw: dict[str, object] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(ENV_PREFIX + "TEST_") or name in NOT_SETTINGS:
            continue
        field = name.removeprefix(ENV_PREFIX).lower()
        if field not in known:
            raise ConfigError(f"unknown setting {name}; known: {', '.join(sorted(known))}")
        raw[field] = value if value != "" else None
    raw.update(overrides)
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_env_name(str(exc))}") from exc


def _env_name(message: str) -> str:
    """Rewrite msgspec's `$.field` paths as the environment variable a user sets."""
    if "`$." in message:
        head, _, rest = message.partition("`$.")
        field, _, tail = rest.partition("`")
        return f"{head}{ENV_PREFIX}{field.upper()}{tail}"
    return message
