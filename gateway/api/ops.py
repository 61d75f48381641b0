"""Operations routes: the gateway's numbers, Prometheus metrics and the live /ops page. With GATEWAY_OPS_TOKEN
set they require it (so does the holds listing, in holds.py); the slot routes frontends poll stay open."""

from pathlib import Path

import msgspec
from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.params import FromPath

from gateway import metrics
from gateway.api.auth import require_ops_token
from gateway.api.problems import problem_specs
from gateway.api.slots import check_identifier
from gateway.errors import InventoryNotFound, RouteNotFound
from gateway.models import (
    HOLD_STATUSES,
    IDENTIFIER_DESCRIPTION,
    IDENTIFIER_PATTERN_JS,
    LIVE_HOLD_STATUS,
    SLOT_STATES,
    Stats,
)
from gateway.ops import REJECTION_COUNTERS, OpsService

OPS_PAGE_DIR = Path(__file__).resolve().parent.parent / "ops_page"
# Media types without a charset: Litestar appends `; charset=utf-8` to every text/* type itself.
OPS_PAGE_FILES = {"ops.html": "text/html", "ops.js": "text/javascript", "ops.css": "text/css"}
# The formats the page's script needs, from their one definition (models.py), given to it as a JSON data block
# in the page: the script keeps no copy. (A data block is not script: the page's CSP lets it be.)
PAGE_FORMATS_ID = "gateway-formats"
PAGE_FORMATS = {
    "identifier_pattern": IDENTIFIER_PATTERN_JS,
    "identifier_description": IDENTIFIER_DESCRIPTION,
    "hold_statuses": HOLD_STATUSES,
    "live_hold_status": LIVE_HOLD_STATUS,
    "slot_states": SLOT_STATES,
    # reason -> its field in the stats' counters
    "rejection_counters": REJECTION_COUNTERS,
    # The problem type of an event's availability when the event has no inventory (it is open).
    "no_inventory_problem": InventoryNotFound().problem_type,
}
# `<` escaped, so no value could ever close the block early.
_FORMATS_BLOCK = (
    f'<script type="application/json" id="{PAGE_FORMATS_ID}">'.encode()
    + msgspec.json.encode(PAGE_FORMATS).replace(b"<", b"\\u003c")
    + b"</script>\n"
)


def _ops(state: State) -> OpsService:
    ops: OpsService = state.ops
    return ops


class OpsController(Controller):
    path = "/v1"
    tags = ["operations"]  # noqa: RUF012 - Litestar's own class attribute
    guards = [require_ops_token]  # noqa: RUF012 - Litestar's own class attribute

    @get("/stats", summary="The gateway's numbers, over all events", responses=problem_specs(401, 503))
    async def stats(self, state: State) -> Stats:
        return await _ops(state).stats(None)

    @get(
        "/events/{event_id:str}/stats",
        summary="The gateway's numbers for one event",
        responses=problem_specs(400, 401, 422, 503),
    )
    async def event_stats(self, state: State, event_id: FromPath[str]) -> Stats:
        check_identifier("event_id", event_id)
        return await _ops(state).stats(event_id)


@get(
    "/metrics",
    summary="Prometheus metrics, summed over all workers",
    tags=["operations"],
    guards=[require_ops_token],
    include_in_schema=False,
)
async def prometheus_metrics(state: State) -> Response[bytes]:
    gauges = await _ops(state).database_gauges()
    return Response(metrics.exposition(gauges), media_type=metrics.CONTENT_TYPE)


@get("/ops", summary="The live operations page", guards=[require_ops_token], include_in_schema=False)
async def ops_page() -> Response[bytes]:
    return _page_file("ops.html")


@get("/ops/{name:str}", guards=[require_ops_token], include_in_schema=False)
async def ops_page_asset(name: FromPath[str]) -> Response[bytes]:
    if name not in OPS_PAGE_FILES or name == "ops.html":
        raise RouteNotFound()
    return _page_file(name)


def _page_file(name: str) -> Response[bytes]:
    content = (OPS_PAGE_DIR / name).read_bytes()
    if name == "ops.html":
        content = content.replace(b"</head>", _FORMATS_BLOCK + b"</head>", 1)
    # The page works offline: no CDN, and it may only talk to this gateway.
    headers = {
        "Cache-Control": "no-store",
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
        "X-Content-Type-Options": "nosniff",
    }
    return Response(content, media_type=OPS_PAGE_FILES[name], headers=headers)
