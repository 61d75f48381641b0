"""The framework's ceiling: Litestar on uvicorn (uvloop, httptools); POST /v1/holds decodes the body with
msgspec into the gateway's own request Struct and answers 409 problem+json at once, with no I/O.

    python -m loadtests.bench.bare --port 8001 --workers 2
"""

import argparse
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get, post

from gateway.models import CreateHold

PROBLEM_JSON = "application/problem+json"
# The gateway's own Struct, decoded the way the gateway decodes it (strictly, from the raw body): the same
# validation work, so the difference to the gateway is its I/O and bookkeeping, not its input checks.
_DECODER = msgspec.json.Decoder(CreateHold)


@post("/v1/holds", status_code=409)
async def create_hold(request: Request[Any, Any, Any]) -> Response[dict[str, object]]:
    try:
        body = _DECODER.decode(await request.body())
    except msgspec.ValidationError as exc:
        return problem(422, "invalid-request", "Invalid request", str(exc))
    except msgspec.DecodeError as exc:
        return problem(400, "malformed-request", "Malformed request", str(exc))
    return problem(
        409,
        "slot-unavailable",
        "Slot unavailable",
        f"{len(body.slots)} of the requested slots are taken",
        conflicts=list(body.slots),
    )


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def problem(
    status: int, kind: str, title: str, detail: str, **extensions: object
) -> Response[dict[str, object]]:
    """An RFC 9457 body shaped like the gateway's."""
    body: dict[str, object] = {
        "type": f"/problems/{kind}",
        "title": title,
        "status": status,
        "detail": detail,
        **extensions,
    }
    return Response(body, status_code=status, media_type=PROBLEM_JSON)


def create_app() -> Litestar:
    """The uvicorn factory each worker calls."""
    return Litestar(route_handlers=[create_hold, health], debug=False, logging_config=None)


def serve(module: str, port: int, workers: int) -> None:
    """Serve `module`'s create_app as the gateway serves itself: uvicorn, uvloop, httptools, N workers."""
    uvicorn.run(
        f"{module}:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


def serve_from_command_line(module: str, description: str | None) -> None:
    """`python -m <module> --port P [--workers N]`: the command line of each benchmark target."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    serve(module, args.port, args.workers)


if __name__ == "__main__":
    serve_from_command_line("loadtests.bench.bare", __doc__)
