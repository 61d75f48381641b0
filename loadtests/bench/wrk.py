"""Run wrk with one of the Lua scripts in wrk/ and read back the JSON line their shared done() prints.

wrk runs in a session of its own (a Ctrl-C in the terminal reaches only the benchmark, which stops it), its
CPU time comes from os.wait4 on it, and RLIMIT_NOFILE must have been raised (raise_open_files_limit) before
it is spawned, or 1,024 connections fail.
"""

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import msgspec

SCRIPTS_DIR = Path(__file__).with_name("wrk")
RESULT_PREFIX = "BENCH_JSON "
THREAD_DONE = "BENCH_THREAD_DONE"  # onsale.lua: one thread has received its share of answers
# Slow answers are measured, not dropped: wrk leaves a response slower than --timeout out of the latencies.
RESPONSE_TIMEOUT_S = 30
_OVERRUN_S = 30  # how long past its -d a run may go before it is killed
# wrk processes running now (run() is called from worker threads), so that stop_all can end them.
_running: set[int] = set()
_running_lock = threading.Lock()


class WrkError(RuntimeError):
    """wrk failed, or printed no result line."""


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float


class SocketErrors(msgspec.Struct, frozen=True, kw_only=True):
    connect: int
    read: int
    write: int
    timeout: int

    @property
    def total(self) -> int:
        return self.connect + self.read + self.write + self.timeout


class WrkResult(msgspec.Struct, frozen=True, kw_only=True):
    """One wrk run: its own counts (from done()) and what it cost the machine."""

    requests: int  # responses received
    duration_s: float  # wrk's own measure of the run
    rps: float
    latency: Latency
    statuses: dict[int, int]  # counted in response(), one Lua state per thread, merged in done()
    socket_errors: SocketErrors
    wrk_cpu_s: float  # user + system CPU of the wrk process
    wall_s: float  # from spawn to exit, warm-up of its connections included
    connections: int
    threads: int
    counters: dict[str, int] = msgspec.field(default_factory=dict)  # the script's own, summed (stats.lua)

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)

    def other_than(self, status: int) -> int:
        """Answers with another status, plus requests lost to socket errors."""
        return self.requests - self.count(status) + self.socket_errors.total

    @property
    def cores_used(self) -> float:
        """wrk's CPU as a number of cores kept busy over its run."""
        return self.wrk_cpu_s / self.wall_s if self.wall_s > 0 else 0.0


class _DoneLine(msgspec.Struct, frozen=True):
    requests: int
    duration_us: int
    rps: float
    latency_us: dict[str, float]
    statuses: dict[int, int]
    errors: dict[str, int]
    counters: dict[str, int] = msgspec.field(default_factory=dict)


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkError("wrk not found on PATH (Debian: apt-get install wrk)")
    return found


def wrk_version() -> str:
    # `wrk -v` prints its version and then the usage, and exits 1.
    out = subprocess.run(  # noqa: S603 - our own wrk, no shell
        [wrk_binary(), "-v"], capture_output=True, text=True, check=False, timeout=10
    )
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()


def raise_open_files_limit(wanted: int = 65_536) -> int:
    """Raise this process's RLIMIT_NOFILE (inherited by wrk and the servers) up to its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


def parse_output(
    output: str, *, wrk_cpu_s: float, wall_s: float, connections: int, threads: int
) -> WrkResult:
    """The result from wrk's stdout: the last line that starts with RESULT_PREFIX."""
    lines = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise WrkError(
            f"wrk printed no {RESULT_PREFIX.strip()} line; its output ends with:\n{output[-2000:]}"
        )
    done = msgspec.json.decode(lines[-1][len(RESULT_PREFIX) :], type=_DoneLine)
    return WrkResult(
        requests=done.requests,
        duration_s=done.duration_us / 1e6,
        rps=done.rps,
        latency=Latency(
            p50_us=done.latency_us["p50"],
            p90_us=done.latency_us["p90"],
            p99_us=done.latency_us["p99"],
            max_us=done.latency_us["max"],
            mean_us=done.latency_us["mean"],
        ),
        statuses=done.statuses,
        socket_errors=SocketErrors(
            connect=done.errors["connect"],
            read=done.errors["read"],
            write=done.errors["write"],
            timeout=done.errors["timeout"],
        ),
        wrk_cpu_s=wrk_cpu_s,
        wall_s=wall_s,
        connections=connections,
        threads=threads,
        counters=done.counters,
    )


def run(
    url: str,
    script: str,
    *,
    args: list[str] | tuple[str, ...] = (),
    threads: int = 2,
    connections: int = 64,
    duration_s: int = 10,
    until_threads_done: bool = False,
) -> WrkResult:
    """Run wrk -s wrk/<script> against url for duration_s (whole seconds: wrk takes no fractions).

    until_threads_done: the script stops each thread after its share (onsale.lua); once every thread has
    said so on stdout, wrk is sent SIGINT, which ends its sleep and makes it report. duration_s is then a
    ceiling only.
    """
    threads = min(threads, connections)
    argv = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{max(1, duration_s)}s"]
    argv += [f"--timeout={RESPONSE_TIMEOUT_S}s", "-s", str(SCRIPTS_DIR / script), url, "--", *args]
    started = time.monotonic()
    process = subprocess.Popen(  # noqa: S603 - our own wrk and scripts, no shell
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    with _running_lock:
        _running.add(process.pid)
    # A run that hangs (a server that stopped answering) is killed rather than left to block the benchmark.
    watchdog = threading.Timer(duration_s + _OVERRUN_S, _kill_group, (process.pid,))
    watchdog.start()
    output: list[str] = []
    finished_threads = 0
    try:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if until_threads_done and line.strip() == THREAD_DONE:
                finished_threads += 1
                if finished_threads == threads:
                    process.send_signal(signal.SIGINT)
        # os.wait4 rather than Popen.wait: it also gives the CPU time wrk used.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        _kill_group(process.pid)
        process.wait()
        raise
    finally:
        watchdog.cancel()
        with _running_lock:
            _running.discard(process.pid)
        if process.stdout is not None:
            process.stdout.close()
    wall_s = time.monotonic() - started
    text = "".join(output)
    if process.returncode != 0:
        raise WrkError(f"wrk exited with {process.returncode}:\n{text[-2000:]}")
    return parse_output(
        text,
        wrk_cpu_s=usage.ru_utime + usage.ru_stime,
        wall_s=wall_s,
        connections=connections,
        threads=threads,
    )


def stop_all() -> None:
    """Kill every wrk still running: the benchmark is being interrupted. (wrk runs in a session of its own,
    so a Ctrl-C does not reach it, and the thread waiting for it would wait out its whole -d.)"""
    with _running_lock:
        pids = list(_running)
    for pid in pids:
        _kill_group(pid)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
