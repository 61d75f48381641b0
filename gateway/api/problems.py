"""Errors as problem+json (RFC 9457): one renderer for the exception handlers and for handlers that answer
an expected refusal without raising (a 409 on the hot path skips Litestar's exception machinery)."""

from typing import Any

from litestar import Request, Response

from gateway.errors import PROBLEM_TYPE_BASE, GatewayError

PROBLEM_JSON = "application/problem+json"


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
