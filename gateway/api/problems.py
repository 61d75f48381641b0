"""Errors as problem+json (RFC 9457): one renderer, `problem_parts(GatewayError)` (status, headers, body
bytes), for the exception handlers, for handlers that answer an expected refusal without raising (a 409 on
the hot path skips Litestar's exception machinery) and for the raw hot route (gateway.api.hot_holds).
Litestar's own errors become GatewayErrors first, by their class and status code, never by their message
text."""

import json
import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec

from gateway.errors import (
    PROBLEM_TYPE_BASE,
    BodyTooLarge,
    GatewayError,
    InvalidRequest,
    MalformedRequest,
    MethodNotAllowed,
    RouteNotFound,
    UnsupportedMediaType,
)
from gateway.models import Problem

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# The problem answers a route may give, for its OpenAPI `responses=`; a route passes its own words for a
# status whose meaning is its own (409).
_PROBLEM_DESCRIPTIONS = {
    400: "malformed-request: the request cannot be parsed (a body that is not JSON)",
    401: "unauthorized: the operations token is missing or wrong (only with GATEWAY_OPS_TOKEN set); "
    "client-key-required: a hold route without a live client key (once any client key exists)",
    403: "not-holder: the hold belongs to another holder",
    404: "hold-not-found: no hold has this id",
    413: "body-too-large: the body is larger than max_body_bytes",
    415: "unsupported-media-type: the body is declared as something other than JSON",
    422: "invalid-request: a bad field, parameter or header; `detail` names it",
    503: "overloaded, backend-unavailable or outcome-unknown: retry after `Retry-After` seconds",
}


def problem_specs(*statuses: int, described: dict[int, str] | None = None) -> dict[int, ResponseSpec]:
    """`responses=` for a handler: each status as problem+json; `described` adds statuses in its own words."""
    descriptions = {status: _PROBLEM_DESCRIPTIONS[status] for status in statuses} | (described or {})
    return {
        status: ResponseSpec(
            data_container=Problem, description=description, media_type=PROBLEM_JSON, generate_examples=False
        )
        for status, description in descriptions.items()
    }


def lone_surrogate_field(body: bytes) -> str | None:
    """The field of a body msgspec refused as malformed because a string holds a lone UTF-16 surrogate
    (`"\\ud800"`): Python's json reads those, so the client can be told which field. Only called on the
    error path; looks at the shape of the gateway's bodies (fields of strings or lists of strings)."""
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(decoded, dict):
        return None
    for name, value in decoded.items():
        if _has_surrogate(name):
            return "the body"
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            if isinstance(item, str) and _has_surrogate(item):
                return f"{name}[{index}]" if isinstance(value, list) else name
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


_encoder = msgspec.json.Encoder()


def problem_parts(exc: GatewayError) -> tuple[int, dict[str, str], bytes]:
    """The one renderer: every problem+json the gateway sends is a GatewayError's. Its status, its own
    headers (Retry-After, Allow, WWW-Authenticate) and the encoded body."""
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + exc.problem,
        "title": exc.title,
        "status": exc.status_code,
        "detail": exc.detail,
        **exc.extensions,
    }
    return exc.status_code, exc.headers(), _encoder.encode(body)


def problem_for(exc: GatewayError) -> Response[bytes]:
    """A GatewayError as Litestar's response."""
    status, headers, body = problem_parts(exc)
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def unexpected_error(exc: BaseException) -> GatewayError:
    """What an unexpected exception is answered as (a 500 internal-error), logged with its traceback."""
    log.exception("unhandled error", exc_info=exc)
    return GatewayError("The gateway failed to process the request.")


def gateway_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    """The exception handler for every GatewayError."""
    return problem_for(exc)


# Litestar's client errors that carry no more than their status: the domain error each one is. (Bodies are
# decoded by the handlers' own hook, api/holds.py, which raises its GatewayErrors before Litestar reads them.)
_BY_STATUS: dict[int, type[GatewayError]] = {
    400: MalformedRequest,  # e.g. a Content-Length that is not a number
    404: RouteNotFound,
    413: BodyTooLarge,
    415: UnsupportedMediaType,
}


def framework_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """The exception handler for Litestar's own errors (unknown route, wrong method, bad parameter)."""
    error = domain_error(exc)
    if error.status_code >= 500:
        log.error("unmapped framework error", exc_info=exc)
    return problem_for(error)


def domain_error(exc: HTTPException) -> GatewayError:
    """The GatewayError a Litestar exception stands for, by its class and status code; its message text is
    Litestar's wording and decides nothing."""
    if isinstance(exc, ValidationException):
        return InvalidRequest(_validation_detail(exc))
    if exc.status_code == 405:
        return MethodNotAllowed((exc.headers or {}).get("allow", ""))
    mapped = _BY_STATUS.get(exc.status_code)
    if mapped is not None:
        return mapped()
    # A status the gateway does not expect from Litestar: a 500, logged, so that it is mapped once seen.
    return GatewayError("The gateway failed to process the request.")


def _validation_detail(exc: ValidationException) -> str:
    """Each bad parameter from Litestar's structured list: "`limit` (query): Expected `int`, got `str`"."""
    parts = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            key = item.get("key")
            source = item.get("source")
            source = getattr(source, "value", source)  # a ParamType enum for parameters
            where = f"`{key}`" if key else "a parameter"
            message = item.get("message", "")
            parts.append(f"{where} ({source}): {message}" if source else f"{where}: {message}")
    return "; ".join(parts) or "a required parameter is missing or invalid"


def internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The exception handler for everything else: a gateway failure, logged with its traceback."""
    return problem_for(unexpected_error(exc))
