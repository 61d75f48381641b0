"""CPU time of the access log alone, per request, in this process: the stdlib line it replaced (logging +
python-json-logger's msgspec formatter, as `gateway serve` configured it) against the buffered writer, for
the rejection path (hold-creation 409s) and for requests that are always logged (201s). Lines go to
standard error: redirect it to a file, as a deployment would.

    .venv/bin/python -m loadtests.access_log_cpu 2>/tmp/access-lines.log

Each figure is process CPU time over N calls (the flush included, every FLUSH_EVERY lines as the 0.1 s
flush would at ~5k req/s), best of ROUNDS; the machine's load barely moves it.
"""

import logging
import logging.config
import sys
import time
from collections.abc import Callable

from gateway.access_log import AccessLog
from gateway.logs import RequestContext, logging_config, serving

N = 50_000
ROUNDS = 5
FLUSH_EVERY = 500  # lines a worker at ~5k req/s buffers in 0.1 s


def stdlib_line(status: int, context: RequestContext) -> None:
    """What ObservedLitestar._observe did per request before the buffered writer."""
    logging.getLogger("gateway.access").info(
        "%s %s %d",
        "POST",
        "/v1/holds",
        status,
        extra={
            "method": "POST",
            "route": "/v1/holds",
            "path": "/v1/holds",
            "status": status,
            "latency_ms": round(0.001234 * 1000, 3),
            "hold_id": context.hold_id,
            "layer": context.layer,
        },
    )


def per_call_us(call: Callable[[int], None]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for i in range(N):
            call(i)
        best = min(best, time.process_time() - started)
    return best / N * 1e6


def main() -> None:
    logging.config.dictConfig(logging_config("INFO", "json"))
    context = RequestContext("0123456789abcdef0123456789abcdef", layer="redis")
    with serving(context):
        results: dict[str, float] = {"nothing (the loop alone)": per_call_us(lambda i: None)}
        results["stdlib + python-json-logger, every 409"] = per_call_us(lambda i: stdlib_line(409, context))
        for label, status, sample in (
            ("buffered writer, 409, 1 in 100 (default)", 409, 100),
            ("buffered writer, 409, every one (sample 1)", 409, 1),
            ("buffered writer, 201 (always logged)", 201, 100),
        ):
            access_log = AccessLog(sample_409=sample)
            access_log._flushing = True  # as under a running worker: the periodic flush writes

            def call(i: int, log: AccessLog = access_log, status: int = status) -> None:
                log.record("POST", "/v1/holds", "/v1/holds", status, 0.001234, context)
                if i % FLUSH_EVERY == 0:
                    log.flush()

            results[label] = per_call_us(call)
            access_log.flush()
    base = results["nothing (the loop alone)"]
    for label, us in results.items():
        print(f"{label:48} {us - base:7.2f} µs CPU per request", file=sys.stdout)


if __name__ == "__main__":
    main()
