"""POST /v1/holds as a raw ASGI route, served in front of Litestar's middleware and router in the same app
(inside ObservedLitestar, so the request id, metrics and log line are the same): the same contract as
HoldsController.create_hold at a fraction of the CPU. Litestar's request machinery (its
Request, kwargs model, before_request hook, Response and exception handlers) costs a rejection more than
the rejection's Redis call; this route reads the body, decodes it once and answers from bytes.

It shares every rule with the Litestar route, defined once each: the Content-Type check and the strict
decode (api/holds.py), the client key (api/auth.caller_of), the Idempotency-Key rule, the service's validate
and create, the success headers and the problem+json renderer (api/problems.problem_parts). The Litestar
route stays registered (the OpenAPI entry is its) and serves the path with GATEWAY_HOT_ROUTES=false; the
tests of the create contract run against both.
"""

from typing import Any

import msgspec
from litestar.datastructures import State
from litestar.types import ASGIApp

from gateway.api.auth import caller_of
from gateway.api.holds import check_idempotency_key, content_type_error, created_headers, decode_strict
from gateway.api.pod_forwarding import PodForwarder
from gateway.api.problems import PROBLEM_JSON, problem_parts, unexpected_error
from gateway.errors import BodyTooLarge, GatewayError, IncompleteRequest, MalformedRequest, WrongPod
from gateway.holds import HoldService
from gateway.models import CreateHold, is_identifier

# The route template the metrics and the access log name (as Litestar's route for this path does).
ROUTE = "/v1/holds"
PATHS = (ROUTE, ROUTE + "/")

_JSON = b"application/json"
_PROBLEM = PROBLEM_JSON.encode()
_CONTENT_TYPE = b"content-type"
_CONTENT_LENGTH = b"content-length"
_IDEMPOTENCY_KEY = b"idempotency-key"
_HOLD_PATH = ROUTE + "/"
_EVENT_PATH = "/v1/events/"
_STREAM = "stream"

_Headers = list[tuple[bytes, bytes]]


class HotRoutes:
    """Litestar's ASGI handler with the hot routes in front: a request for one of them (by method and path)
    is answered here, any other goes on to Litestar's middleware and router."""

    def __init__(
        self,
        routes: dict[tuple[str, str], "CreateHoldRoute"],
        litestar: ASGIApp,
        pods: "HoldRoutesOfOtherPods | None" = None,
    ) -> None:
        self.routes = routes
        self.litestar = litestar
        self.pods = pods

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        route = self.routes.get((scope.get("method"), scope["path"]))  # a websocket has no method
        if route is not None:
            await route(scope, receive, send)
        elif self.pods is None or not await self.pods.forwarded(scope, receive, send):
            await self.litestar(scope, receive, send)


class HoldRoutesOfOtherPods:
    """With pods: a hold route (`/v1/holds/{id}` and its actions) for another pod's hold id, and an event's
    route (`/v1/events/{event_id}/...`: its slots, availability, stats, inventory) for another pod's event,
    are sent on to that pod's gateways (api/pod_forwarding.py) before Litestar sees them. An event's stream
    (Server-Sent Events) is not relayed: 421 wrong-pod names the pod to subscribe at."""

    def __init__(self, service: HoldService, forwarder: PodForwarder, max_body_bytes: int) -> None:
        self.service = service
        self.forwarder = forwarder
        self.max_body_bytes = max_body_bytes

    async def forwarded(self, scope: Any, receive: Any, send: Any) -> bool:
        """Whether the request was another pod's and is answered (sent on, or a problem)."""
        path: str = scope["path"]
        if scope["type"] != "http":
            return False
        rest = ""
        try:
            if path.startswith(_HOLD_PATH):
                self.service.check_pod_of_hold(path[len(_HOLD_PATH) :].partition("/")[0])
            elif path.startswith(_EVENT_PATH):
                event_id, _, rest = path[len(_EVENT_PATH) :].partition("/")
                if is_identifier(event_id):
                    self.service.check_pod_of_event(event_id)
            else:
                return False
        except WrongPod as wrong_pod:
            try:
                if rest == _STREAM:
                    raise
                body = await read_body(scope["headers"], receive, self.max_body_bytes)
                status, headers, content = await self.forwarder.forward(scope, body, wrong_pod)
            except GatewayError as exc:
                status, headers, content = _problem(exc)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            return True
        except GatewayError:
            return False  # not a hold id at all: Litestar answers
        return False


class CreateHoldRoute:
    """The ASGI callable for POST /v1/holds, made by the lifespan once the service exists. `state` is the
    app's (settings and client keys, for the client-key check)."""

    def __init__(
        self, service: HoldService, state: State, max_body_bytes: int, forwarder: PodForwarder | None = None
    ) -> None:
        self.service = service
        self.state = state
        self.max_body_bytes = max_body_bytes
        self.forwarder = forwarder  # with pods: another pod's creates are sent on to its gateways
        self.decoder = msgspec.json.Decoder(CreateHold)
        self.encoder = msgspec.json.Encoder()
        self.served = 0  # requests this route answered (the tests' proof that it, not Litestar, served)

    def routes(self) -> dict[tuple[str, str], "CreateHoldRoute"]:
        return {("POST", path): self for path in PATHS}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.served += 1
        scope["path_template"] = ROUTE
        try:
            status, headers, body = await self._answer(scope, receive)
        except GatewayError as exc:
            status, headers, body = _problem(exc)
        except Exception as exc:  # as Litestar's internal_error: a logged 500 problem
            status, headers, body = _problem(unexpected_error(exc))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Any, receive: Any) -> tuple[int, _Headers, bytes]:
        """The steps of create_hold, in the Litestar route's order: body hook, client key, Idempotency-Key,
        validate, create."""
        raw_headers = scope["headers"]
        error = content_type_error(scope)
        if error is not None:
            raise error
        body = await read_body(raw_headers, receive, self.max_body_bytes)
        data = decode_strict(self.decoder, body)
        if self.forwarder is not None:
            try:
                self.service.check_pod_of_request(data)
            except WrongPod as wrong_pod:  # another pod's: its gateways check the rest, the client key too
                return await self.forwarder.forward(scope, body, wrong_pod)
        client_key_id = caller_of(raw_headers, self.state)
        assert client_key_id is not None  # only a read can be the ops token's
        idempotency_key = _header(raw_headers, _IDEMPOTENCY_KEY)
        check_idempotency_key(idempotency_key)
        service = self.service
        try:
            result = await service.create(service.validate(data, idempotency_key, client_key_id))
        except GatewayError as exc:
            return _problem(exc)  # the 409 of a contended sale included: not re-raised
        content = self.encoder.encode(result.hold)
        headers = [(name.lower().encode(), value.encode()) for name, value in created_headers(result).items()]
        headers += [(_CONTENT_TYPE, _JSON), (_CONTENT_LENGTH, str(len(content)).encode())]
        return result.status_code, headers, content


async def read_body(raw_headers: _Headers, receive: Any, limit: int) -> bytes:
    """The body, with Litestar's limits: an announced or streamed length past `limit` is a 413; a client
    gone before the end an IncompleteRequest (the Litestar route's hook answers the same)."""
    announced = _header(raw_headers, _CONTENT_LENGTH)
    if announced is not None:
        try:
            length = int(announced)
        except ValueError:
            raise MalformedRequest() from None
        if length > limit:
            raise BodyTooLarge()
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")  # the whole body in one message: the usual case
        if len(body) > limit:
            raise BodyTooLarge()
        return body
    chunks: list[bytes] = []
    total = 0
    while True:
        if message["type"] == "http.disconnect":
            raise IncompleteRequest()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise BodyTooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
        message = await receive()


def _header(raw_headers: _Headers, name: bytes) -> str | None:
    """The first value of a header (as Litestar's header parameters read it), latin-1 decoded."""
    for key, value in raw_headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _problem(exc: GatewayError) -> tuple[int, _Headers, bytes]:
    """problem_parts as ASGI headers, in the order Litestar's Response sends them."""
    status, own_headers, body = problem_parts(exc)
    headers = [(name.lower().encode(), value.encode()) for name, value in own_headers.items()]
    headers += [(_CONTENT_TYPE, _PROBLEM), (_CONTENT_LENGTH, str(len(body)).encode())]
    return status, headers, body
