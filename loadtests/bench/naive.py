"""The naive baseline: what most booking services do. Litestar on uvicorn (uvloop, httptools), an asyncpg
pool, and for every hold request ONE transaction that locks the slot's row:

    BEGIN; SELECT status, expires_at FROM naive_slots WHERE event_id=$1 AND slot_id=$2 FOR UPDATE;
    -> held and unexpired: 409 problem+json;  else UPDATE naive_slots ...; INSERT INTO naive_holds ...; COMMIT

Every slot has a row beforehand (the benchmark seeds them, see seed_slots); an unknown slot is inserted
(ON CONFLICT DO NOTHING) and then locked. One slot per hold: the benchmark's requests ask for one.

    NAIVE_DATABASE_URL=postgresql://... python -m loadtests.bench.naive --port 8002 --workers 2
"""

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State

from gateway.models import CreateHold, HolderAction
from loadtests.bench.bare import problem, serve_from_command_line

DATABASE_URL_ENV = "NAIVE_DATABASE_URL"  # not GATEWAY_*: this is not the gateway
DEFAULT_TTL_S = 300  # the gateway's default
# The gateway's pool sizes per worker (GATEWAY_DB_POOL_MIN_SIZE / _MAX_SIZE defaults).
POOL_MIN_SIZE = 2
POOL_MAX_SIZE = 20

SCHEMA = """
CREATE TABLE naive_slots (
    event_id   text NOT NULL,
    slot_id    text NOT NULL,
    status     text NOT NULL DEFAULT 'free',   -- free | held | confirmed
    hold_id    text,
    expires_at timestamptz,
    PRIMARY KEY (event_id, slot_id)
);
CREATE TABLE naive_holds (
    id           text PRIMARY KEY,
    event_id     text NOT NULL,
    slot_id      text NOT NULL,
    holder       text NOT NULL,
    status       text NOT NULL,                -- held | confirmed
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    confirmed_at timestamptz
);
"""
SEED_SLOTS = """
INSERT INTO naive_slots (event_id, slot_id)
SELECT $1, $2 || n FROM generate_series(1, $3::int) AS n
ON CONFLICT DO NOTHING
"""
LOCK_SLOT = "SELECT status, expires_at FROM naive_slots WHERE event_id = $1 AND slot_id = $2 FOR UPDATE"
INSERT_SLOT = "INSERT INTO naive_slots (event_id, slot_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
TAKE_SLOT = """
UPDATE naive_slots SET status = 'held', hold_id = $3, expires_at = now() + $4 * interval '1 second'
WHERE event_id = $1 AND slot_id = $2
"""
INSERT_HOLD = """
INSERT INTO naive_holds (id, event_id, slot_id, holder, status, expires_at)
VALUES ($1, $2, $3, $4, 'held', now() + $5 * interval '1 second')
RETURNING created_at, expires_at
"""
LOCK_HOLD = """
SELECT id, event_id, slot_id, holder, status, created_at, expires_at, confirmed_at
FROM naive_holds WHERE id = $1 FOR UPDATE
"""
CONFIRM_HOLD = (
    "UPDATE naive_holds SET status = 'confirmed', confirmed_at = now() WHERE id = $1 RETURNING confirmed_at"
)
CONFIRM_SLOT = """
UPDATE naive_slots SET status = 'confirmed' WHERE event_id = $1 AND slot_id = $2 AND hold_id = $3
"""

_CREATE = msgspec.json.Decoder(CreateHold)
_CONFIRM = msgspec.json.Decoder(HolderAction)


class NaiveHold(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    event_id: str
    slots: list[str]
    holder: str
    status: str
    created_at: datetime
    expires_at: datetime
    confirmed_at: datetime | None = None


async def create_schema(conn: asyncpg.Connection) -> None:
    await conn.execute(SCHEMA)


async def seed_slots(conn: asyncpg.Connection, event_id: str, prefix: str, count: int) -> None:
    """Rows for slots <prefix>1 .. <prefix><count> of an event."""
    await conn.execute(SEED_SLOTS, event_id, prefix, count)


@post("/v1/holds", status_code=201)
async def create_hold(request: Request[None, None, State], state: State) -> Response[object]:
    try:
        body = _CREATE.decode(await request.body())
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return problem(422, "invalid-request", "Invalid request", str(exc))
    if len(body.slots) != 1:
        return problem(
            422, "invalid-request", "Invalid request", "the naive baseline holds one slot at a time"
        )
    slot_id, ttl_s = body.slots[0], body.ttl_seconds or DEFAULT_TTL_S
    pool: asyncpg.Pool = state.pool
    async with pool.acquire() as conn, conn.transaction():
        slot = await conn.fetchrow(LOCK_SLOT, body.event_id, slot_id)
        if slot is None:
            await conn.execute(INSERT_SLOT, body.event_id, slot_id)
            slot = await conn.fetchrow(LOCK_SLOT, body.event_id, slot_id)
        if slot["status"] == "confirmed" or (slot["status"] == "held" and slot["expires_at"] > _now()):
            return problem(
                409,
                "slot-unavailable",
                "Slot unavailable",
                "1 of the requested slots are taken",
                conflicts=[slot_id],
            )
        hold_id = secrets.token_urlsafe(16)
        await conn.execute(TAKE_SLOT, body.event_id, slot_id, hold_id, ttl_s)
        created = await conn.fetchrow(INSERT_HOLD, hold_id, body.event_id, slot_id, body.holder, ttl_s)
    hold = NaiveHold(
        id=hold_id,
        event_id=body.event_id,
        slots=[slot_id],
        holder=body.holder,
        status="held",
        created_at=created["created_at"],
        expires_at=created["expires_at"],
    )
    return Response(hold, status_code=201, headers={"Location": f"/v1/holds/{hold_id}"})


@post("/v1/holds/{hold_id:str}/confirm", status_code=200)
async def confirm_hold(request: Request[None, None, State], state: State, hold_id: str) -> Response[object]:
    try:
        body = _CONFIRM.decode(await request.body())
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return problem(422, "invalid-request", "Invalid request", str(exc))
    pool: asyncpg.Pool = state.pool
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(LOCK_HOLD, hold_id)
        if row is None:
            return problem(404, "hold-not-found", "Hold not found", "No hold has this id.")
        if row["holder"] != body.holder:
            return problem(403, "not-holder", "Not the holder", "The hold belongs to another holder.")
        confirmed_at = row["confirmed_at"]
        if row["status"] != "confirmed":
            if row["status"] != "held" or row["expires_at"] <= _now():
                return problem(409, "invalid-transition", "Invalid transition", "the hold has expired")
            confirmed_at = await conn.fetchval(CONFIRM_HOLD, hold_id)
            await conn.execute(CONFIRM_SLOT, row["event_id"], row["slot_id"], hold_id)
    hold = NaiveHold(
        id=hold_id,
        event_id=row["event_id"],
        slots=[row["slot_id"]],
        holder=row["holder"],
        status="confirmed",
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        confirmed_at=confirmed_at,
    )
    return Response(hold, status_code=200)


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def _now() -> datetime:
    return datetime.now(UTC)


def create_app() -> Litestar:
    """The uvicorn factory each worker calls; the DSN comes from NAIVE_DATABASE_URL."""
    dsn = os.environ[DATABASE_URL_ENV]

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # asyncpg's defaults otherwise (its reset query on release included), as a typical service has them.
        async with asyncpg.create_pool(dsn, min_size=POOL_MIN_SIZE, max_size=POOL_MAX_SIZE) as pool:
            app.state.pool = pool
            yield

    return Litestar(
        route_handlers=[create_hold, confirm_hold, health],
        lifespan=[lifespan],
        debug=False,
        logging_config=None,
    )


if __name__ == "__main__":
    serve_from_command_line("loadtests.bench.naive", __doc__)
