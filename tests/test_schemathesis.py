"""Schemathesis against the OpenAPI the gateway serves: generated requests, valid and invalid, to every
documented operation; no answer may be a 5xx, or a status, content type or body the schema does not declare.

Schemathesis calls the gateway with `requests`, which blocks; the gateway runs in this test's event loop, so
the generated cases run in a worker thread while the loop serves them.
"""

import asyncio
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import Gateway

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

# Every operation the schema documents; a new route must be added here (the first test says so).
OPERATIONS = [
    ("POST", "/v1/holds"),
    ("GET", "/v1/holds"),
    ("GET", "/v1/holds/{hold_id}"),
    ("POST", "/v1/holds/{hold_id}/extend"),
    ("POST", "/v1/holds/{hold_id}/confirm"),
    ("POST", "/v1/holds/{hold_id}/cancel"),
    ("GET", "/v1/events/{event_id}/slots"),
    ("GET", "/v1/events/{event_id}/slots/{slot_id}"),
    ("PUT", "/v1/events/{event_id}/inventory"),
    ("GET", "/v1/events/{event_id}/inventory"),
    ("POST", "/v1/events/{event_id}/seats/block"),
    ("POST", "/v1/events/{event_id}/seats/unblock"),
    ("GET", "/v1/events/{event_id}/availability"),
    ("GET", "/v1/events/{event_id}/stats"),
    ("GET", "/v1/stats"),
    ("POST", "/v1/client-keys"),
    ("GET", "/v1/client-keys"),
    ("DELETE", "/v1/client-keys/{key_id}"),
    ("GET", "/v1/hold-events"),
    ("POST", "/v1/webhook-endpoints"),
    ("GET", "/v1/webhook-endpoints"),
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}"),
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/redeliver"),
    ("GET", "/health"),
    ("HEAD", "/health"),
    ("GET", "/ready"),
    ("HEAD", "/ready"),
]
# Documented but not fuzzed: each answer to a valid request is a stream that never ends, which a generated
# case would wait on forever. tests/test_stream.py checks its answers (422, 503, the stream itself).
NOT_FUZZED = [("GET", "/v1/events/{event_id}/stream")]

# Bounded and derandomized: the same cases on every run, in a few seconds per operation.
SETTINGS = hypothesis.settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    # Generated request bodies and parameters are large strategies; none of these cases is slow to run.
    suppress_health_check=[hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.filter_too_much],
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)


async def served_schema(gateway: Gateway) -> Any:
    response = await gateway.client.get("/schema/openapi.json")
    assert response.status_code == 200
    return schemathesis.openapi.from_dict(response.json())


def run_cases(strategy: st.SearchStrategy[Case], base_url: str) -> None:
    with requests.Session() as session:

        @SETTINGS
        @hypothesis.given(case=strategy)
        def check(case: Case) -> None:
            case.call_and_validate(base_url=base_url, session=session, checks=CHECKS, timeout=10)

        check()


async def test_every_served_operation_is_fuzzed(gateway: Gateway) -> None:
    schema = await served_schema(gateway)
    served = {(result.ok().method.upper(), result.ok().path) for result in schema.get_all_operations()}
    assert served == set(OPERATIONS) | set(NOT_FUZZED)


def cases_to_run() -> list[Any]:
    """Every operation with valid data; with invalid data too where there is something to make invalid (a
    body, or a constrained query parameter): for the others Hypothesis finds no negative case at all."""
    negatable = {
        ("POST", "/v1/holds"),
        ("GET", "/v1/holds"),
        ("POST", "/v1/holds/{hold_id}/extend"),
        ("POST", "/v1/holds/{hold_id}/confirm"),
        ("POST", "/v1/holds/{hold_id}/cancel"),
        ("GET", "/v1/events/{event_id}/slots"),
        ("POST", "/v1/client-keys"),
        ("GET", "/v1/hold-events"),
        ("POST", "/v1/webhook-endpoints"),
    }
    params = []
    for method, path in OPERATIONS:
        modes = [GenerationMode.POSITIVE]
        if (method, path) in negatable:
            modes.append(GenerationMode.NEGATIVE)
        params += [pytest.param(method, path, mode, id=f"{method} {path} {mode.value}") for mode in modes]
    return params


@pytest.mark.parametrize(("method", "path", "mode"), cases_to_run())
async def test_operation_answers_as_documented(
    gateway: Gateway, method: str, path: str, mode: GenerationMode
) -> None:
    operation = (await served_schema(gateway))[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    if "{hold_id}" in path:
        # Random ids are all 404s; half the cases use a real hold, to reach 200, 403 and 409 too.
        created = await gateway.hold("show-1", ["A-1", "A-2"], holder="alice")
        assert created.status_code == 201
        real = operation.as_strategy(generation_mode=mode, path_parameters={"hold_id": created.json()["id"]})
        strategy = st.one_of(strategy, real)

    if path == "/v1/hold-events":
        # Long polls waited out would only make the run long (their waiting is tested in test_hold_events).
        created = await gateway.hold("show-1", ["A-1"], holder="alice")
        assert created.status_code == 201
        strategy = operation.as_strategy(generation_mode=mode, query={"wait_seconds": "0"})

    await asyncio.to_thread(run_cases, strategy, gateway.url)
