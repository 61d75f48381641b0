"""GET /v1/events/{event_id}/stream: an event's availability as it changes, as Server-Sent Events, for anyone
(seat states and pool counts, never a hold id or a holder)."""

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Annotated, Any

from litestar import Request, get
from litestar.datastructures import Cookie, State
from litestar.params import FromPath, HeaderParameter
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Scope, Send

from gateway.api.problems import problem_specs
from gateway.api.slots import check_identifier
from gateway.streams import StreamHub, Subscriber

EVENT_STREAM = "text/event-stream"
# A Last-Event-ID is a feed position: at most 19 digits (a bigint). Anything else is not ours: ignored.
_POSITION_MAX_DIGITS = 19

STREAM_DESCRIPTION = """\
Server-Sent Events (`text/event-stream`), for anyone: the event's seat states and pool counts as they change,
so that a seat map updates without polling. Never a hold id or a holder.

Each message has an `id:` (the hold event feed position it reflects: every change of the event up to it), an
`event:` and one `data:` line of JSON:

- `snapshot`: `{"event_id", "availability", "seats"}`: `availability` as GET
  /v1/events/{event_id}/availability shows it (null for an event without an inventory); `seats` the seats
  that are not free, `{"A-1": "held", "A-2": "confirmed", "A-3": "blocked"}` (a seat not listed is free).
  First on every stream, and again whenever the stream has to start over (it fell behind, or the inventory
  changed: blocked seats, a replacement): replace everything shown.
- `changes`: `{"event_id", "seats", "pools"}`: `seats` the seats whose state changed, with their state now
  (`free`, `held`, `confirmed`); `pools` every pool of the event as the availability shows them, when any
  pool's counts changed (else `[]`).

Changes are coalesced: at most one message per event every GATEWAY_STREAM_FLUSH_INTERVAL_S (0.5 s).
A held seat whose hold lapses shows `free` once the lapse is recorded (by the sweeper, or by a claim that
takes the seat over), within about a second. A `: keep-alive` comment comes every GATEWAY_STREAM_HEARTBEAT_S
(15 s) on a quiet stream. Reconnecting with `Last-Event-ID` (browsers' EventSource do it by themselves)
resumes after that message where the worker still keeps the event's recent messages; else, or with an id
that is not one of ours, the stream starts with a fresh snapshot. 503 too-many-streams past
GATEWAY_STREAM_MAX_SUBSCRIBERS open streams on the worker."""


def parse_last_event_id(value: str | None) -> int | None:
    """The feed position a client resumes after; None (start over) for anything that is not one."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > _POSITION_MAX_DIGITS:
        return None
    return int(value)


class _StreamThatUnsubscribes(ASGIStreamingResponse):
    """A streaming response that ends its subscription however it ends: finished, client gone (Litestar
    cancels the body's iteration), or cancelled (the server stopping). A generator cancelled while it
    waits to send is only closed when collected, which must not be what frees its place."""

    __slots__ = ("_on_close",)

    def __init__(self, *, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class EventStream(Stream):
    __slots__ = ("_on_close",)

    def __init__(self, frames: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(
            frames,
            media_type=EVENT_STREAM,
            # no-store: not even a proxy may keep it; X-Accel-Buffering: nginx passes each message on at once.
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: Any = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: Any = None,
        status_code: int | None = None,
        type_encoders: Any = None,
    ) -> ASGIResponse:
        del app, media_type, type_encoders  # the media type is fixed; there is nothing to encode
        return _StreamThatUnsubscribes(
            on_close=self._on_close,
            iterator=self.iterator,
            background=self.background or background,
            content_length=0,
            cookies=[*self.cookies, *(cookies or ())],
            encoded_headers=encoded_headers,
            encoding=self.encoding,
            headers={**(headers or {}), **self.headers},
            is_head_response=is_head_response,
            media_type=EVENT_STREAM,
            status_code=self.status_code or status_code,
        )


@get(
    "/v1/events/{event_id:str}/stream",
    summary="An event's availability as it changes, as Server-Sent Events",
    description=STREAM_DESCRIPTION,
    tags=["availability"],
    media_type=EVENT_STREAM,
    responses=problem_specs(
        422,
        described={
            503: "too-many-streams: the worker serves as many streams as it may; backend-unavailable: the "
            "first snapshot could not be read; retry after `Retry-After` seconds"
        },
    ),
)
async def event_stream(
    state: State,
    event_id: FromPath[str],
    last_event_id: Annotated[
        str | None,
        HeaderParameter(
            name="Last-Event-ID",
            required=False,
            description="the `id` of the last message received: resume after it",
        ),
    ] = None,
) -> Stream:
    check_identifier("event_id", event_id)
    hub: StreamHub = state.streams
    subscriber: Subscriber = hub.subscribe(event_id, parse_last_event_id(last_event_id))
    try:
        await hub.first_snapshot(subscriber)
    except BaseException:
        hub.unsubscribe(subscriber)
        raise
    return EventStream(hub.frames(subscriber), lambda: hub.unsubscribe(subscriber))
