"""/health (the process lives) and /ready (it can serve: Postgres up; says whether Redis fronts it)."""

import asyncio

from litestar import HttpMethod, Response, route
from litestar.datastructures import State
from litestar.openapi import ResponseSpec

from gateway.client_keys import ClientKeys
from gateway.holds import HoldService
from gateway.models import Health, Readiness
from gateway.ops import mode_reason

# HEAD as well as GET: some load balancers probe with HEAD. The same handler answers both, so the status is
# the same; the server (uvicorn) sends a HEAD answer's headers without its body.
_GET_AND_HEAD = [HttpMethod.GET, HttpMethod.HEAD]


@route("/health", http_method=_GET_AND_HEAD, summary="Liveness", tags=["operations"])
async def health() -> Health:
    return Health(status="ok")


@route(
    "/ready",
    http_method=_GET_AND_HEAD,
    summary="Readiness: 503 while Postgres is down",
    tags=["operations"],
    responses={503: ResponseSpec(Readiness, description="Postgres is down", generate_examples=False)},
)
async def ready(state: State) -> Response[Readiness]:
    service: HoldService = state.holds
    front = service.front
    if front is None:
        database_up, redis_up = await service.store.ping(), False
    else:
        database_up, redis_up = await asyncio.gather(service.store.ping(), front.ping())
    client_keys: ClientKeys = state.client_keys
    body = Readiness(
        database="up" if database_up else "down",
        redis="up" if redis_up else "down",
        mode="redis-front" if redis_up and service.mode == "redis-front" else "db-only",
        mode_reason=mode_reason(service),
        client_keys=("required" if client_keys.required else "open") if client_keys.loaded else "unknown",
    )
    return Response(body, status_code=200 if database_up else 503)
