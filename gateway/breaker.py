"""A circuit breaker with a single-probe half-open state, on the monotonic clock; one per backend.

Closed: calls go through. Open: calls are refused at once until `retry_interval_s` has passed. Then half-open:
exactly one caller gets to probe; its success closes the breaker, its failure reopens it. So a backend that
comes back sees one probe per worker per interval, never the whole backlog of waiting requests at once.
(pybreaker and aiobreaker count failures and let every call through in half-open state, or are not asyncio;
this is the little the gateway needs.)
"""

import logging
import time
from collections.abc import Callable

from gateway import metrics

log = logging.getLogger(__name__)


class CircuitBreaker:
    def __init__(
        self,
        backend: str,
        retry_interval_s: float,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.backend = backend
        self._retry_interval_s = retry_interval_s
        self._on_change = on_change  # called with the new is_closed on each change of state
        self._opened_at: float | None = None
        self._probe_in_flight = False
        # Why the breaker is open: the last failure, for /ready, /v1/stats and the logs.
        self.reason: str | None = None
        self._probes = metrics.BREAKER_PROBES.labels(backend)
        self._opens = metrics.BREAKER_OPENS.labels(backend)

    @property
    def is_closed(self) -> bool:
        return self._opened_at is None

    def allow(self) -> bool:
        """Whether this call may use the backend; in half-open state only the first caller gets True."""
        if self._opened_at is None:
            return True
        if self._probe_in_flight or time.monotonic() - self._opened_at < self._retry_interval_s:
            return False
        self._probe_in_flight = True
        self._probes.inc()
        return True

    def record_success(self) -> None:
        if self._opened_at is not None:
            log.info("%s is back", self.backend, extra={"backend": self.backend})
            self._opened_at = None
            self.reason = None
            if self._on_change is not None:
                self._on_change(True)
        self._probe_in_flight = False

    def release_probe(self) -> None:
        """The probe never reached the backend (local overload): let the next call probe instead."""
        self._probe_in_flight = False

    def record_failure(self, reason: str) -> None:
        was_closed = self._opened_at is None
        self._opened_at = time.monotonic()
        self._probe_in_flight = False
        self.reason = reason
        if was_closed:
            log.warning("%s unavailable: %s", self.backend, reason, extra={"backend": self.backend})
            self._opens.inc()
            if self._on_change is not None:
                self._on_change(False)
