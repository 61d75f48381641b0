"""What the gateway tells its operators about each request: a request id (taken from X-Request-ID or made up,
and echoed back), one log line (route, status, latency, hold id, the layer that decided) and the HTTP
metrics."""

import logging
import re
import time
import uuid
from typing import Any

from litestar import Litestar
from litestar.types import Message, Scope

from gateway import metrics
from gateway.logs import RequestContext, serving

access_log = logging.getLogger("gateway.access")

REQUEST_ID_HEADER = b"x-request-id"
# A client's request id is logged and echoed only if it is short and plain; otherwise the gateway makes one.
_CLIENT_REQUEST_ID = re.compile(rb"\A[A-Za-z0-9._:/+=-]{1,128}\Z")


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _CLIENT_REQUEST_ID.match(value):
            return bytes(value)
    return uuid.uuid4().hex.encode()


class ObservedLitestar(Litestar):
    """Litestar, with every HTTP request timed, counted and logged, unmatched routes and errors included
    (Litestar's own middleware does not see requests that match no route)."""

    access_log_enabled = True
    requests_served = 0  # by this worker so far: what its webhook dispatcher yields to (gateway.webhooks)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        context = RequestContext(request_id.decode())
        status = 500  # if the app dies before it starts a response, the server answers 500

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id)]
            await send(message)

        with serving(context):
            try:
                await super().__call__(scope, receive, send_with_request_id)
            finally:
                self._observe(scope, context, status, time.perf_counter() - started)

    def _observe(self, scope: Any, context: RequestContext, status: int, elapsed_s: float) -> None:
        self.requests_served += 1
        route = scope.get("path_template") or "unmatched"
        method = scope["method"]
        metrics.http_request(method, route, status).observe(elapsed_s)
        if self.access_log_enabled:
            # Logged while the request is current, so the record carries its request id.
            access_log.info(
                "%s %s %d",
                method,
                route,
                status,
                extra={
                    "method": method,
                    "route": route,
                    "path": scope["path"],
                    "status": status,
                    "latency_ms": round(elapsed_s * 1000, 3),
                    "hold_id": context.hold_id,
                    "layer": context.layer,
                },
            )
