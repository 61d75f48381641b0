"""create_app(settings): the Litestar app, its lifespan (pools, scripts, sweeper) and error rendering."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from litestar import Litestar
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from gateway import background, metrics
from gateway.access_log import AccessLog, Sink, write_stderr
from gateway.api.client_keys import ClientKeysController
from gateway.api.health import health, ready
from gateway.api.hold_events import HoldEventsController
from gateway.api.holds import HoldsController
from gateway.api.hot_holds import CreateHoldRoute, HotRoutes
from gateway.api.inventory import InventoryController
from gateway.api.ops import OpsController, ops_page, ops_page_asset, prometheus_metrics
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
from gateway.logs import install_request_id_factory
from gateway.loop_lag import watch_loop_lag
from gateway.observability import ObservedLitestar
from gateway.ops import OpsService
from gateway.redis_front import REDIS_FAILURES, RedisFront, RedisUnavailable
from gateway.store import Store
from gateway.streams import StreamHub
from gateway.sweeper import run_sweeper
from gateway.webhook_store import WebhookStore
from gateway.webhooks import WebhookDispatcher, WebhookEndpoints

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, access_log_sink: Sink = write_stderr) -> Litestar:
    """The gateway as an ASGI app. `settings` must carry database_url (and redis_url, or run db-only). JSON
    request lines go to `access_log_sink` (standard error; tests keep them)."""
    if settings.database_url is None:
        raise ValueError("create_app needs settings.database_url; `gateway serve` starts an embedded one")
    access_log = _access_log(settings, access_log_sink)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        store = await Store.open(settings)
        front = await RedisFront.open(settings) if settings.redis_url else None
        service = HoldService(store, front, settings)
        if service.lease_sync is not None and front is not None and front.available:
            # A Redis restarted or flushed since the last rebuild gets its leases back before traffic.
            with suppress(*REDIS_FAILURES, RedisUnavailable, BackendUnavailable):
                await service.lease_sync.rebuild_if_needed()
        client_keys = ClientKeys(store, settings)
        with suppress(BackendUnavailable):  # unloaded, hold routes answer 503 until the next reload works
            await client_keys.refresh()
        app.state.client_keys = client_keys
        app.state.holds = service
        app.state.inventories = InventoryStore(store)
        app.state.availability = AvailabilityCache(app.state.inventories)
        app.state.ops = OpsService(service)
        if settings.hot_routes and not isinstance(app.asgi_handler, HotRoutes):
            # POST /v1/holds by a raw route in front of Litestar's router (gateway.api.hot_holds).
            create_route = CreateHoldRoute(service, app.state, settings.max_body_bytes)
            app.asgi_handler = HotRoutes(create_route.routes(), app.asgi_handler)
        feed = HoldEventFeed(store, settings.hold_events_interval_s)
        app.state.hold_events = feed
        streams = StreamHub(store, feed, app.state.availability, app.state.inventories, settings)
        app.state.streams = streams
        app.state.webhooks = WebhookEndpoints(WebhookStore(store))
        observed = app if isinstance(app, ObservedLitestar) else None
        dispatcher = WebhookDispatcher(
            WebhookStore(store), settings, feed, lambda: observed.requests_served if observed else 0
        )
        if settings.ops_token is None:
            log.warning(
                "GATEWAY_OPS_TOKEN is not set: /v1/holds, /v1/stats, /ops and /metrics are open to anyone "
                "who can reach this port"
            )
        metrics.worker_started()
        tasks = [
            asyncio.create_task(run_sweeper(service), name="sweeper"),
            asyncio.create_task(watch_loop_lag(), name="loop-lag"),
            asyncio.create_task(client_keys.keep_fresh(), name="client-keys"),
            asyncio.create_task(feed.run(), name="hold-events"),
            asyncio.create_task(streams.run(), name="streams"),
            asyncio.create_task(dispatcher.run(), name="webhooks"),
        ]
        if access_log is not None:
            tasks.append(asyncio.create_task(access_log.run(), name="access-log"))
        try:
            yield
        finally:
            metrics.worker_stopped()
            await streams.close()
            for task in tasks:
                await background.stop(task)
            if front is not None:
                await front.close()
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
