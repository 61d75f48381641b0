"""Errors as problem+json (RFC 9457): one renderer for the exception handlers and for handlers that answer
an expected refusal without raising (a 409 on the hot path skips Litestar's exception machinery)."""

import json
from typing import Any

from litestar import Request, Response
from litestar.openapi import ResponseSpec

from gateway.errors import PROBLEM_TYPE_BASE, GatewayError
from gateway.models import Problem

PROBLEM_JSON = "application/problem+json"

# The problem answers a route may give, for its OpenAPI `responses=`; a route passes its own words for a
# status whose meaning is its own (409).
_PROBLEM_DESCRIPTIONS = {
    400: "malformed-request: the request cannot be parsed (a body that is not JSON)",
    401: "unauthorized: the operations token is missing or wrong (only with GATEWAY_OPS_TOKEN set)",
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


def problem_response(
    status: int,
    problem: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extensions: object,
) -> Response[dict[str, object]]:
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + problem,
        "title": title,
        "status": status,
        "detail": detail,
        **extensions,
    }
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_for(exc: GatewayError) -> Response[dict[str, object]]:
    return problem_response(
        exc.status_code, exc.problem, exc.title, exc.detail, headers=exc.headers(), **exc.extensions
    )


def gateway_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[dict[str, object]]:
    """The exception handler for every GatewayError."""
    return problem_for(exc)
