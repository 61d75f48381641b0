"""Request and response bodies: msgspec Structs, with the contract's limits declared on the types."""

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

# Patterns use \A and \Z: `$` would let a trailing newline through.
Identifier = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=r"\A[A-Za-z0-9._:~-]+\Z",
        description="1 to 128 characters from [A-Za-z0-9._:~-]",
    ),
]
# Printable: no control characters (C0, DEL, C1), no line/paragraph separators, no lone surrogates.
Holder = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern="\\A[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\ud800-\\udfff]+\\Z",
        description="1 to 128 printable characters",
    ),
]
IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=255, pattern=r"\A[\x20-\x7e]+\Z")]

HoldStatus = Literal["held", "confirmed", "cancelled", "expired"]
SlotStateName = Literal["free", "held", "confirmed"]


class Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every request body: unknown fields are an error, not silently dropped."""


class CreateHold(Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    event_id: Identifier
    slots: Annotated[list[Identifier], Meta(min_length=1)]
    holder: Holder
    ttl_seconds: int | None = None


class HolderAction(Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    holder: Holder


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    event_id: str
    slots: list[str]
    holder: str
    status: HoldStatus
    created_at: datetime
    expires_at: datetime
    ttl_ms: int | None
    confirmed_at: datetime | None
    cancelled_at: datetime | None


class SlotState(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    slot_id: str
    state: SlotStateName
    hold_id: str | None
    expires_at: datetime | None
    ttl_ms: int | None


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ok"]


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    database: Literal["up", "down"]
    redis: Literal["up", "down"]
    mode: Literal["redis-front", "db-only"]
