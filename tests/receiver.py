"""A webhook receiver for the tests: a raw asyncio HTTP/1.1 server on a port of its own, whose answers the
test switches at any time (200, 500, a redirect, slowly, never, a body too large to read), and which stops
(its port then refuses connections) and starts again on the same port. Every request is recorded: its
headers and body, when it arrived and when its answer was written or its connection ended, what it was
answered, and whether its Standard Webhooks signature verified."""

import asyncio
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from gateway.embedded import free_port
from tests.support import eventually

MAX_HEAD_BYTES = 65_536
CHUNK_BYTES = 1 << 20


@dataclass
class Answer:
    """How to answer one request."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait this long before answering
    hang: bool = False  # never answer: wait until the client gives up (closes) or the receiver stops


@dataclass
class Received:
    """One request as the receiver saw it."""

    webhook_id: str
    headers: dict[str, str]
    body: bytes
    started: float  # time.monotonic() once the request was read
    wall: float  # time.time() then (to compare with the database's timestamps)
    verified: bool  # the signature matched the receiver's secret
    status: int | None = None  # answered with; None while in flight, or if never answered
    ended: float | None = None  # time.monotonic() once answered, or once the connection ended without one
    answer_complete: bool = False  # the whole answer was written (a client that stops reading cuts it)

    def json(self) -> Any:
        import json  # noqa: PLC0415 - only some tests read bodies

        return json.loads(self.body)


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.secret: str | None = None
        self.answer: Callable[[Received], Answer] = lambda _: Answer()
        self.received: list[Received] = []
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True, backlog=256
        )

    async def stop(self) -> None:
        """Stop listening and end every open connection: from now on the port refuses connections."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> "Receiver":
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # ---- what was received ----

    def delivered(self) -> dict[str, Received]:
        """webhook id -> the first receipt answered 2xx."""
        first: dict[str, Received] = {}
        for received in self.received:
            if received.status is not None and 200 <= received.status < 300:
                first.setdefault(received.webhook_id, received)
        return first

    def receipts(self, webhook_id: str) -> list[Received]:
        return [r for r in self.received if r.webhook_id == webhook_id]

    def in_flight(self) -> list[Received]:
        return [r for r in self.received if r.ended is None]

    async def wait_delivered(self, webhook_ids: set[str], within_s: float = 60) -> None:
        await eventually(
            lambda: webhook_ids <= self.delivered().keys(),
            within_s,
            lambda: f"not delivered: {sorted(webhook_ids - self.delivered().keys(), key=int)}",
        )

    # ---- the server ----

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        received: Received | None = None
        try:
            while True:  # keep-alive: requests one after another on the connection
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                received = self._read(head)
                length = int(received.headers.get("content-length", "0"))
                received.body = await reader.readexactly(length)
                received.verified = self._verified(received)
                received.started, received.wall = time.monotonic(), time.time()
                self.received.append(received)
                answer = self.answer(received)
                if answer.hang:
                    with suppress(ConnectionError):
                        await reader.read()  # until the client closes
                    return
                if answer.delay_s:
                    await asyncio.sleep(answer.delay_s)
                await self._write(writer, received, answer)
                received = None
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            if received is not None and received.ended is None:
                received.ended = time.monotonic()
            self._connections.discard(task)
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    def _read(head: bytes) -> Received:
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return Received(
            webhook_id=headers.get("webhook-id", ""),
            headers=headers,
            body=b"",
            started=0.0,
            wall=0.0,
            verified=False,
        )

    def _verified(self, received: Received) -> bool:
        if self.secret is None:
            return False
        try:
            Webhook(self.secret).verify(received.body, received.headers)
        except WebhookVerificationError:
            return False
        return True

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, received: Received, answer: Answer) -> None:
        head = [f"HTTP/1.1 {answer.status} X", f"Content-Length: {len(answer.body)}"]
        head += [f"{name}: {value}" for name, value in answer.headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        received.status = answer.status
        for offset in range(0, len(answer.body), CHUNK_BYTES):
            writer.write(answer.body[offset : offset + CHUNK_BYTES])
            await writer.drain()
        await writer.drain()
        received.ended = time.monotonic()
        received.answer_complete = True
