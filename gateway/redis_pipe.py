"""One Redis connection that carries every concurrent hot-path call of a worker.

redis-py takes a pooled connection per call and spends about 55 µs of CPU on each; on the rejection path
that is a third of the request. Here a call is one write into a buffer that is flushed once per event-loop
pass (concurrent calls share one write and one round trip), and replies, which Redis sends in order, are
matched to callers first-in first-out by hiredis's parser.

Failure semantics are redis-py's as the gateway configures it: a per-call timeout, no retries. A timeout
or a lost connection fails every call in flight on that connection and closes it (replies after a timeout
could otherwise be matched to the wrong caller); the next call opens a new one. The timeout is one timer per
connection, not one per call: replies come in order, so the oldest call in flight is the only one that can
be late, and the timer is set for its deadline (a timer per call was a tenth of a rejection's CPU).

Every new connection first asks the server its run_id and hands it to `check_instance`, which may refuse it
(by raising): a Redis that restarted behind a reconnect then answers no call, not even one already queued.
Behind Sentinel, every new connection asks `resolve_address` where the master is (a demoted master that stays
up answers READONLY: a failure like any other, and the recovery that follows closes the connection).
"""

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Told the run_id of the server behind a new connection; raises to refuse the connection.
CheckInstance = Callable[[str], None]
# Where the server is now (host, port), asked before every connect (Sentinel's master).
ResolveAddress = Callable[[], Awaitable[tuple[str, int]]]


def run_id_of(info: bytes | str) -> str:
    """The run_id in the reply to `INFO server`."""
    if not isinstance(info, bytes | str):
        raise RedisConnectionError(f"INFO server failed: {info}")
    text = info.decode() if isinstance(info, bytes) else info
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line.removeprefix("run_id:").strip()
    raise RedisConnectionError("INFO server gave no run_id")


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout_s: float, description: str) -> None:
        self._reader = hiredis.Reader()
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._deadlines: deque[float] = deque()  # each waiter's, by the loop's clock (inf: none)
        self._timeout_s = timeout_s
        self._description = description  # host:port, for errors
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they are write transports.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            waiter = self._waiters.popleft()
            self._deadlines.popleft()
            if not waiter.done():
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or RedisConnectionError("connection closed by the server")
        self._transport = None
        self._fail_all(RedisConnectionError(f"connection lost: {self.lost}"))

    def send(self, packed: bytes, *, timed: bool = True) -> "asyncio.Future[Any]":
        """The reply's future; `timed`: failed past the timeout (the handshake has a budget of its own)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiters.append(waiter)
        self._deadlines.append(loop.time() + self._timeout_s if timed else float("inf"))
        if timed and self._timer is None:
            self._timer = loop.call_at(self._deadlines[0], self._check_deadline)
        self._pending.append(packed)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return waiter

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._deadlines:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadlines[0]:  # the late one was answered: watch the oldest left
            if self._deadlines[0] != float("inf"):
                self._timer = loop.call_at(self._deadlines[0], self._check_deadline)
            return
        self._fail_all(RedisTimeoutError(f"Timeout reading from {self._description}"))
        self.close()

    def _fail_all(self, error: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is not None and self._pending:
            try:
                self._transport.write(b"".join(self._pending))
            except (RuntimeError, OSError) as exc:
                # A transport closed under us (uvloop raises RuntimeError) before connection_lost ran.
                self.connection_lost(exc)
        self._pending.clear()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()  # connection_lost fails the calls in flight


class PipelinedRedis:
    """Commands over one shared connection, opened on first use and again after a failure."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        check_instance: CheckInstance | None = None,
        resolve_address: ResolveAddress | None = None,
    ) -> None:
        """`url` gives the server, database and credentials; with `resolve_address`, only the database and
        credentials (`redis://:password@/db`): the server is asked for at every connect."""
        options = parse_url(url)
        self._host: str = options.get("host", "localhost")
        self._port: int = int(options.get("port", 6379))
        self._db = int(options.get("db", 0))
        self._username: str | None = options.get("username")
        self._password: str | None = options.get("password")
        self._resolve_address = resolve_address
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._check_instance = check_instance
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @staticmethod
    def supports(url: str) -> bool:
        """TCP URLs only; anything else (unix sockets, TLS) stays with redis-py."""
        return url.startswith("redis://")

    async def execute(self, *args: str | int | bytes) -> Any:
        """Send one command and return its reply; a Redis error reply raises ResponseError."""
        protocol = await self._connection()
        reply = await protocol.send(hiredis.pack_command(cast(Any, args)))
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:
            # One connect for all callers that arrive while it is under way.
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if self._resolve_address is not None:
                    self._host, self._port = await self._resolve_address()
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self._timeout_s, f"{self._host}:{self._port}"), self._host, self._port
                )
                for command in self._handshake():
                    reply = await protocol.send(hiredis.pack_command(cast(Any, command)), timed=False)
                    if isinstance(reply, hiredis.ReplyError):
                        protocol.close()
                        raise RedisConnectionError(f"{command[0]} failed: {reply}")
                if self._check_instance is not None:
                    info_command = hiredis.pack_command(cast(Any, ("INFO", "server")))
                    info = await protocol.send(info_command, timed=False)
                    try:
                        self._check_instance(run_id_of(info))
                    except BaseException:
                        protocol.close()
                        raise
        except TimeoutError:
            raise RedisTimeoutError(f"Timeout connecting to {self._host}:{self._port}") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to {self._host}:{self._port}: {exc}") from exc
        self._protocol = protocol
        return protocol

    def _handshake(self) -> list[tuple[str | int, ...]]:
        commands: list[tuple[str | int, ...]] = []
        if self._password is not None:
            auth: tuple[str | int, ...] = ("AUTH", self._password)
            if self._username is not None:
                auth = ("AUTH", self._username, self._password)
            commands.append(auth)
        if self._db:
            commands.append(("SELECT", self._db))
        return commands

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None
