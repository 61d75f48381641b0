"""A fast webhook receiver for the benchmark: python -m loadtests.bench.receiver --port N

An asyncio HTTP/1.1 server (uvloop, a Protocol rather than streams: it shares the machine's cores with the
gateway it receives from, so every microsecond it spends is one the gateway does not get). Connections are
kept alive. Every POST is answered 204 at once; its `webhook-id` is recorded with the time it arrived (the
first time only: a redelivery keeps the first receipt). Nothing else is checked, neither the signature nor
the body. It answers two GETs of its own:

    GET /stats     {"requests": <POSTs received>, "unique": <distinct webhook-ids>}
    GET /received  {"<webhook-id>": <unix seconds it first arrived>, ...}

Receipt times are wall-clock unix seconds (time.time()), so that the benchmark can compare them with the
timestamps Postgres wrote on the same machine (occurred_at, expires_at).
"""

import argparse
import asyncio
import json
import time
from typing import cast

import uvloop

NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
HEADERS_END = b"\r\n\r\n"
MAX_HEAD_BYTES = 65_536  # a head longer than this is no webhook: the connection is closed


class Receipts:
    """What arrived: webhook-id -> unix seconds of its first receipt, and the POSTs counted."""

    def __init__(self) -> None:
        self.first_seen: dict[str, float] = {}
        self.requests = 0

    def record(self, webhook_id: str | None) -> None:
        self.requests += 1
        if webhook_id is not None and webhook_id not in self.first_seen:
            self.first_seen[webhook_id] = time.time()


class ReceiverProtocol(asyncio.Protocol):
    """One connection: requests parsed from a buffer (pipelined ones too), each answered in order."""

    def __init__(self, receipts: Receipts) -> None:
        self._receipts = receipts
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's is no subclass of asyncio.Transport, only alike).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(HEADERS_END)) >= 0:
            lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
            method, target = lines[0].split(" ", 2)[:2]
            length, webhook_id, chunked = 0, None, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "webhook-id":
                    webhook_id = value.strip()
                elif name == "transfer-encoding":
                    chunked = True
            if chunked:  # the gateway sends a Content-Length; anything else is not what this receiver serves
                self._reply(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self._close()
                return
            total = end + len(HEADERS_END) + length
            if len(self._buffer) < total:
                return  # the body is still coming
            del self._buffer[:total]
            if method == "POST":
                self._receipts.record(webhook_id)
                self._reply(NO_CONTENT)
            elif method == "GET" and target in ("/stats", "/received"):
                self._reply(_json_response(self._answer(target)))
            else:
                self._reply(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        if len(self._buffer) > MAX_HEAD_BYTES and self._buffer.find(HEADERS_END) < 0:
            self._close()

    def _answer(self, target: str) -> object:
        if target == "/stats":
            return {"requests": self._receipts.requests, "unique": len(self._receipts.first_seen)}
        return self._receipts.first_seen

    def _reply(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def _json_response(body: object) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    return head.encode() + payload


async def serve(port: int, host: str = "127.0.0.1") -> None:
    receipts = Receipts()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ReceiverProtocol(receipts), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.receiver", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port))  # ended by SIGTERM (the benchmark stops it with its process group)


if __name__ == "__main__":
    main()
