"""The hold event feed for operations: GET /v1/hold-events, a long poll over every hold's state changes."""

from typing import Annotated

from litestar import Controller, get
from litestar.datastructures import State
from litestar.params import QueryParameter

from gateway import hold_events
from gateway.api.auth import require_ops_token
from gateway.api.problems import problem_specs
from gateway.errors import InvalidRequest
from gateway.hold_events import HoldEventFeed
from gateway.models import HoldEventPage

MAX_EVENTS_PER_PAGE = 1_000
DEFAULT_EVENTS_PER_PAGE = 100
MAX_WAIT_SECONDS = 30
# `after` for "from now on": the feed's head as this worker knows it.
LATEST = "latest"


def parse_cursor(after: str | None, feed: HoldEventFeed) -> int:
    """A feed position from `after`: absent, from the oldest event kept; `latest`, from the head."""
    if after is None:
        return 0
    if after == LATEST:
        return feed.head
    if not after.isascii() or not after.isdigit() or len(after) > 19:
        raise InvalidRequest(f"`after` must be a cursor (a `next_cursor` or an event id) or `{LATEST}`")
    return int(after)


class HoldEventsController(Controller):
    path = "/v1/hold-events"
    tags = ["operations"]  # noqa: RUF012 - Litestar's own class attribute
    guards = [require_ops_token]  # noqa: RUF012 - Litestar's own class attribute

    @get(
        "/",
        summary="Hold events after a cursor (long poll)",
        description="Every state change of every hold (hold.created, hold.extended, hold.confirmed, "
        "hold.cancelled, hold.expired), in commit order, after `after`. With none yet, waits up to "
        "`wait_seconds` for one. Events are kept at least GATEWAY_HOLD_EVENTS_RETENTION_S (7 days). "
        "Requires the ops token when one is set.",
        responses=problem_specs(400, 401, 422, 503),
    )
    async def list_events(
        self,
        *,
        state: State,
        after: Annotated[
            str | None, QueryParameter(max_length=32, description=f"a cursor, an event id or `{LATEST}`")
        ] = None,
        limit: Annotated[int | None, QueryParameter(ge=1, le=MAX_EVENTS_PER_PAGE)] = None,
        wait_seconds: Annotated[float | None, QueryParameter(ge=0, le=MAX_WAIT_SECONDS)] = None,
    ) -> HoldEventPage:
        feed: HoldEventFeed = state.hold_events
        position = parse_cursor(after, feed)
        page_size = limit or DEFAULT_EVENTS_PER_PAGE
        rows = await hold_events.read_after(state.holds.store, position, page_size)
        if not rows and wait_seconds and await feed.wait_past(position, wait_seconds):
            rows = await hold_events.read_after(state.holds.store, position, page_size)
        return HoldEventPage(
            events=[row.to_model() for row in rows], next_cursor=str(rows[-1].id if rows else position)
        )
