"""The access log: one line per request, cheap enough to leave on.

A JSON line is the object the stdlib formatter made before (same fields, same values), built as a msgspec
Struct, kept in a list and encoded and written by a flush every `access_log_flush_interval_s` (or at once
past MAX_PENDING_LINES), off the request's path. Each write is whole lines, at most PIPE_BUF bytes, with one
os.write to standard error: the workers of `gateway serve` share that descriptor, and a pipe never mixes
writes of up to PIPE_BUF bytes, so no line is ever cut by another process's. A worker killed outright loses
the lines of its last flush interval; a graceful stop (SIGTERM) writes them all.

Hold-creation 409s (`POST /v1/holds`) are the rejection storm: each worker logs the first of every
`access_log_409_sample` of them, with `sampled_1_in` on the line, and counts the others in
gateway_access_log_skipped_total. Every other request is logged, 409s of other routes included: those are
one client's confirm, cancel or key conflict, each worth finding by its request id.

The text format (`GATEWAY_LOG_FORMAT=text`) goes through stdlib logging, at once, sampled the same way.
"""

import asyncio
import logging
import os
import select
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import msgspec

from gateway import metrics
from gateway.logs import RequestContext

LOGGER_NAME = "gateway.access"
# The one route whose 409s come in storms (the losers of a race for a seat): sampled.
SAMPLED_METHOD, SAMPLED_ROUTE = "POST", "/v1/holds"
# A pipe writes up to this many bytes in one piece (Linux: 4096): a write never interleaves below it.
PIPE_BUF_BYTES = select.PIPE_BUF
# Lines kept before a flush that does not wait for the interval (about 300 KiB of JSON).
MAX_PENDING_LINES = 1024
STDERR_FD = 2

_stdlib_log = logging.getLogger(LOGGER_NAME)

Sink = Callable[[bytes], None]


class AccessLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One request's line, its fields in the order the stdlib JSON formatter wrote them."""

    level: str
    logger: str
    pid: int
    message: str
    request_id: str
    method: str
    route: str  # the template, e.g. /v1/holds/{hold_id}; "unmatched" when no route matched
    path: str
    status: int
    latency_ms: float
    hold_id: str | None
    layer: str | None  # "redis" or "postgres": which one decided
    time: datetime  # when the request ended, UTC (ISO 8601 with "Z", as before)
    sampled_1_in: int | None = None  # on a sampled 409: this line stands for that many of them


_encoder = msgspec.json.Encoder()


def encode_chunks(lines: list[AccessLine], limit_bytes: int = PIPE_BUF_BYTES) -> Iterator[bytes]:
    """The lines as JSON, one per line, in chunks of whole lines of at most `limit_bytes` each (a single
    line longer than that, only with a very long path, is a chunk of its own)."""
    chunk = bytearray()
    for line in lines:
        start = len(chunk)
        try:
            _encoder.encode_into(line, chunk, start)
        except UnicodeEncodeError:  # a lone surrogate, in a path only a server other than uvicorn passes on
            del chunk[start:]
            _encoder.encode_into(_printable(line), chunk, start)
        chunk.append(0x0A)
        if len(chunk) > limit_bytes and start:
            yield bytes(chunk[:start])
            del chunk[:start]
    if chunk:
        yield bytes(chunk)


def _printable(line: AccessLine) -> AccessLine:
    """The line with the request's own strings made encodable (what UTF-8 cannot take, as backslash escapes);
    the others are the gateway's."""

    def fix(text: str) -> str:
        return text.encode("utf-8", "backslashreplace").decode()

    return msgspec.structs.replace(
        line, message=fix(line.message), method=fix(line.method), route=fix(line.route), path=fix(line.path)
    )


def write_stderr(chunk: bytes) -> None:
    """One chunk to standard error, the stream the stdlib handler of the other log lines writes to. A chunk
    the descriptor cannot take (closed, or a non-blocking pipe that is full) is dropped: the request has been
    answered, and a log must not fail it."""
    view = memoryview(chunk)
    try:
        while view:
            view = view[os.write(STDERR_FD, view) :]  # a pipe takes a write of up to PIPE_BUF whole
    except OSError:
        return


class AccessLog:
    """Which requests get a line, and writing them. One per worker process (the app's)."""

    def __init__(
        self,
        *,
        json: bool = True,
        sample_409: int = 100,
        flush_interval_s: float = 0.1,
        sink: Sink = write_stderr,
    ) -> None:
        self.json = json
        self.sample_409 = sample_409
        self.flush_interval_s = flush_interval_s
        self._sink = sink
        self._pid = os.getpid()
        self._pending: list[AccessLine] = []
        self._rejections = 0  # hold-creation 409s seen by this worker
        self._skipped = 0  # of them not logged, not yet added to the metric
        self._flushing = False  # a periodic flush runs: until then (and after), each line is written at once

    def record(  # noqa: PLR0917 - called per request by every HTTP path with the same six facts
        self, method: str, route: str, path: str, status: int, elapsed_s: float, context: RequestContext
    ) -> None:
        """The line of one request answered, unless it is a hold-creation 409 that the sampling skips."""
        sampled_1_in = None
        if status == 409 and route == SAMPLED_ROUTE and method == SAMPLED_METHOD and self.sample_409 > 1:
            seen = self._rejections
            self._rejections = seen + 1
            if seen % self.sample_409:
                self._skipped += 1
                return
            sampled_1_in = self.sample_409
        line = AccessLine(
            level="INFO",
            logger=LOGGER_NAME,
            pid=self._pid,
            message=f"{method} {route} {status}",
            request_id=context.request_id,
            method=method,
            route=route,
            path=path,
            status=status,
            latency_ms=round(elapsed_s * 1000, 3),
            hold_id=context.hold_id,
            layer=context.layer,
            time=datetime.now(UTC),
            sampled_1_in=sampled_1_in,
        )
        if not self.json:
            self._log_text(line)
            return
        self._pending.append(line)
        if not self._flushing or len(self._pending) >= MAX_PENDING_LINES:
            self.flush()

    def flush(self) -> None:
        """Write every pending line now, and count the skipped 409s in the metric."""
        if self._skipped:
            metrics.ACCESS_LOG_SKIPPED.inc(self._skipped)
            self._skipped = 0
        pending, self._pending = self._pending, []
        for chunk in encode_chunks(pending):
            self._sink(chunk)

    async def run(self) -> None:
        """Flush every `flush_interval_s` until cancelled, then write what is left (the worker's lifespan
        runs this: a graceful stop loses nothing)."""
        self._flushing = True
        try:
            while True:
                await asyncio.sleep(self.flush_interval_s)
                try:
                    self.flush()
                except Exception:  # a broken sink must not stop the flushes (its lines are lost, not kept)
                    _stdlib_log.exception("access log: writing request lines failed")
        finally:
            self._flushing = False
            self.flush()

    @staticmethod
    def _log_text(line: AccessLine) -> None:
        fields = msgspec.structs.asdict(line)
        for name in ("level", "logger", "pid", "message", "request_id", "time"):
            del fields[name]  # the record has its own (request_id from the current request)
        if line.sampled_1_in is None:
            del fields["sampled_1_in"]
        _stdlib_log.info(line.message, extra=fields)
