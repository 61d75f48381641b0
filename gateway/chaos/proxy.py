"""A TCP proxy, in this event loop, that puts network faults between the gateway and Redis or PostgreSQL.

Tests and the chaos soak point the gateway at `FaultProxy.port` instead of the real server, then turn faults
on and off while requests run: latency, a frozen link (blackhole), connection resets, a server that refuses
connections, and a lost reply (the server ran the command, the client never hears back). Every fault applies
to the connections already open as well as to new ones. latency, blackhole and refuse replace one another;
drop_reply adds to whichever of them is on; heal() clears everything.

The proxy reads the protocols only as far as the faults need. For Redis it splits the client's stream into
commands (RESP arrays, or inline) and counts the server's replies; for PostgreSQL it reads the frontend
messages (simple queries, Parse/Bind/Sync) and counts the server's ReadyForQuery messages. A lost reply is
cut once the server has answered the command in question, so the command really ran. "tcp" reads nothing.
"""

import asyncio
import contextlib
import enum
import random
import socket
import struct
from collections import Counter
from types import TracebackType
from typing import Literal, Protocol, Self
from urllib.parse import urlsplit, urlunsplit

ProxyProtocol = Literal["redis", "postgres", "tcp"]

_READ_SIZE = 65_536
_ANSWER_WAIT_S = 2.0  # a lost reply waits this long at most for the server's answer, then cuts anyway
_RST_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN
_SSL_REQUEST = 80877103  # untyped PostgreSQL request codes that precede the StartupMessage
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102


class _Mode(enum.Enum):
    PASS = enum.auto()
    BLACKHOLE = enum.auto()
    REFUSE = enum.auto()


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close at once with a TCP reset; whatever is still buffered is thrown away."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
    writer.transport.abort()


class _Parser(Protocol):
    sent: int  # requests forwarded to the server that it will answer
    answered: int  # answers the server has sent

    def client(self, data: bytes, *, live: bool) -> int | None:
        """Read a chunk from the client; count it if live. Return where to cut it for a lost reply."""

    def server(self, data: bytes) -> None:
        """Read a chunk from the server."""


class _Hooks(Protocol):
    def saw(self, key: bytes) -> None: ...
    def claim(self, key: bytes) -> bool: ...
    def started(self) -> None: ...


def _resp_line(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    end = buf.find(b"\r\n", pos)
    return None if end < 0 else (buf[pos:end], end + 2)


def _resp_command(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """The name of the client command at pos (b"" for an empty inline line) and where it ends."""
    if buf[pos : pos + 1] != b"*":
        end = buf.find(b"\n", pos)
        return None if end < 0 else ((buf[pos:end].split() or [b""])[0], end + 1)
    head = _resp_line(buf, pos + 1)
    if head is None:
        return None
    count, pos = int(head[0]), head[1]
    name = b""
    for index in range(count):
        length_line = _resp_line(buf, pos + 1)  # skips the b"$"
        if length_line is None:
            return None
        start, length = length_line[1], int(length_line[0])
        if len(buf) < start + length + 2:
            return None
        if index == 0:
            name = buf[start : start + length]
        pos = start + length + 2
    return name, pos


def _resp_reply_end(buf: bytes, pos: int) -> int | None:
    """Where the complete server reply (RESP2 or RESP3) at pos ends, or None if more bytes are needed."""
    line = _resp_line(buf, pos + 1)
    if line is None:
        return None
    kind, (text, pos) = buf[pos : pos + 1], line
    if kind in b"$=!":  # bulk string, verbatim string, bulk error: a length, then that many bytes
        length = int(text)
        return pos if length < 0 else (pos + length + 2 if len(buf) >= pos + length + 2 else None)
    if kind in b"*~>%|":  # array, set, push, map, attribute: nested replies
        count = int(text) * (2 if kind in b"%|" else 1)
        for _ in range(max(count, 0)):
            end = _resp_reply_end(buf, pos) if pos < len(buf) else None
            if end is None:
                return None
            pos = end
        return pos
    return pos  # a one-line reply: + - : _ # , (


class _RedisParser:
    def __init__(self, hooks: _Hooks) -> None:
        self._hooks = hooks
        self._requests = b""  # an incomplete command, waiting for the rest
        self._replies = b""
        self.sent = 0
        self.answered = 0

    def client(self, data: bytes, *, live: bool) -> int | None:
        offset, buf, pos = len(self._requests), self._requests + data, 0
        while pos < len(buf) and (command := _resp_command(buf, pos)) is not None:
            name, pos = command[0].upper(), command[1]
            if live and name:
                self.sent += 1
                self._hooks.saw(name)
                if self._hooks.claim(name):
                    self._requests = b""
                    return pos - offset
        self._requests = buf[pos:]
        return None

    def server(self, data: bytes) -> None:
        buf, pos = self._replies + data, 0
        while pos < len(buf) and (end := _resp_reply_end(buf, pos)) is not None:
            # A RESP3 push or attribute is not counted as an answer: too few answers only makes a lost
            # reply wait longer, too many would cut before the command ran.
            self.answered += buf[pos : pos + 1] not in (b">", b"|")
            pos = end
        self._replies = buf[pos:]


class _PostgresParser:
    def __init__(self, hooks: _Hooks) -> None:
        self._hooks = hooks
        self._requests = b""
        self._replies = b""
        self._untyped = True  # the client's next message is a startup, SSL or GSS request (no type byte)
        self._awaiting_answer = False  # the server's next byte answers an SSL/GSS request
        self._opaque = False  # the client and server went TLS: nothing left to read
        self._statements: dict[bytes, bytes] = {}  # prepared statement name -> its SQL, upper-cased
        self._cut_at_sync = False  # a Bind matched drop_reply: cut after the Sync that ends its round trip
        self.sent = 0  # simple queries and Syncs: each gets one ReadyForQuery
        self.answered = 0

    def client(self, data: bytes, *, live: bool) -> int | None:
        if self._opaque:
            return None
        offset, buf, pos = len(self._requests), self._requests + data, 0
        while True:
            if self._untyped:
                if len(buf) - pos < 8 or len(buf) - pos < (length := int.from_bytes(buf[pos : pos + 4])):
                    break
                self._untyped_message(int.from_bytes(buf[pos + 4 : pos + 8]), live=live)
                pos += length
                continue
            if len(buf) - pos < 5 or len(buf) < (end := pos + 1 + int.from_bytes(buf[pos + 1 : pos + 5])):
                break
            kind, body, pos = buf[pos : pos + 1], buf[pos + 5 : end], end
            if self._message(kind, body, live=live):
                self._requests = b""
                return pos - offset
        self._requests = buf[pos:]
        return None

    def _untyped_message(self, code: int, *, live: bool) -> None:
        if code in (_SSL_REQUEST, _GSSENC_REQUEST):
            self._awaiting_answer = True
        elif code != _CANCEL_REQUEST:  # a StartupMessage: typed messages from now on
            self._untyped = False
            if live:
                self._hooks.started()
                self.sent += 1  # the login ends with a ReadyForQuery too

    def _message(self, kind: bytes, body: bytes, *, live: bool) -> bool:
        """Take in one typed message; whether the stream is to be cut right after it."""
        cut = False
        if kind == b"P":  # Parse: statement name, SQL, ...
            name, sql = body.split(b"\0", 2)[:2]
            self._statements[name] = sql.upper()
        elif kind == b"C" and body[:1] == b"S":  # Close of a statement
            self._statements.pop(body[1:].partition(b"\0")[0], None)
        elif kind in (b"Q", b"B") and live:  # a simple query, or a Bind: the execution of a statement
            sql = body.partition(b"\0")[0].upper() if kind == b"Q" else self._bound(body)
            self._hooks.saw(sql)
            if self._hooks.claim(sql):
                cut, self._cut_at_sync = kind == b"Q", kind == b"B"
        if kind in (b"Q", b"S") and live:
            self.sent += 1
        if kind == b"S" and self._cut_at_sync:
            cut, self._cut_at_sync = True, False
        return cut

    def _bound(self, body: bytes) -> bytes:
        """The SQL of the statement a Bind message (portal name, statement name, ...) executes."""
        return self._statements.get(body.split(b"\0", 2)[1], b"")

    def server(self, data: bytes) -> None:
        if self._opaque:
            return
        if self._awaiting_answer and data:
            self._awaiting_answer, self._opaque = False, data[:1] in (b"S", b"G")
            data = data[1:]
        buf, pos = self._replies + data, 0
        while len(buf) - pos >= 5 and len(buf) >= (end := pos + 1 + int.from_bytes(buf[pos + 1 : pos + 5])):
            self.answered += buf[pos : pos + 1] == b"Z"  # ReadyForQuery
            pos = end
        self._replies = buf[pos:]


class _Pipe:
    """One direction of a connection: writes in the order given, each after its own delay."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._last_due = 0.0
        self._pending = 0  # delayed writes not done yet: a later write may not overtake them

    def send(self, data: bytes | None, delay_s: float) -> None:
        """Write data after delay_s; None closes the writer (after everything sent before it)."""
        if delay_s <= 0 and not self._pending:
            self._write(data)
            return
        loop = asyncio.get_running_loop()
        # Strictly increasing: the event loop does not promise an order to timers due at the same time.
        self._last_due = max(loop.time() + delay_s, self._last_due + 1e-6)
        self._pending += 1
        loop.call_at(self._last_due, self._due, data)

    def _due(self, data: bytes | None) -> None:
        self._pending -= 1
        self._write(data)

    def _write(self, data: bytes | None) -> None:
        if self.writer.is_closing():
            return
        if data is None:
            self.writer.close()
        else:
            self.writer.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()


class _Link:
    """One proxied connection: the client's side, the server's side, and what the protocol parser knows."""

    def __init__(self, client: asyncio.StreamWriter, parser: _Parser | None) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.parser = parser
        self.cut_after: int | None = None  # a lost reply: cut once the server has sent this many answers
        self.answered = asyncio.Event()

    def rst(self) -> None:
        self.answered.set()  # a lost reply waiting for its answer stops waiting
        _rst(self.client)
        if self.server is not None:
            _rst(self.server)


class FaultProxy:
    """Listens on 127.0.0.1:`port` and forwards each connection to the upstream server, with faults."""

    def __init__(self, upstream_host: str, upstream_port: int, *, protocol: ProxyProtocol = "tcp") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.protocol: ProxyProtocol = protocol
        self.host = "127.0.0.1"
        self.port = 0  # known after start()
        self.connections_accepted = 0
        self.startup_messages = 0  # postgres: StartupMessages seen, one per connection that logged in
        self._server: asyncio.Server | None = None
        self._links: dict[_Link, asyncio.Task[None]] = {}
        self._seen: Counter[bytes] = Counter()
        self._drops: dict[bytes, int] = {}  # drop_reply pattern -> how many more times
        self._mode = _Mode.PASS
        self._latency_s = 0.0
        self._jitter_s = 0.0

    @classmethod
    def in_front_of(cls, url: str, *, protocol: ProxyProtocol = "tcp") -> "FaultProxy":
        """A proxy to the server a redis:// URL or postgresql:// DSN names (host and port in the netloc)."""
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError("the URL names no host and port")
        return cls(parts.hostname, parts.port, protocol=protocol)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Reset links rather than cancel their tasks: once reset, each ends by itself at once (and this
        # Python's start_server logs the cancellation of a connection's task as an error).
        tasks = list(self._links.values())
        self.reset()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=_ANSWER_WAIT_S)
            for task in stuck:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def url(self, original: str) -> str:
        """original (a redis:// URL or a postgresql:// DSN) with its host and port replaced by the proxy's."""
        parts = urlsplit(original)
        user, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{user}{at}{self.host}:{self.port}"))

    def redis_url(self, original: str | None = None) -> str:
        return self.url(original or "redis://localhost/0")

    def postgres_dsn(self, original: str) -> str:
        return self.url(original)

    # Faults.

    def heal(self) -> None:
        """Plain pass-through again: no latency, no blackhole, no refusal, no pending lost replies."""
        self._mode, self._latency_s, self._jitter_s = _Mode.PASS, 0.0, 0.0
        self._drops.clear()

    def latency(self, ms: float, jitter_ms: float = 0) -> None:
        """Delay every chunk, both ways, by ms ± jitter_ms (never below 0), keeping their order."""
        self._mode, self._latency_s, self._jitter_s = _Mode.PASS, ms / 1000, jitter_ms / 1000

    def blackhole(self) -> None:
        """A frozen link: read and discard both ways, forward nothing, answer nothing."""
        self._mode = _Mode.BLACKHOLE

    def reset(self) -> None:
        """Reset every open connection now (both sides); new connections are still accepted."""
        for link in self._links:
            link.rst()

    def refuse(self) -> None:
        """A server that is down: reset open connections, and each new one as soon as it is accepted."""
        self._mode = _Mode.REFUSE
        self.reset()

    def drop_reply(self, command: bytes, *, times: int = 1) -> None:
        """Lose the reply to the next `times` commands matching `command`: forward the command, let the
        server run it, then reset that connection before any of the server's answer reaches the client.

        redis: `command` is a command name (b"SET", b"EVALSHA"). postgres: a piece of SQL, matched in a
        simple query's text (asyncpg's commit is the simple query "COMMIT;") or in the SQL of a prepared
        statement when it is executed (Bind): the cut then comes after the Sync that ends that round trip.
        The SQL match is by substring: b"COMMIT" also matches an INSERT of the text 'committed'.
        """
        if self.protocol == "tcp":
            raise ValueError("drop_reply needs to read the protocol: use protocol='redis' or 'postgres'")
        pattern = command.upper()
        self._drops[pattern] = self._drops.get(pattern, 0) + times

    # Counters.

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def commands_seen(self, name: bytes) -> int:
        """redis: commands forwarded with this name. postgres: simple queries and executions (Binds) of
        prepared statements forwarded whose SQL contains `name`. Case-insensitive."""
        name = name.upper()
        if self.protocol == "redis":
            return self._seen[name]
        return sum(count for sql, count in self._seen.items() if name in sql)

    # The parsers' hooks.

    def saw(self, key: bytes) -> None:
        self._seen[key] += 1

    def claim(self, key: bytes) -> bool:
        """Whether key matches a pending drop_reply; if so, use up one of its times."""
        for pattern, left in self._drops.items():
            if pattern == key if self.protocol == "redis" else pattern in key:
                if left <= 1:
                    del self._drops[pattern]
                else:
                    self._drops[pattern] = left - 1
                return True
        return False

    def started(self) -> None:
        self.startup_messages += 1

    # Connections.

    def _delay_s(self) -> float:
        if not self._jitter_s:
            return self._latency_s
        return max(0.0, self._latency_s + random.uniform(-self._jitter_s, self._jitter_s))  # noqa: S311 (jitter, not a secret)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        if self._mode is _Mode.REFUSE:
            _rst(writer)
            return
        parser: _Parser | None = None
        if self.protocol == "redis":
            parser = _RedisParser(self)
        elif self.protocol == "postgres":
            parser = _PostgresParser(self)
        link = _Link(writer, parser)
        task = asyncio.current_task()
        assert task is not None
        self._links[link] = task
        try:
            try:
                server_reader, link.server = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
            except OSError:
                _rst(writer)
                return
            await asyncio.gather(
                self._from_client(link, reader, _Pipe(link.server)),
                self._from_server(link, server_reader, _Pipe(writer)),
            )
        finally:
            for side in (link.client, link.server):
                if side is not None and not side.is_closing():  # a closing side flushes what it still holds
                    _rst(side)
            del self._links[link]

    def _parse(self, link: _Link, data: bytes, *, live: bool) -> int | None:
        """Where to cut this chunk from the client, if anywhere. A stream the parser cannot read (not the
        protocol it expected) is forwarded unread from then on."""
        if link.parser is None:
            return None
        try:
            return link.parser.client(data, live=live)
        except (ValueError, IndexError):
            link.parser = None
            return None

    async def _from_client(self, link: _Link, reader: asyncio.StreamReader, pipe: _Pipe) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(_READ_SIZE):
                live = self._mode is _Mode.PASS
                cut = self._parse(link, data, live=live)
                if not live:
                    continue
                delay_s = self._delay_s()
                if cut is None:
                    pipe.send(data, delay_s)
                    await pipe.drain()
                    continue
                assert link.parser is not None
                link.cut_after = link.parser.sent  # set before the command leaves: its answer is discarded
                pipe.send(data[:cut], delay_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(link.answered.wait(), _ANSWER_WAIT_S + 2 * delay_s)
                link.rst()
                return
        pipe.send(None, self._delay_s())

    async def _from_server(self, link: _Link, reader: asyncio.StreamReader, pipe: _Pipe) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(_READ_SIZE):
                if link.parser is not None:
                    try:
                        link.parser.server(data)
                    except (ValueError, IndexError):
                        link.parser = None
                if link.cut_after is not None:
                    if link.parser is not None and link.parser.answered >= link.cut_after:
                        link.answered.set()
                    continue
                if self._mode is _Mode.PASS:
                    pipe.send(data, self._delay_s())
                    await pipe.drain()
        pipe.send(None, self._delay_s())
