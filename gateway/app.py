"""create_app(settings): the Litestar app, its lifespan (pools, scripts, the background leader's election and
work, the LISTEN connection) and error rendering."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import msgspec
from litestar import Litestar
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from gateway import background, metrics, sql
from gateway.access_log import AccessLog, Sink, write_stderr
from gateway.api.client_keys import ClientKeysController
from gateway.api.health import health, ready
from gateway.api.hold_events import HoldEventsController
from gateway.api.holds import HoldsController
from gateway.api.hot_holds import CreateHoldRoute, HoldRoutesOfOtherPods, HotRoutes
from gateway.api.inventory import InventoryController
from gateway.api.ops import OpsController, ops_page, ops_page_asset, prometheus_metrics
from gateway.api.pod_forwarding import PodForwarder
from gateway.api.problems import framework_error, gateway_error, internal_error
from gateway.api.schema import openapi_config, schema_page_asset
from gateway.api.slots import SlotsController
from gateway.api.streams import event_stream
from gateway.api.webhooks import WebhookEndpointsController
from gateway.availability import AvailabilityCache
from gateway.client_keys import ClientKeys
from gateway.config import Settings
from gateway.errors import BackendUnavailable, GatewayError
from gateway.hold_events import HoldEventFeed
from gateway.holds import HoldService
from gateway.inventory_store import InventoryStore
from gateway.leader import Leadership, new_worker_id
from gateway.listener import Listener
from gateway.logs import install_request_id_factory
from gateway.loop_lag import watch_loop_lag
from gateway.observability import ObservedLitestar
from gateway.ops import OpsService
from gateway.redis_front import REDIS_FAILURES, RedisFront, RedisUnavailable
from gateway.store import APPLICATION_NAME, Store
from gateway.streams import StreamHub
from gateway.sweeper import run_redis_upkeep, run_sweeper
from gateway.webhook_store import WebhookStore
from gateway.webhooks import WebhookDispatcher, WebhookEndpoints

log = logging.getLogger(__name__)

# Connections per worker to GATEWAY_DATABASE_READ_URL, at most: the operations reads are few.
READ_REPLICA_POOL_MAX_SIZE = 4


def create_app(  # noqa: PLR0915 - its lifespan wires every part together, in order
    settings: Settings, *, access_log_sink: Sink = write_stderr
) -> Litestar:
    """The gateway as an ASGI app. `settings` must carry database_url (and a Redis, or run db-only). JSON
    request lines go to `access_log_sink` (standard error; tests keep them)."""
    if settings.database_url is None:
        raise ValueError("create_app needs settings.database_url; `gateway serve` starts an embedded one")
    access_log = _access_log(settings, access_log_sink)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        worker_id = new_worker_id()
        store = await Store.open(settings, f"{APPLICATION_NAME}/{worker_id}")
        await _check_pod(store, settings)
        front = await RedisFront.open(settings) if settings.redis_configured else None
        service = HoldService(store, front, settings)
        if service.lease_sync is not None and front is not None and front.available:
            # A Redis restarted or flushed since the last rebuild gets its leases back before traffic.
            with suppress(*REDIS_FAILURES, RedisUnavailable, BackendUnavailable):
                await service.lease_sync.rebuild_if_needed()
        client_keys = ClientKeys(store, settings)
        with suppress(BackendUnavailable):  # unloaded, hold routes answer 503 until the next reload works
            await client_keys.refresh()
        app.state.leadership = leadership = await _elect(store, front, settings, worker_id)
        app.state.client_keys = client_keys
        app.state.holds = service
        app.state.inventories = InventoryStore(store)
        app.state.availability = AvailabilityCache(app.state.inventories)
        app.state.ops = ops = OpsService(service, leadership, await _read_replica(settings, worker_id))
        forwarder = None if settings.pod is None else PodForwarder(settings.pod, settings.retry_after_s)
        if settings.hot_routes or forwarder is not None:
            _put_hot_routes_in_front(app, service, settings, forwarder)
        app.state.hold_events = feed = HoldEventFeed(store, settings.hold_events_interval_s)
        app.state.listener = listener = _listener(
            settings,
            store=store,
            worker_id=worker_id,
            feed=feed,
            client_keys=client_keys,
            leadership=leadership,
        )
        app.state.streams = streams = StreamHub(
            store, feed, app.state.availability, app.state.inventories, settings
        )
        app.state.webhooks = WebhookEndpoints(WebhookStore(store))
        observed = app if isinstance(app, ObservedLitestar) else None
        dispatcher = WebhookDispatcher(
            WebhookStore(store),
            settings,
            feed,
            lambda: observed.requests_served if observed else 0,
            lambda: leadership.leading,
        )
        _warn_if_ops_open(settings)
        metrics.worker_started()
        # The leader's work first: on stopping, it ends before the lease is released.
        leader_tasks = [
            asyncio.create_task(run_sweeper(service, leadership), name="sweeper"),
            asyncio.create_task(feed.run_sequencer(leadership), name="hold-event-sequencer"),
        ]
        electing = asyncio.create_task(leadership.run(), name="background-leader")
        tasks = [
            asyncio.create_task(listener.run(), name="listener"),
            asyncio.create_task(run_redis_upkeep(service), name="redis-upkeep"),
            asyncio.create_task(watch_loop_lag(), name="loop-lag"),
            asyncio.create_task(client_keys.keep_fresh(), name="client-keys"),
            asyncio.create_task(streams.run(), name="streams"),
            asyncio.create_task(dispatcher.run(), name="webhooks"),
            *([] if access_log is None else [asyncio.create_task(access_log.run(), name="access-log")]),
        ]
        try:
            yield
        finally:
            metrics.worker_stopped()
            await streams.close()
            await background.stop_all([*leader_tasks, electing])
            await leadership.release()  # another worker takes over at once, not after the lease
            await background.stop_all(tasks)
            await client_keys.close()
            if front is not None:
                await front.close()
            await ops.close()
            if forwarder is not None:
                await forwarder.close()
            await store.close()

    install_request_id_factory()
    app = ObservedLitestar(
        route_handlers=[
            HoldsController,
            SlotsController,
            InventoryController,
            ClientKeysController,
            HoldEventsController,
            event_stream,
            WebhookEndpointsController,
            OpsController,
            health,
            ready,
            prometheus_metrics,
            ops_page,
            ops_page_asset,
            schema_page_asset,
        ],
        lifespan=[lifespan],
        exception_handlers={
            GatewayError: gateway_error,
            HTTPException: framework_error,  # mapped to GatewayErrors by class and status code
            HTTP_500_INTERNAL_SERVER_ERROR: internal_error,
        },
        request_max_body_size=settings.max_body_bytes,
        openapi_config=openapi_config(),
        debug=False,
        logging_config=None,  # the CLI configures logging (JSON lines) in every worker; Litestar must not
        state=State({"settings": settings}),
    )
    app.access_log = access_log
    return app


def _warn_if_ops_open(settings: Settings) -> None:
    if settings.ops_token is None:
        log.warning(
            "GATEWAY_OPS_TOKEN is not set: /v1/holds, /v1/stats, /ops and /metrics are open to anyone "
            "who can reach this port"
        )


def _put_hot_routes_in_front(
    app: Litestar, service: HoldService, settings: Settings, forwarder: PodForwarder | None
) -> None:
    """POST /v1/holds by a raw route in front of Litestar's router (gateway.api.hot_holds), and with pods
    another pod's hold routes sent on to its gateways; once per app."""
    if isinstance(app.asgi_handler, HotRoutes):
        return
    max_body = settings.max_body_bytes
    routes = CreateHoldRoute(service, app.state, max_body, forwarder).routes() if settings.hot_routes else {}
    pods = None if forwarder is None else HoldRoutesOfOtherPods(service, forwarder, max_body)
    app.asgi_handler = HotRoutes(routes, app.asgi_handler, pods)


def _access_log(settings: Settings, sink: Sink) -> AccessLog | None:
    """The request lines the settings ask for: none if the access log is off or its level (INFO) is not
    logged."""
    if not settings.access_log or logging.getLevelName(settings.log_level.upper()) > logging.INFO:
        return None
    return AccessLog(
        json=settings.log_format == "json",
        sample_409=settings.access_log_409_sample,
        flush_interval_s=settings.access_log_flush_interval_s,
        sink=sink,
    )


async def _check_pod(store: Store, settings: Settings) -> None:
    """A gateway of a pod serves only a database set up as that pod's (`gateway pods init`), whose fence
    refuses the events of buckets it does not own. A database that cannot be reached now is checked by its
    fence at each claim."""
    if settings.pod is None:
        return
    try:
        recorded = await store.pod_identity()
    except BackendUnavailable:
        log.warning("cannot check that the database is pod %r's now: its fence will", settings.pod)
        return
    if recorded != settings.pod:
        await store.close()
        raise RuntimeError(
            f"GATEWAY_POD is {settings.pod!r} but its database is "
            + ("not set up as a pod" if recorded is None else f"pod {recorded!r}'s")
            + ": run `gateway pods init --map <the shard map>`"
        )


async def _read_replica(settings: Settings, worker_id: str) -> Store | None:
    """The store of GATEWAY_DATABASE_READ_URL for the operations listings (a few connections), or None."""
    if settings.database_read_url is None:
        return None
    replica = msgspec.structs.replace(
        settings,
        database_url=settings.database_read_url,
        db_pool_min_size=1,
        db_pool_max_size=min(settings.db_pool_max_size, READ_REPLICA_POOL_MAX_SIZE),
    )
    return await Store.open(replica, f"{APPLICATION_NAME}-reads/{worker_id}")


async def _elect(store: Store, front: RedisFront | None, settings: Settings, worker_id: str) -> Leadership:
    """This worker's part in the background leader's election, its first claim made: the first worker of a
    database leads from its first request on."""
    # Nothing to be cut off from without Redis; with it, a worker that reaches it leads before one that does
    # not (the leader drains the release outbox).
    leadership = Leadership(store, settings, worker_id, lambda: front is None or front.available)
    with suppress(BackendUnavailable):
        await leadership.claim()
    return leadership


def _listener(
    settings: Settings,
    *,
    store: Store,
    worker_id: str,
    feed: HoldEventFeed,
    client_keys: ClientKeys,
    leadership: Leadership,
) -> Listener:
    """The worker's LISTEN connection, wired to what it tells: the feed's head, client keys, a handover."""
    listener = Listener(settings, store.breaker, worker_id)
    listener.on(sql.HOLD_EVENTS_CHANNEL, feed.notified)
    listener.on(sql.CLIENT_KEYS_CHANNEL, client_keys.changed)
    listener.on(sql.LEADER_CHANNEL, leadership.stepped_down)
    listener.read_on_connect(feed.read_head)
    listener.on_connect(client_keys.changed)
    return listener
