"""A small HTTP/1.1 keep-alive client on asyncio streams, and the confirm stream of the bulkhead measurement.

Raw sockets rather than httpx: the client shares the two cores with the server and wrk, and every
microsecond it spends is one the server does not get, or latency it adds to what it measures.
"""

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Mapping, Sequence

import msgspec


class HttpError(RuntimeError):
    """The server closed the connection or answered something this client does not parse."""


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> "Connection":
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def post(self, path: str, body: object) -> tuple[int, bytes]:
        return await self.request("POST", path, body)

    async def request(
        self, method: str, path: str, body: object = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """One request (a JSON body unless None); the status and the body of the answer."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + payload)
        try:
            header = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise HttpError(f"{method} {path}: connection closed") from exc
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        if status == 204:  # no body, and no Content-Length to say so
            return status, b""
        length = next(
            (int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")),
            None,
        )
        if length is None:
            raise HttpError(f"{method} {path}: no Content-Length in the answer")
        return status, await self._reader.readexactly(length)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


class _Hold(msgspec.Struct):
    id: str


async def create_holds(
    port: int, event_id: str, slot_ids: Sequence[str], *, concurrency: int = 8, ttl_s: int = 3600
) -> list[tuple[str, str]]:
    """Hold each slot for a holder of its own; (hold id, holder) per slot. Raises unless all are 201."""
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for index, slot_id in enumerate(slot_ids):
        queue.put_nowait((index, slot_id))
    holds: list[tuple[str, str]] = [("", "")] * len(slot_ids)

    async def worker() -> None:
        conn = await Connection.open(port)
        try:
            while not queue.empty():
                index, slot_id = queue.get_nowait()
                holder = f"bh-{event_id}-{index}"
                body = {"event_id": event_id, "slots": [slot_id], "holder": holder, "ttl_seconds": ttl_s}
                status, answer = await conn.post("/v1/holds", body)
                if status != 201:
                    raise HttpError(f"holding {event_id}/{slot_id}: {status} {answer[:300]!r}")
                holds[index] = (msgspec.json.decode(answer, type=_Hold).id, holder)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return holds


async def confirm_holds(
    port: int, holds: Sequence[tuple[str, str]], *, concurrency: int = 8
) -> dict[int, int]:
    """Confirm each (hold id, holder) once, as fast as `concurrency` keep-alive connections go; the statuses
    of the answers, counted."""
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for item in holds:
        queue.put_nowait(item)
    statuses: dict[int, int] = {}

    async def worker() -> None:
        conn = await Connection.open(port)
        try:
            while not queue.empty():
                hold_id, holder = queue.get_nowait()
                status, _ = await conn.post(f"/v1/holds/{hold_id}/confirm", {"holder": holder})
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


class ConfirmStream(msgspec.Struct, frozen=True, kw_only=True):
    """A steady stream of confirms: their latencies and what the client cost."""

    sent: int
    rate_per_s: float
    wall_s: float
    statuses: dict[int, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_s: float  # CPU of the thread that ran the stream (the benchmark's event loop)

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)


async def confirm_stream(
    port: int, holds: Sequence[tuple[str, str]], *, rate_per_s: float, connections: int = 8
) -> ConfirmStream:
    """Confirm each hold once, at rate_per_s, on a few keep-alive connections.

    Open loop: the i-th confirm is due at start + i / rate, and its latency is counted from then, so a
    server that stalls is charged for the confirms that queued behind the stall (no coordinated omission).
    """
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    opened = [await Connection.open(port) for _ in range(connections)]
    for conn in opened:
        idle.put_nowait(conn)
    latencies_s: list[float] = []
    statuses: dict[int, int] = {}

    async def confirm(hold_id: str, holder: str, due: float) -> None:
        conn = await idle.get()
        try:
            status, _ = await conn.post(f"/v1/holds/{hold_id}/confirm", {"holder": holder})
        finally:
            idle.put_nowait(conn)
        latencies_s.append(time.monotonic() - due)
        statuses[status] = statuses.get(status, 0) + 1

    cpu_start, started = time.thread_time(), time.monotonic()
    tasks = []
    try:
        for index, (hold_id, holder) in enumerate(holds):
            due = started + index / rate_per_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(confirm(hold_id, holder, due)))
        await asyncio.gather(*tasks)
    finally:
        for conn in opened:
            await conn.close()
    wall_s, cpu_s = time.monotonic() - started, time.thread_time() - cpu_start
    ordered = sorted(latencies_s)
    return ConfirmStream(
        sent=len(holds),
        rate_per_s=rate_per_s,
        wall_s=wall_s,
        statuses=statuses,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        max_ms=ordered[-1] * 1000,
        client_cpu_s=cpu_s,
    )


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of sorted values (the value at or below which pct% of them fall)."""
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats
    return ordered[int(rank) - 1]
