"""PostgreSQL access for webhooks: the endpoints, and the deliveries owed to them (claimed under a lease,
their outcomes recorded, counted). The named queries of queries.sql, over the Store's pool. The deliveries
themselves are made by the sequencer, in the transaction that numbers their events (gateway.hold_events)."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway import sql
from gateway.store import Store


@dataclass(frozen=True, slots=True)
class EndpointRow:
    id: str
    url: str
    secret: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EndpointSummary:
    id: str
    url: str
    created_at: datetime
    pending: int
    delivered: int
    failed: int
    last_delivered_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery leased to this worker for one attempt."""

    endpoint_id: str
    event_id: int
    attempt: int  # this attempt's number, from 1; the lease's token
    occurred_at: datetime
    url: str
    secret: str
    # The event as the feed keeps it; type None when it is no longer kept (purged).
    type: str | None
    hold_id: str | None
    hold: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class WebhookCounts:
    endpoints: int
    pending: int
    failed: int
    delivered: int
    oldest_pending_at: datetime | None  # when the event of the oldest pending delivery occurred
    db_now: datetime


class WebhookStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create_endpoint(self, endpoint_id: str, url: str, secret: str) -> EndpointRow:
        """A new endpoint, created under the sequencer's lock (see lock_sequencer)."""
        async with self._store.connection("insert_webhook_endpoint") as conn, conn.transaction():
            await conn.execute(sql.LOCK_SEQUENCER, sql.SEQUENCER_LOCK_KEY)
            record = await conn.fetchrow(sql.INSERT_WEBHOOK_ENDPOINT, endpoint_id, url, secret)
        assert record is not None
        return EndpointRow(record["id"], record["url"], record["secret"], record["created_at"])

    async def list_endpoints(self) -> list[EndpointSummary]:
        async with self._store.connection("list_webhook_endpoints") as conn:
            records = await conn.fetch(sql.LIST_WEBHOOK_ENDPOINTS)
        return [
            EndpointSummary(
                id=r["id"],
                url=r["url"],
                created_at=r["created_at"],
                pending=r["pending"],
                delivered=r["delivered"],
                failed=r["failed"],
                last_delivered_at=r["last_delivered_at"],
                last_error=r["last_error"],
                last_error_at=r["last_error_at"],
            )
            for r in records
        ]

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        async with self._store.connection("delete_webhook_endpoint") as conn:
            return await conn.fetchval(sql.DELETE_WEBHOOK_ENDPOINT, endpoint_id) is not None

    async def redeliver(self, endpoint_id: str, after: int | None) -> int | None:
        """How many deliveries this made pending; None for an unknown endpoint (see redeliver_webhooks)."""
        async with self._store.connection("redeliver_webhooks") as conn:
            record = await conn.fetchrow(sql.REDELIVER_WEBHOOKS, endpoint_id, after)
        assert record is not None
        return record["redelivered"] if record["found"] else None

    async def claim(
        self,
        limit: int,
        in_flight: Mapping[str, int],
        per_endpoint: int,
        lease_s: float,
        due_for_s: float = 0.0,
    ) -> list[ClaimedDelivery]:
        """Lease up to `limit` deliveries due for `due_for_s` at least, at most `per_endpoint` in flight to
        one endpoint counting `in_flight` (endpoint id -> deliveries this worker is sending to it)."""
        async with self._store.connection("claim_webhook_deliveries") as conn:
            records = await conn.fetch(
                sql.CLAIM_WEBHOOK_DELIVERIES,
                limit,
                list(in_flight),
                list(in_flight.values()),
                per_endpoint,
                lease_s,
                due_for_s,
            )
        return [
            ClaimedDelivery(
                endpoint_id=r["endpoint_id"],
                event_id=r["event_id"],
                attempt=r["attempts"],
                occurred_at=r["occurred_at"],
                url=r["url"],
                secret=r["secret"],
                type=r["type"],
                hold_id=r["hold_id"],
                hold=r["hold"],
            )
            for r in records
        ]

    async def delivered(self, endpoint_id: str, event_id: int) -> float | None:
        """Record a 2xx; the seconds from the event to now by the database's clock (None: the row was
        gone)."""
        async with self._store.connection("webhook_delivered") as conn:
            latency_s: float | None = await conn.fetchval(sql.WEBHOOK_DELIVERED, endpoint_id, event_id)
        return latency_s

    async def attempt_failed(
        self,
        delivery: ClaimedDelivery,
        *,
        retry_in_s: float,
        window_s: int,
        status: int | None,
        error: str,
    ) -> str | None:
        """Record an attempt without a 2xx: 'pending' (due again in `retry_in_s`) or 'failed' (past the
        window); None if the lease was no longer this attempt's."""
        async with self._store.connection("webhook_attempt_failed") as conn:
            outcome: str | None = await conn.fetchval(
                sql.WEBHOOK_ATTEMPT_FAILED,
                delivery.endpoint_id,
                delivery.event_id,
                delivery.attempt,
                retry_in_s,
                window_s,
                status,
                error,
            )
        return outcome

    async def counts(self) -> WebhookCounts:
        async with self._store.connection("webhook_stats") as conn:
            record = await conn.fetchrow(sql.WEBHOOK_STATS)
        assert record is not None
        return WebhookCounts(
            endpoints=record["endpoints"],
            pending=record["pending"],
            failed=record["failed"],
            delivered=record["delivered"],
            oldest_pending_at=record["oldest_pending_at"],
            db_now=record["db_now"],
        )

    async def purge(self, older_than_s: int, batch_size: int) -> int:
        """Delete up to `batch_size` failed deliveries of events older than `older_than_s`."""
        async with self._store.connection("purge_webhook_deliveries") as conn:
            purged: int = await conn.fetchval(sql.PURGE_WEBHOOK_DELIVERIES, older_than_s, batch_size)
        return purged
