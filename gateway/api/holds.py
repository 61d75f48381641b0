"""/v1/holds: create, read, extend, confirm, cancel; and the listing for operations (which needs the ops
token)."""

import itertools
import operator
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import InternalServerException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.types import Scope

from gateway.api.auth import hold_caller, require_ops_token
from gateway.api.problems import lone_surrogate_field, problem_for, problem_specs
from gateway.api.slots import check_identifier
from gateway.errors import (
    BodyTooLarge,
    HoldNotFound,
    IncompleteRequest,
    InvalidRequest,
    MalformedRequest,
    SlotUnavailable,
    UnsupportedMediaType,
)
from gateway.holds import HoldResponse, HoldService
from gateway.models import (
    HOLD_STATUSES,
    HOLDER_DESCRIPTION,
    Body,
    CreateHold,
    ExtendHold,
    Hold,
    HolderAction,
    HoldPage,
    holder_text,
)
from gateway.ops import OpsService
from gateway.shard_map import HOLD_ID_SEPARATOR, pod_of_hold

MAX_LIST_LIMIT = 1000

# A hold id is 22 base64url characters; anything else cannot exist, so it is a 404 without a query.
_HOLD_ID_LENGTH = 22
_HOLD_ID_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

AnyRequest = Request[Any, Any, State]
T = TypeVar("T")

# The gateway's bodies nest 2 deep (an object holding a list). Decoders descend into JSON recursively (msgspec
# into anything typed Any, Python's json always), and a couple of KiB nested a thousand deep reach Python's
# recursion limit: a body nested deeper than this is refused before any decoder sees it.
MAX_BODY_NESTING = 32
# A JSON string, escapes honoured; an unterminated one runs to the end of the body.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)', re.DOTALL)
_BRACKET_WEIGHTS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[{]}")))


def field_message(message: str) -> str:
    """msgspec says "Expected `int`, got `str` - at `$.ttl_seconds`"; name the field first, as elsewhere."""
    text, _, path = message.rpartition(" - at ")
    if not text:
        return message
    return f"{path.replace('$.', '')}: {text}"


def content_type_error(scope: Scope) -> UnsupportedMediaType | None:
    """415 for a body declared as anything but JSON (a form, text, multipart). A request with no
    Content-Type at all is read as JSON: the body is decoded strictly either way."""
    for name, value in scope["headers"]:  # raw ASGI headers: no Headers object on the hot path
        if name == b"content-type":
            media_type = value.partition(b";")[0].strip().lower()
            if media_type == b"application/json" or media_type.endswith(b"+json"):
                return None
            shown = value[:100].decode("latin-1")
            return UnsupportedMediaType(f"header `Content-Type` must be application/json, got {shown!r}")
    return None


def nests_deeper_than(body: bytes, limit: int) -> bool:
    """Whether arrays and objects in `body` nest deeper than `limit` (brackets inside strings not counted;
    unclosed ones count, as a decoder would descend into them). A body with no more opening brackets than
    `limit`, as every normal one, costs two counts; any other about 7 ms per 64 KiB at most, in C loops."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    # Strings out, then each opening bracket as 2 and each closing one as 0: the depth after i brackets is
    # their running sum minus i.
    brackets = _JSON_STRING.sub(b"", body).translate(_BRACKET_WEIGHTS, _NOT_BRACKETS)
    return max(map(operator.sub, itertools.accumulate(brackets), itertools.count(1)), default=0) > limit


def decode_strict(decoder: "msgspec.json.Decoder[T]", body: bytes) -> T:
    """A body once read, decoded the gateway's way: a nesting depth limit, a strict decode whose errors name
    the field, a lone surrogate named as such. Each way it fails is a GatewayError of its own. Every route
    that takes a body (the Litestar hook below and the raw hot route, gateway.api.hot_holds) decodes here."""
    if nests_deeper_than(body, MAX_BODY_NESTING):
        raise InvalidRequest(f"the body nests deeper than {MAX_BODY_NESTING} levels")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(field_message(str(exc))) from None
    except msgspec.DecodeError as exc:
        # A lone surrogate ("\\ud800") is not text, so msgspec calls the JSON malformed: name its field.
        field = lone_surrogate_field(body)
        if field is not None:
            detail = f"`{field}`: a string holds a lone UTF-16 surrogate, which is not text"
            raise InvalidRequest(detail) from None
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from None


def strict_json_body(model: type[Body]) -> Callable[[AnyRequest], Awaitable[None]]:
    """The before_request hook of a handler that takes a `model` body: the gateway owns the body's read and
    decode, so each way it can fail is a GatewayError of its own, raised before Litestar reads it. Litestar
    decodes leniently (it would turn "300" into 300); this decodes strictly, so the `data` Litestar then
    parses from the same cached bytes (and documents in the OpenAPI) is the Struct this one accepted.
    (Not a Litestar guard: a guard costs each request a copy of its route handler, a third of a rejection's
    CPU.)"""
    decoder = msgspec.json.Decoder(model)

    async def check_body(request: AnyRequest) -> None:
        error = content_type_error(request.scope)
        if error is not None:
            raise error
        try:
            body = await request.body()
        except RequestEntityTooLarge:
            raise BodyTooLarge() from None
        except InternalServerException:
            # A first read of the body fails only when the client disconnects before its end: its fault.
            raise IncompleteRequest() from None
        decode_strict(decoder, body)

    return check_body


# Confirm and cancel answer these besides 200.
_TRANSITION_RESPONSES = problem_specs(
    400, 401, 403, 404, 413, 415, 422, 503, described={409: "invalid-transition, with `current_status`"}
)


# Extend answers these besides 200: a transition's, and the lifetime cap's 409.
_EXTEND_RESPONSES = problem_specs(
    400,
    401,
    403,
    404,
    413,
    415,
    422,
    503,
    described={
        409: "invalid-transition, with `current_status`, when the hold is not held (expired, confirmed or "
        "cancelled); lifetime-exceeded, with `max_expires_at` (its created_at + "
        "GATEWAY_MAX_HOLD_LIFETIME_S), when now + `ttl_seconds` would pass that"
    },
)


def _service(state: State) -> HoldService:
    service: HoldService = state.holds
    return service


def _check_hold_id(hold_id: str, service: HoldService) -> None:
    """404 for what no gateway makes (the random part after an optional pod name and dot); 421 wrong-pod for
    another pod's hold."""
    random_part = hold_id.rpartition(HOLD_ID_SEPARATOR)[2] if pod_of_hold(hold_id) else hold_id
    if len(random_part) != _HOLD_ID_LENGTH or not _HOLD_ID_ALPHABET.issuperset(random_part):
        raise HoldNotFound()
    service.check_pod_of_hold(hold_id)


def check_idempotency_key(key: str | None) -> None:
    if key is None:
        return
    if not 1 <= len(key) <= 255 or not all(" " <= c <= "~" for c in key):
        raise InvalidRequest("header `Idempotency-Key` must be 1 to 255 printable ASCII characters")


def created_headers(result: HoldResponse) -> dict[str, str]:
    """The headers of a create's 201 or 200 (the Litestar route's and the hot route's)."""
    headers = {"Location": f"/v1/holds/{result.hold.id}"}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return headers


class HoldsController(Controller):
    path = "/v1/holds"
    tags = ["holds"]  # noqa: RUF012 - Litestar's own class attribute

    @post(
        "/",
        status_code=201,
        responses={
            200: ResponseSpec(
                data_container=Hold,
                description="The holder's existing hold on exactly these slots, or an Idempotency-Key replay",
                generate_examples=False,
            ),
            **problem_specs(
                400,
                401,
                413,
                415,
                422,
                503,
                described={409: "slot-unavailable: some slots are taken, listed in `conflicts`"},
            ),
        },
        summary="Hold slots",
        before_request=strict_json_body(CreateHold),
        description="All slots of the request are held, or none. 201 a new hold; 200 the holder's existing "
        "hold on exactly these slots, or a replay of an Idempotency-Key's first response; "
        "409 slot-unavailable with `conflicts`; 422 idempotency-key-reused or invalid input; "
        "503 with Retry-After when the hold cannot be committed.",
    )
    async def create_hold(
        self,
        request: AnyRequest,
        state: State,
        data: JSONBody[CreateHold],
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(
                name="Idempotency-Key", required=False, description="1 to 255 printable ASCII characters"
            ),
        ] = None,
    ) -> Response[Hold]:
        client_key_id = hold_caller(request)
        assert client_key_id is not None  # only a read can be the ops token's
        check_idempotency_key(idempotency_key)
        service = _service(state)
        try:
            result = await service.create(service.validate(data, idempotency_key, client_key_id))
        except SlotUnavailable as exc:
            # The expected answer of a contended sale, returned rather than raised: Litestar's exception
            # path costs a rejection about as much as its Redis call.
            return problem_for(exc)  # type: ignore[return-value]
        return Response(result.hold, status_code=result.status_code, headers=created_headers(result))

    @get(
        "/",
        summary="List holds in expiry order",
        guards=[require_ops_token],
        responses=problem_specs(400, 401, 422, 503),
        description="Filtered by event, holder, status (a lapsed held hold reads as expired) and time to "
        "expiry; cursor-paginated. Requires the ops token when one is set.",
    )
    async def list_holds(
        self,
        *,
        state: State,
        event_id: FromQuery[str | None] = None,
        # The holder rule of a body (models.holder_text), checked below: Postgres text cannot hold NUL.
        holder: Annotated[str | None, QueryParameter(description=HOLDER_DESCRIPTION)] = None,
        status: Annotated[
            str | None, QueryParameter(description=f"one of {', '.join(HOLD_STATUSES)}")
        ] = None,
        expiring_within_seconds: Annotated[int | None, QueryParameter(ge=1, le=86_400)] = None,
        limit: Annotated[int | None, QueryParameter(ge=1, le=MAX_LIST_LIMIT)] = None,
        cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
    ) -> HoldPage:
        if event_id is not None:
            check_identifier("event_id", event_id)
        if holder is not None:
            try:
                holder = holder_text(holder)
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from None
        if status is not None and status not in HOLD_STATUSES:
            raise InvalidRequest(f"`status` must be one of {', '.join(HOLD_STATUSES)}")
        ops: OpsService = state.ops
        return await ops.list_holds(
            event_id=event_id,
            holder=holder,
            status=status,  # checked against HOLD_STATUSES above
            expiring_within_s=expiring_within_seconds,
            limit=limit or ops.settings.list_default_limit,
            cursor=cursor,
        )

    @get(
        "/{hold_id:str}",
        summary="Read a hold",
        description="Needs the client key that created the hold (once any client key exists), or the ops "
        "token. Another client key's hold answers 404, as one that does not exist.",
        responses=problem_specs(400, 401, 404, 503),
    )
    async def get_hold(self, request: AnyRequest, state: State, hold_id: FromPath[str]) -> Hold:
        caller = hold_caller(request, reading=True)
        _check_hold_id(hold_id, _service(state))
        return await _service(state).get(hold_id, caller)

    @post(
        "/{hold_id:str}/confirm",
        status_code=200,
        summary="Confirm a held hold",
        before_request=strict_json_body(HolderAction),
        responses=_TRANSITION_RESPONSES,
    )
    async def confirm_hold(
        self, request: AnyRequest, state: State, hold_id: FromPath[str], data: JSONBody[HolderAction]
    ) -> Hold:
        client_key_id = hold_caller(request)
        assert client_key_id is not None  # only a read can be the ops token's
        _check_hold_id(hold_id, _service(state))
        return await _service(state).confirm(hold_id, data.holder, client_key_id)

    @post(
        "/{hold_id:str}/extend",
        status_code=200,
        summary="Extend a held hold",
        before_request=strict_json_body(ExtendHold),
        responses=_EXTEND_RESPONSES,
        description="Sets the hold's `expires_at` to now + `ttl_seconds` (by the database's clock; the same "
        "range as at creation), which may be earlier than its current expiry, and counts it in `extensions`. "
        "Only a held hold that has not lapsed can be extended, and never past its `created_at` + "
        "GATEWAY_MAX_HOLD_LIFETIME_S: 409 lifetime-exceeded with `max_expires_at`, nothing changed.",
    )
    async def extend_hold(
        self, request: AnyRequest, state: State, hold_id: FromPath[str], data: JSONBody[ExtendHold]
    ) -> Hold:
        client_key_id = hold_caller(request)
        assert client_key_id is not None  # only a read can be the ops token's
        _check_hold_id(hold_id, _service(state))
        return await _service(state).extend(hold_id, data.holder, data.ttl_seconds, client_key_id)

    @post(
        "/{hold_id:str}/cancel",
        status_code=200,
        summary="Cancel a hold and release its slots",
        before_request=strict_json_body(HolderAction),
        responses=_TRANSITION_RESPONSES,
    )
    async def cancel_hold(
        self, request: AnyRequest, state: State, hold_id: FromPath[str], data: JSONBody[HolderAction]
    ) -> Hold:
        client_key_id = hold_caller(request)
        assert client_key_id is not None  # only a read can be the ops token's
        _check_hold_id(hold_id, _service(state))
        return await _service(state).cancel(hold_id, data.holder, client_key_id)
