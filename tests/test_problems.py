"""One error taxonomy: every problem+json the gateway sends, Litestar's own refusals included, comes from a
GatewayError; Litestar's errors are mapped by class and status code, never by the text of their message."""

import ast
import asyncio
import logging
from contextlib import suppress
from pathlib import Path

import httpx
import pytest

from gateway.errors import GatewayError
from tests.support import Gateway

GATEWAY_DIR = Path(__file__).resolve().parent.parent / "gateway"
GOOD_BODY = b'{"event_id": "show-1", "slots": ["A-1"], "holder": "alice"}'


def assert_problem(response: httpx.Response, status: int, problem_type: str) -> dict[str, object]:
    assert (response.status_code, response.headers["content-type"]) == (status, "application/problem+json")
    problem: dict[str, object] = response.json()
    assert (problem["status"], problem["type"]) == (status, problem_type)
    assert problem["title"]
    assert problem["detail"]
    return problem


@pytest.mark.both_create_paths
async def test_a_body_that_is_not_json_is_400_malformed_request(gateway: Gateway) -> None:
    response = await gateway.client.post(
        "/v1/holds", content=b'{"event_id": ', headers={"content-type": "application/json"}
    )

    assert_problem(response, 400, "/problems/malformed-request")


@pytest.mark.both_create_paths
async def test_a_body_over_the_limit_is_413_body_too_large(gateway: Gateway) -> None:
    body = GOOD_BODY[:-1] + b" " * gateway.settings.max_body_bytes + b"}"

    response = await gateway.client.post(
        "/v1/holds", content=body, headers={"content-type": "application/json"}
    )

    assert_problem(response, 413, "/problems/body-too-large")


@pytest.mark.both_create_paths
async def test_a_body_declared_as_a_form_is_415_unsupported_media_type(gateway: Gateway) -> None:
    response = await gateway.client.post(
        "/v1/holds", content=GOOD_BODY, headers={"content-type": "application/x-www-form-urlencoded"}
    )

    problem = assert_problem(response, 415, "/problems/unsupported-media-type")
    assert "`Content-Type`" in str(problem["detail"])


@pytest.mark.parametrize("path", ["/no/such/route", "/ops/no-such-asset.js"])
async def test_an_unknown_route_is_404_not_found(gateway: Gateway, path: str) -> None:
    response = await gateway.client.get(path)

    assert_problem(response, 404, "/problems/not-found")


async def test_a_wrong_method_is_405_method_not_allowed_with_allow(gateway: Gateway) -> None:
    response = await gateway.client.delete("/v1/holds")

    assert_problem(response, 405, "/problems/method-not-allowed")
    assert {"GET", "POST"} <= {method.strip() for method in response.headers["allow"].split(",")}


async def test_a_bad_query_parameter_is_422_invalid_request_naming_it(gateway: Gateway) -> None:
    response = await gateway.client.get("/v1/holds", params={"limit": "many"})

    problem = assert_problem(response, 422, "/problems/invalid-request")
    assert "`limit` (query)" in str(problem["detail"])


@pytest.mark.both_create_paths
async def test_a_client_that_goes_away_mid_body_is_400_incomplete_and_no_gateway_failure(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the disconnect was told apart from a gateway failure by matching Litestar's message
    ("client disconnected prematurely"); now the body hook owns the read and raises IncompleteRequest."""
    caplog.set_level(logging.INFO, logger="gateway")
    port = int(gateway.url.rpartition(":")[2])
    head = (
        f"POST /v1/holds HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 1000\r\nX-Request-ID: req-gone\r\n\r\n"
    ).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + GOOD_BODY)
    await writer.drain()
    await asyncio.sleep(0.2)  # the gateway now waits for the rest of the body
    writer.close()
    with suppress(ConnectionResetError):
        await writer.wait_closed()

    async with asyncio.timeout(5):
        # The access log's lines are a plain list, with nothing to wait on: poll it.
        while not (lines := [x for x in gateway.access_lines() if x["request_id"] == "req-gone"]):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    # The answer nobody reads is still the access log's status: the client's fault, not the gateway's.
    assert [(line["route"], line["status"]) for line in lines] == [("/v1/holds", 400)]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# --- No framework text decides a status -------------------------------------------------------------------

# Litestar's messages that the gateway once matched on; no gateway source may spell them.
FRAMEWORK_MESSAGES = ["client disconnected prematurely", "json is malformed", "stream consumed"]
# The modules that turn requests and errors into answers.
BOUNDARY_MODULES = ["app.py", "api/problems.py", "api/holds.py"]


def framework_exception_names(tree: ast.Module) -> set[str]:
    """The Litestar exception classes a module imports."""
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("litestar.exceptions")
        for alias in node.names
    }


def text_reads_of_framework_exceptions(source: str) -> list[str]:
    """Each place where a function reads the text of a Litestar exception it was given or caught: its
    `.detail` or `.args`, `str()`/`repr()` of it, or it formatted into a string. One line per finding."""
    tree = ast.parse(source)
    classes = framework_exception_names(tree)
    findings = []
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
        names = {
            arg.arg
            for arg in function.args.args + function.args.kwonlyargs
            if isinstance(arg.annotation, ast.Name) and arg.annotation.id in classes
        }
        names |= {
            handler.name
            for handler in ast.walk(function)
            if isinstance(handler, ast.ExceptHandler) and handler.name is not None
            for caught in ast.walk(handler.type or ast.Tuple(elts=[]))
            if isinstance(caught, ast.Name) and caught.id in classes
        }
        names |= {  # isinstance(exc, SomeLitestarException)
            call.args[0].id
            for call in ast.walk(function)
            if isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "isinstance"
            and isinstance(call.args[0], ast.Name)
            and any(isinstance(c, ast.Name) and c.id in classes for c in ast.walk(call.args[1]))
        }
        for node in ast.walk(function):
            if isinstance(node, ast.Attribute) and node.attr in {"detail", "args"}:
                if isinstance(node.value, ast.Name) and node.value.id in names:
                    findings.append(f"{function.name}:{node.lineno}: {node.value.id}.{node.attr}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"str", "repr"}
            ):
                if any(isinstance(a, ast.Name) and a.id in names for a in node.args):
                    findings.append(f"{function.name}:{node.lineno}: {node.func.id}() of a framework error")
            elif (
                isinstance(node, ast.FormattedValue)
                and isinstance(node.value, ast.Name)
                and node.value.id in names
            ):
                findings.append(f"{function.name}:{node.lineno}: a framework error in an f-string")
    return findings


def test_no_gateway_source_spells_a_framework_message() -> None:
    spelled = [
        f"{path.relative_to(GATEWAY_DIR)}: {message!r}"
        for path in GATEWAY_DIR.rglob("*.py")
        for message in FRAMEWORK_MESSAGES
        if message in path.read_text().lower()
    ]
    assert spelled == []


@pytest.mark.parametrize("module", BOUNDARY_MODULES)
def test_no_status_is_chosen_from_a_framework_errors_text(module: str) -> None:
    assert text_reads_of_framework_exceptions((GATEWAY_DIR / module).read_text()) == []


def test_the_text_check_finds_the_old_way() -> None:
    """The check above can fail: it finds the message match app.py had before the errors were mapped."""
    old_handler = """
from litestar.exceptions import HTTPException, InternalServerException

def _internal_error(request, exc: Exception):
    if isinstance(exc, InternalServerException) and exc.detail == _CLIENT_DISCONNECTED:
        return None

def _http_exception(request, exc: HTTPException):
    return problem_response(400, "malformed-request", "Malformed request", str(exc))

async def read(request):
    try:
        await request.body()
    except InternalServerException as exc:
        raise MalformedRequest(f"{exc}") from None
"""
    assert text_reads_of_framework_exceptions(old_handler) == [
        "_internal_error:5: exc.detail",
        "_http_exception:9: str() of a framework error",
        "read:15: a framework error in an f-string",
    ]


def test_every_problem_type_has_one_error_class() -> None:
    """The taxonomy: no two GatewayErrors share a problem type, so a `type` names one cause."""
    seen: dict[str, str] = {}

    def walk(cls: type[GatewayError]) -> None:
        if "problem" in vars(cls):
            assert cls.problem not in seen, (cls.__name__, seen)
            seen[cls.problem] = cls.__name__
        for sub in cls.__subclasses__():
            walk(sub)

    walk(GatewayError)
    assert {
        "malformed-request",
        "incomplete-request",
        "body-too-large",
        "unsupported-media-type",
        "not-found",
        "method-not-allowed",
        "invalid-request",
    } <= set(seen)
