"""create_app(settings): the Litestar app, its lifespan (pools, scripts, sweeper) and error rendering."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException, InternalServerException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.utils.empty import value_or_default
from litestar.utils.scope.state import ScopeState

from gateway import background, metrics
from gateway.api.health import health, ready
from gateway.api.holds import HoldsController, content_type_error
from gateway.api.ops import OpsController, ops_page, ops_page_asset, prometheus_metrics
from gateway.api.problems import gateway_error, lone_surrogate_field, problem_response
from gateway.api.schema import openapi_config, schema_page_asset
from gateway.api.slots import SlotsController
from gateway.config import Settings
from gateway.errors import BackendUnavailable, GatewayError
from gateway.holds import HoldService
from gateway.logs import install_request_id_factory
from gateway.loop_lag import watch_loop_lag
from gateway.observability import ObservedLitestar
from gateway.ops import OpsService
from gateway.redis_front import REDIS_FAILURES, RedisFront, RedisUnavailable
from gateway.store import Store
from gateway.sweeper import run_sweeper

log = logging.getLogger(__name__)

# What Litestar raises (as a 500) when the client disconnects while its body is being read.
_CLIENT_DISCONNECTED = "client disconnected prematurely"


def create_app(settings: Settings) -> Litestar:
    """The gateway as an ASGI app. `settings` must carry database_url (and redis_url, or run db-only)."""
    if settings.database_url is None:
        raise ValueError("create_app needs settings.database_url; `gateway serve` starts an embedded one")

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        store = await Store.open(settings)
        front = await RedisFront.open(settings) if settings.redis_url else None
        service = HoldService(store, front, settings)
        if service.lease_sync is not None and front is not None and front.available:
            # A Redis restarted or flushed since the last rebuild gets its leases back before traffic.
            with suppress(*REDIS_FAILURES, RedisUnavailable, BackendUnavailable):
                await service.lease_sync.rebuild_if_needed()
        app.state.holds = service
        app.state.ops = OpsService(service)
        if settings.ops_token is None:
            log.warning(
                "GATEWAY_OPS_TOKEN is not set: /v1/holds, /v1/stats, /ops and /metrics are open to anyone "
                "who can reach this port"
            )
        metrics.worker_started()
        tasks = [
            asyncio.create_task(run_sweeper(service), name="sweeper"),
            asyncio.create_task(watch_loop_lag(), name="loop-lag"),
        ]
        try:
            yield
        finally:
            metrics.worker_stopped()
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
            HTTPException: _http_exception,
            HTTP_500_INTERNAL_SERVER_ERROR: _internal_error,
        },
        request_max_body_size=settings.max_body_bytes,
        openapi_config=openapi_config(),
        debug=False,
        logging_config=None,  # the CLI configures logging (JSON lines) in every worker; Litestar must not
        state=State({"settings": settings}),
    )
    app.access_log_enabled = settings.access_log
    return app


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, object]]:
    """Litestar's own errors (bad JSON, wrong types, body too large, unknown route) as problem+json."""
    status = exc.status_code
    if status == 400 and (declared := content_type_error(request.scope)) is not None:
        exc, status = declared, 415  # a body declared as something else did not decode as JSON: say why
    if status == 400 and not isinstance(exc, ValidationException):
        # The body did not decode. A lone surrogate ("\\ud800") is not text: name its field as a bad value.
        field = lone_surrogate_field(value_or_default(ScopeState.from_scope(request.scope).body, b""))
        if field is not None:
            detail = f"`{field}`: a string holds a lone UTF-16 surrogate, which is not text"
            return problem_response(422, "invalid-request", "Invalid request", detail)
        return problem_response(400, "malformed-request", "Malformed request", str(exc.detail))
    if isinstance(exc, ValidationException):
        detail = _validation_detail(exc)
        malformed = "malformed" in detail.lower() or "json is malformed" in detail.lower()
        if malformed:
            return problem_response(400, "malformed-request", "Malformed request", detail)
        return problem_response(422, "invalid-request", "Invalid request", detail)
    titles = {
        404: "Not found",
        405: "Method not allowed",
        413: "Request body too large",
        415: "Unsupported media type",
    }
    slug = {
        404: "not-found",
        405: "method-not-allowed",
        413: "body-too-large",
        415: "unsupported-media-type",
    }.get(status, "http-error")
    headers = dict(exc.headers or {})
    return problem_response(status, slug, titles.get(status, "HTTP error"), str(exc.detail), headers=headers)


def _validation_detail(exc: ValidationException) -> str:
    """msgspec's message with the field path: e.g. "Expected `str`, got `int` - at `$.event_id`"."""
    extra = exc.extra
    if isinstance(extra, list) and extra:
        parts = []
        for item in extra:
            if isinstance(item, dict):
                message = str(item.get("message", ""))
                key = item.get("key")
                source = item.get("source")
                source = getattr(source, "value", source)  # a ParamType enum for parameters
                where = f"`{key}`" if key else "the body"
                parts.append(
                    f"{where} ({source}): {message}" if source and source != "body" else f"{where}: {message}"
                )
        if parts:
            return "; ".join(parts)
    return str(exc.detail)


def _internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, object]]:
    if isinstance(exc, InternalServerException) and exc.detail == _CLIENT_DISCONNECTED:
        # The client went away before sending the body it announced: its fault, and it hears no answer.
        return problem_response(400, "incomplete-request", "Incomplete request", "The body ended early.")
    log.exception("unhandled error", exc_info=exc)
    return problem_response(
        500, "internal-error", "Internal error", "The gateway failed to process the request."
    )
