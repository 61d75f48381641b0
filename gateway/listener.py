"""Each worker's one LISTEN connection: what other workers and replicas tell it, without polling.

The background leader's sequencer NOTIFYs the feed's new head when it numbers events (so that long polls, live
streams and webhook delivery in every worker wake at once); a client key created or deleted NOTIFYs (every
worker reloads the keys); a leader that stops cleanly NOTIFYs (another takes over at once). A notification
reaches only the connections listening when it commits, so each `read` registered here runs on every
(re)connect and then every `hold_events_resync_s`, on this connection: a lost notification costs at most that
long, and a read that fails (the connection is dead or the server frozen) ends the connection, which is then
opened again. Reconnects go through the pool's circuit breaker, so a database that is down sees this
connection's attempts among the worker's one probe per `db_retry_interval_s`.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from gateway.breaker import CircuitBreaker
from gateway.config import Settings
from gateway.store import APPLICATION_NAME, APPLICATION_NAME_MAX_CHARS, UNAVAILABLE_ERRORS

log = logging.getLogger(__name__)

# What pg_stat_activity shows for a listener's connection (then `/` and the worker's id).
LISTENER_APPLICATION_NAME = APPLICATION_NAME + "-listener"

Read = Callable[[asyncpg.Connection], Awaitable[object]]
# A listener connection that fails with one of these is opened again.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)


class Listener:
    """The worker's LISTEN connection: callbacks per channel, and the reads that stand in for lost
    notifications."""

    def __init__(self, settings: Settings, breaker: CircuitBreaker, worker_id: str) -> None:
        assert settings.database_url is not None
        self._dsn = settings.database_url
        self._settings = settings
        self._breaker = breaker
        self._application_name = f"{LISTENER_APPLICATION_NAME}/{worker_id}"[:APPLICATION_NAME_MAX_CHARS]
        self._callbacks: dict[str, Callable[[str], None]] = {}
        self._reads: list[Read] = []
        self._on_connect: list[Callable[[], None]] = []
        self.connects = 0  # connections opened so far (the first, then each reconnect)
        self.connected = asyncio.Event()  # set while listening

    def on(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call `callback(payload)` on each notification on `channel` (register before `run`)."""
        self._callbacks[channel] = callback

    def read_on_connect(self, read: Read) -> None:
        """Run `read(connection)` on each (re)connect and every hold_events_resync_s (register before
        `run`)."""
        self._reads.append(read)

    def on_connect(self, callback: Callable[[], None]) -> None:
        """Call `callback()` once listening, on each (re)connect: what was notified meanwhile was lost."""
        self._on_connect.append(callback)

    async def run(self) -> None:
        """Listen until cancelled, reconnecting whenever the connection is lost."""
        while True:
            conn = await self._connect()
            if conn is None:
                await asyncio.sleep(self._settings.db_retry_interval_s)
                continue
            try:
                await self._listen(conn)
            except CONNECTION_ERRORS as exc:
                log.info("listener connection lost, reconnecting: %s: %s", type(exc).__name__, exc)
            except Exception:  # anything else must not end the listening for the life of the worker
                log.exception("listener failed, reconnecting")
            finally:
                self.connected.clear()
                conn.terminate()

    async def _connect(self) -> asyncpg.Connection | None:
        if not self._breaker.allow():
            return None
        try:
            conn = await asyncpg.connect(
                self._dsn,
                timeout=self._settings.db_connect_timeout_s,
                command_timeout=self._settings.db_command_timeout_s,
                server_settings={
                    "application_name": self._application_name,
                    "statement_timeout": str(self._settings.db_statement_timeout_ms),
                },
            )
        except CONNECTION_ERRORS as exc:
            self._breaker.record_failure(f"cannot connect: {type(exc).__name__}: {exc}")
            return None
        self._breaker.record_success()
        return conn

    async def _listen(self, conn: asyncpg.Connection) -> None:
        """Subscribe, then read on connect and every interval until the connection is lost (returns)."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        for channel in self._callbacks:
            await conn.add_listener(channel, self._deliver)
        self.connects += 1
        self.connected.set()
        for callback in self._on_connect:
            callback()
        while not conn.is_closed():
            for read in self._reads:
                await read(conn)
            try:
                await asyncio.wait_for(lost.wait(), self._settings.hold_events_resync_s)
            except TimeoutError:
                continue
            return

    def _deliver(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        callback = self._callbacks.get(channel)
        if callback is None:
            return
        try:
            callback(str(payload))
        except Exception:  # one callback's failure must not end the listening
            log.exception("listener: the callback for %s failed", channel)
