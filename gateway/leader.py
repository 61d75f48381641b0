"""The background leader: one worker per database runs the background Postgres work, elected through Postgres.

What only the leader runs: the sweeper (expiry, the purges of idempotency records, hold events and failed
webhook deliveries, retention), the drains of the release and inventory outboxes, and the hold event
sequencer (numbering committed events and fanning out their webhook deliveries). Every worker still runs
what is its own: its Redis upkeep (the probe of a Redis it stopped trusting, a rebuild after a restart), its
webhook deliveries (claimed with FOR UPDATE SKIP LOCKED, so workers share them), and its view of the feed's
head and of the client keys, kept by NOTIFY (gateway.listener), not by polling.

The election is a lease: one row (background_leader) names the holder and when its lease ends, by the
database's clock. Every worker runs `Leadership.run`: the leader renews every third of `background_lease_s`
(one statement); the others try again when the lease they last saw ends (one statement per lease, or at once
when a leader that stops cleanly says so on LEADER_CHANNEL). A worker that reaches Redis takes over from a
leader that does not (it could not drain the release outbox). Handover after a leader dies (kill -9) or
freezes (SIGSTOP: its TCP connection stays up, which is why this is not a session advisory lock) takes one
lease at most, plus the follower's wake-up.

A leader knows its lease from its own clock: it counts from when it sent the renewal, before Postgres started
the lease, so it never believes it leads past the lease's end. Each piece of leader work checks `leading`
before each pass; so a leader that was frozen and comes back, or cannot renew (Postgres away), stops at its
next pass, and at its next renewal learns who leads now. Between a takeover and the old leader's next check
both may run a pass; that is harmless: the sweeper's statements are idempotent and skip rows another holds
(FOR UPDATE SKIP LOCKED; an expired hold is not expired again, a purged row is gone), an outbox row is
cleared only after Redis answered and dropping a lease twice is a no-op, and the sequencer still numbers
under its transaction-scoped advisory lock (one numbering transaction at a time, whoever runs it).
"""

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from contextlib import suppress

from gateway import metrics, sql
from gateway.config import Settings
from gateway.errors import BackendUnavailable
from gateway.store import Store

log = logging.getLogger(__name__)

# A follower tries again this long after the lease it saw ends: the leader's renewal in flight lands first.
TAKEOVER_MARGIN_S = 0.1
# On a clean stop, how long the leader waits for Postgres to take its release (then the lease just runs out).
RELEASE_TIMEOUT_S = 2.0


def new_worker_id() -> str:
    """A worker's id, unique for its life: its pid, a random part (several gateways may share a process in
    tests), and the host. Postgres shows it in the pool's application_name (cut at 63 characters there)."""
    return f"{os.getpid()}-{secrets.token_hex(2)}@{socket.gethostname()}"


class Leadership:
    """One worker's part in the election: whether it leads now, and waiting until it does."""

    def __init__(
        self, store: Store, settings: Settings, worker_id: str, reaches_redis: Callable[[], bool]
    ) -> None:
        self._store = store
        self._lease_s = settings.background_lease_s
        self.worker_id = worker_id
        self._reaches_redis = reaches_redis
        self._leading_until = 0.0  # monotonic: past it, this worker does not lead (unless renewed)
        self._gained = asyncio.Event()  # set, and replaced, whenever this worker becomes the leader
        self._wake = asyncio.Event()  # a leader stepped down: try now
        self.leader_id: str | None = None  # the holder as last seen
        self.term = 0  # its term as last seen
        self._gauge = metrics.BACKGROUND_LEADER
        self._gauge.set(0)

    @property
    def lease_s(self) -> float:
        return self._lease_s

    @property
    def renew_interval_s(self) -> float:
        return self._lease_s / 3

    @property
    def leading(self) -> bool:
        """Whether this worker leads now, by its own clock (a lease it could not renew in time is over)."""
        return time.monotonic() < self._leading_until

    async def until_leading(self) -> None:
        """Return once this worker leads (at once if it does)."""
        while not self.leading:
            gained = self._gained
            if self.leading:
                return
            await gained.wait()

    def stepped_down(self, _payload: str) -> None:
        """A leader released the lease (LEADER_CHANNEL): try to take over now."""
        self._wake.set()

    async def claim(self) -> float:
        """Take or renew the lease (one statement); the seconds left on the lease of whoever holds it."""
        sent_at = time.monotonic()
        async with self._store.connection("claim_background_leader") as conn:
            record = await conn.fetchrow(
                sql.CLAIM_BACKGROUND_LEADER, self.worker_id, self._lease_s, self._reaches_redis()
            )
        if record is None:  # another worker inserted the row in the same instant: not visible yet
            self._set_leading_until(0.0)
            return self.renew_interval_s
        was_leading = self.leading
        holder: str = record["holder"]
        self.leader_id, self.term = holder, record["term"]
        if holder == self.worker_id:
            self._set_leading_until(sent_at + self._lease_s)
            if not was_leading:
                log.info(
                    "this worker now runs the background work (term %d)", self.term, extra={"term": self.term}
                )
                self._gained.set()
                self._gained = asyncio.Event()
        else:
            self._set_leading_until(0.0)
            if was_leading:
                log.warning("background work handed over to %s", holder, extra={"leader": holder})
        expires_in_s: float = record["expires_in_s"]
        return expires_in_s

    def _set_leading_until(self, until: float) -> None:
        self._leading_until = until
        self._gauge.set(1 if until > time.monotonic() else 0)

    async def run(self) -> None:
        """Renew while leading, else try when the lease seen ends, until cancelled."""
        while True:
            delay_s = self.renew_interval_s
            try:
                expires_in_s = await self.claim()
                if not self.leading:
                    delay_s = min(max(expires_in_s, 0.0) + TAKEOVER_MARGIN_S, self._lease_s)
            except BackendUnavailable as exc:
                log.debug("background leader: database unavailable (%s)", exc.__cause__)
            except Exception:  # anything else must not end the election for the life of the worker
                log.exception("background leader: claim failed")
            self._set_leading_until(self._leading_until)  # the gauge, as the clock has it now
            self._wake.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay_s)

    async def release(self) -> None:
        """On a clean stop, once the leader's work has stopped: end the lease now and tell the other
        workers, so that one takes over at once rather than after the lease."""
        if self.leader_id != self.worker_id:
            return
        self._set_leading_until(0.0)
        self.leader_id = None
        try:
            async with (
                asyncio.timeout(RELEASE_TIMEOUT_S),
                self._store.connection("release_background_leader") as conn,
            ):
                await conn.execute(sql.RELEASE_BACKGROUND_LEADER, self.worker_id, sql.LEADER_CHANNEL)
        except (BackendUnavailable, TimeoutError) as exc:
            log.info("background leadership not released (its lease runs out instead): %r", exc)
