"""What the gateway tells its operators about each request: a request id (taken from X-Request-ID or made up,
and echoed back), one log line (route, status, latency, hold id, the layer that decided) and the HTTP
metrics."""

import binascii
import os
import re
import time
from typing import Any

from litestar import Litestar
from litestar.types import Message, Scope

from gateway import metrics
from gateway.access_log import AccessLog
from gateway.logs import RequestContext, serving

REQUEST_ID_HEADER = b"x-request-id"
# A client's request id is logged and echoed only if it is short and plain; otherwise the gateway makes one.
_CLIENT_REQUEST_ID = re.compile(rb"\A[A-Za-z0-9._:/+=-]{1,128}\Z")


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _CLIENT_REQUEST_ID.match(value):
            return bytes(value)
    return binascii.hexlify(os.urandom(16))  # 128 random bits, as a uuid4's hex, at a fifth of its CPU


class ObservedLitestar(Litestar):
    """Litestar, with every HTTP request timed, counted and logged, unmatched routes and errors included
    (Litestar's own middleware does not see requests that match no route)."""

    access_log: AccessLog | None = None  # create_app's, per the settings; None: no request lines
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
                self._observe(
                    scope["method"],
                    scope.get("path_template") or "unmatched",
                    scope["path"],
                    status,
                    time.perf_counter() - started,
                    context,
                )

    def _observe(  # noqa: PLR0917 - called per request by every HTTP path with the same six facts
        self, method: str, route: str, path: str, status: int, elapsed_s: float, context: RequestContext
    ) -> None:
        """Meter and log one answered request: every path that serves HTTP calls this once per request, while
        `context` is the current request's (gateway.logs.serving). `route` is the template ("unmatched")."""
        self.requests_served += 1
        metrics.http_request(method, route, status).observe(elapsed_s)
        if self.access_log is not None:
            self.access_log.record(method, route, path, status, elapsed_s, context)
