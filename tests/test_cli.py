"""The `gateway` command as a newcomer runs it: migrate, serve with workers, serve with embedded servers."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from gateway.embedded import free_port
from tests.support import active_holds_per_slot, released_together, statuses

GATEWAY = [sys.executable, "-m", "gateway.cli"]


def clean_env(**gateway_vars: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(gateway_vars)
    return env


def read_output(output_file: IO[bytes]) -> str:
    """What the server wrote so far. pread leaves the offset alone: the server's writes go through it too."""
    size = os.fstat(output_file.fileno()).st_size
    return os.pread(output_file.fileno(), size, 0).decode(errors="replace")


def access_lines(output: str) -> list[dict[str, Any]]:
    """The gateway's access log lines (JSON logs): one per request, with the pid of the worker that served it
    and the request id it answered with."""
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "gateway.access"]


@contextmanager
def serving(args: list[str], env: dict[str, str], port: int, timeout_s: float = 60) -> Iterator[str]:
    """`gateway serve` on `port` until the block ends; ready once /ready says so and, with --workers N, every
    worker has started (one worker answering /ready says nothing of the others). The server's output is
    left in `serving.last_output`."""
    workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
    # Output goes to a file: a pipe nobody reads until the end would fill up and stall the server's logging.
    output_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, after the process ends
    process = subprocess.Popen(
        [*GATEWAY, "serve", "--port", str(port), *args],
        env=env,
        stdout=output_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"gateway exited: {read_output(output_file)}")
            try:
                ready = httpx.get(f"{url}/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                ready = False
            # uvicorn logs this once per worker, after the worker's lifespan startup.
            if ready and (
                workers == 1 or read_output(output_file).count("Application startup complete.") >= workers
            ):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"gateway did not become ready: {read_output(output_file)}")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        serving.last_output = read_output(output_file)  # type: ignore[attr-defined]
        output_file.close()


@pytest.mark.timeout(120)
def test_migrate_command_is_idempotent(database_url: str) -> None:
    env = clean_env(GATEWAY_DATABASE_URL=database_url, GATEWAY_REDIS_URL="redis://127.0.0.1:1/0")
    first = subprocess.run(
        [*GATEWAY, "migrate"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert first.returncode == 0, first.stderr
    assert "none pending" in first.stderr


@pytest.mark.timeout(120)
def test_bad_configuration_stops_the_command(database_url: str) -> None:
    env = clean_env(GATEWAY_DATABASE_URL=database_url, GATEWAY_MAX_TTL_S="soon")
    result = subprocess.run(
        [*GATEWAY, "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "GATEWAY_MAX_TTL_S" in result.stderr


@pytest.mark.timeout(120)
async def test_serve_with_two_workers_that_contend_for_one_seat(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The two worker processes race for the same seat, all requests released at once: one wins, whichever
    worker served it, and both workers served some of the race."""
    env = clean_env(
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_REDIS_URL=redis_url,
        GATEWAY_REDIS_KEY_PREFIX=key_prefix,
        GATEWAY_LOG_FORMAT="json",
        GATEWAY_ACCESS_LOG_409_SAMPLE="1",  # every answer is checked against its line
    )
    contenders = 40
    with serving(["--workers", "2"], env, free_port()) as url:
        # No keep-alive: each request opens a connection of its own, which either worker may accept.
        limits = httpx.Limits(max_connections=contenders, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

            async def hold(i: int) -> httpx.Response:
                body = {"event_id": "show-1", "slots": ["A-1"], "holder": f"h{i}"}
                return await client.post("/v1/holds", json=body, headers={"X-Request-ID": f"race-{i}"})

            responses = await released_together(contenders, hold)
            ready = (await client.get("/ready")).json()
    served = {line["request_id"]: line for line in access_lines(serving.last_output)}  # type: ignore[attr-defined]

    assert statuses(responses) == {201: 1, 409: contenders - 1}
    assert await active_holds_per_slot(database_url) == {("show-1", "A-1"): 1}
    assert ready == {
        "database": "up",
        "redis": "up",
        "mode": "redis-front",
        "mode_reason": None,
        "client_keys": "open",
    }
    # Each answer is the one its worker logged; the race was spread over both worker processes.
    assert {f"race-{i}": r.status_code for i, r in enumerate(responses)} == {
        request_id: line["status"] for request_id, line in served.items() if request_id.startswith("race-")
    }
    workers = Counter(line["pid"] for request_id, line in served.items() if request_id.startswith("race-"))
    assert len(workers) == 2, f"one worker served the whole race: {workers}"


@pytest.mark.timeout(180)
def test_serve_with_nothing_configured_starts_embedded_servers(tmp_path: Path) -> None:
    env = clean_env(GATEWAY_DATA_DIR=str(tmp_path / "data"))
    port = free_port()
    with serving([], env, port, timeout_s=120) as url:
        created = httpx.post(f"{url}/v1/holds", json={"event_id": "e", "slots": ["s"], "holder": "h"})
        ready = httpx.get(f"{url}/ready").json()
    output: str = serving.last_output  # type: ignore[attr-defined]

    assert created.status_code == 201
    assert ready == {
        "database": "up",
        "redis": "up",
        "mode": "redis-front",
        "mode_reason": None,
        "client_keys": "open",
    }
    assert "started an embedded PostgreSQL" in output
    assert "started an embedded Redis" in output
    # The data folder is kept: a second start reuses it and finds the hold.
    with serving([], env, port, timeout_s=120) as url:
        again = httpx.get(f"{url}/v1/holds/{created.json()['id']}")
    assert again.status_code == 200


@pytest.mark.timeout(120)
def test_serve_db_only_ignores_a_configured_redis(database_url: str, redis_url: str, key_prefix: str) -> None:
    env = clean_env(
        GATEWAY_DATABASE_URL=database_url, GATEWAY_REDIS_URL=redis_url, GATEWAY_REDIS_KEY_PREFIX=key_prefix
    )
    with serving(["--db-only"], env, free_port()) as url:
        body = {"event_id": "show-1", "slots": ["A-1"]}
        responses = [httpx.post(f"{url}/v1/holds", json={**body, "holder": f"h{i}"}) for i in range(5)]
        ready = httpx.get(f"{url}/ready").json()

    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409, 409]
    assert ready == {
        "database": "up",
        "redis": "down",
        "mode": "db-only",
        "mode_reason": "redis not configured",
        "client_keys": "open",
    }
