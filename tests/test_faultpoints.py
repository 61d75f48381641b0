"""Fault points: off and free unless GATEWAY_TEST_FAULT_POINTS names one, read once at import."""

import os
import subprocess
import sys

import pytest

from gateway import faultpoints


def probe(code: str, fault_points: str | None) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter: the module reads the variable once, at import."""
    env = {k: v for k, v in os.environ.items() if k != faultpoints.ENV}
    if fault_points is not None:
        env[faultpoints.ENV] = fault_points
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30, check=False
    )


ACTIVE = "from gateway import faultpoints; print(faultpoints.ACTIVE)"


@pytest.mark.parametrize(
    ("fault_points", "expected"),
    [
        (None, "False\n"),
        ("", "False\n"),
        ("after_redis_acquire=kill", "True\n"),
        ("after_commit=sleep:0", "True\n"),
    ],
    ids=["unset", "empty", "kill", "sleep"],
)
def test_active_only_when_a_point_is_configured(fault_points: str | None, expected: str) -> None:
    result = probe(ACTIVE, fault_points)
    assert (result.returncode, result.stdout) == (0, expected), result.stderr


def test_a_bad_spec_stops_the_import() -> None:
    result = probe(ACTIVE, "after_everything=kill")
    assert result.returncode == 1
    assert "GATEWAY_TEST_FAULT_POINTS: cannot parse 'after_everything=kill'" in result.stderr


def test_reached_does_nothing_when_off() -> None:
    code = "import asyncio; from gateway import faultpoints; asyncio.run(faultpoints.reached('after_commit'))"
    result = probe(code, None)
    assert (result.returncode, result.stderr) == (0, "")


def test_reached_runs_the_configured_action() -> None:
    code = (
        "import asyncio, time; from gateway import faultpoints; "
        "started = time.monotonic(); asyncio.run(faultpoints.reached('after_commit')); "
        "slept = time.monotonic() - started; "
        "asyncio.run(faultpoints.reached('after_redis_acquire')); "
        "print(slept >= 0.2)"
    )
    result = probe(code, "after_commit=sleep:0.2")
    assert (result.returncode, result.stdout) == (0, "True\n"), result.stderr
    killed = probe(
        "import asyncio; from gateway import faultpoints; asyncio.run(faultpoints.reached('after_commit'))",
        "after_commit=kill",
    )
    assert killed.returncode == -9
