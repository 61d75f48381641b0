"""The `gateway` command as a newcomer runs it: migrate, serve with workers, serve with embedded servers."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from gateway.embedded import free_port

GATEWAY = [sys.executable, "-m", "gateway.cli"]


def clean_env(**gateway_vars: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(gateway_vars)
    return env


@contextmanager
def serving(args: list[str], env: dict[str, str], port: int, timeout_s: float = 60) -> Iterator[str]:
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
                output_file.seek(0)
                pytest.fail(f"gateway exited: {output_file.read().decode()}")
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("gateway did not become ready")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        output_file.seek(0)
        serving.last_output = output_file.read().decode()  # type: ignore[attr-defined]
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
def test_serve_with_two_workers(database_url: str, redis_url: str, key_prefix: str) -> None:
    env = clean_env(
        GATEWAY_DATABASE_URL=database_url, GATEWAY_REDIS_URL=redis_url, GATEWAY_REDIS_KEY_PREFIX=key_prefix
    )
    with serving(["--workers", "2"], env, free_port()) as url:
        body = {"event_id": "show-1", "slots": ["A-1"], "holder": "alice"}
        responses = [httpx.post(f"{url}/v1/holds", json={**body, "holder": f"h{i}"}) for i in range(20)]
        ready = httpx.get(f"{url}/ready").json()

    assert sorted(r.status_code for r in responses) == [201] + [409] * 19
    assert ready == {"database": "up", "redis": "up", "mode": "redis-front", "mode_reason": None}


@pytest.mark.timeout(180)
def test_serve_with_nothing_configured_starts_embedded_servers(tmp_path: Path) -> None:
    env = clean_env(GATEWAY_DATA_DIR=str(tmp_path / "data"))
    port = free_port()
    with serving([], env, port, timeout_s=120) as url:
        created = httpx.post(f"{url}/v1/holds", json={"event_id": "e", "slots": ["s"], "holder": "h"})
        ready = httpx.get(f"{url}/ready").json()
    output: str = serving.last_output  # type: ignore[attr-defined]

    assert created.status_code == 201
    assert ready == {"database": "up", "redis": "up", "mode": "redis-front", "mode_reason": None}
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
    }
