"""Request and response bodies: msgspec Structs, with the contract's limits declared on the types."""

import base64
import binascii
import re
import secrets
import unicodedata
import urllib.parse
from datetime import datetime
from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta
from msgspec.structs import force_setattr

# The one definition of event and slot ids: the body types, the path checks (api/), the /ops page (served
# by api/ops.py) all read it from here.
IDENTIFIER_CHARACTERS = "A-Za-z0-9._:~-"  # the body of a regex character class
IDENTIFIER_MAX_LENGTH = 128
IDENTIFIER_DESCRIPTION = f"1 to {IDENTIFIER_MAX_LENGTH} characters from [{IDENTIFIER_CHARACTERS}]"
# Patterns use \A and \Z: `$` would let a trailing newline through.
IDENTIFIER_PATTERN = rf"\A[{IDENTIFIER_CHARACTERS}]+\Z"
# The same grammar, lengths included, for JavaScript (the /ops page): there `$` (no m flag) ends the text.
IDENTIFIER_PATTERN_JS = f"^[{IDENTIFIER_CHARACTERS}]{{1,{IDENTIFIER_MAX_LENGTH}}}$"
_IDENTIFIER_RE = re.compile(rf"\A[{IDENTIFIER_CHARACTERS}]{{1,{IDENTIFIER_MAX_LENGTH}}}\Z")

Identifier = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=IDENTIFIER_MAX_LENGTH,
        pattern=IDENTIFIER_PATTERN,
        description=IDENTIFIER_DESCRIPTION,
    ),
]


def new_id(random_bytes: int) -> str:
    """An id the gateway makes (holds, client keys, webhook endpoints): `random_bytes` random bytes, URL-safe
    base64, never starting with '-' (a command line would take `gateway webhooks --redeliver -x…` for an
    option): one value in 64 is drawn again."""
    while (made := secrets.token_urlsafe(random_bytes)).startswith("-"):
        pass
    return made


def is_identifier(value: str) -> bool:
    """Whether `value` is an event or slot id (for ids that arrive outside a body: paths, query strings)."""
    return _IDENTIFIER_RE.match(value) is not None


# The one definition of a holder: holder_text() below, which every body with a holder runs on decode
# (__post_init__) and the holds listing runs on its query parameter. A msgspec pattern cannot name Unicode
# categories, so the type only documents the rule.
HOLDER_MAX_LENGTH = 128
HOLDER_DESCRIPTION = (
    f"1 to {HOLDER_MAX_LENGTH} characters after NFC normalization, none of them a control, format, "
    "surrogate, private-use, unassigned or separator character (Unicode categories C* and Z*) other than the "
    "space U+0020; stored, compared and returned NFC-normalized"
)
Holder = Annotated[
    str,
    Meta(description=HOLDER_DESCRIPTION, extra_json_schema={"minLength": 1, "maxLength": HOLDER_MAX_LENGTH}),
]
# What each refused category is, for the 422's detail.
_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "a format character",
    "Cs": "a surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
    "Zs": "a space other than U+0020",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


def holder_text(value: str, field: str = "holder") -> str:
    """The holder as stored, compared and returned: `value` NFC-normalized, so that two holders that look
    alike are one string or refused (ValueError naming `field` and the first character refused). Also the
    rule for other names people read, such as a client key's."""
    text = unicodedata.normalize("NFC", value)  # the input itself, after a quick check, when already NFC
    # str.isprintable() is false exactly for the categories C* and Z* other than U+0020: the rule, in C.
    if not text.isprintable():
        char = next(c for c in text if not c.isprintable())
        name = unicodedata.name(char, "")
        shown = f"U+{ord(char):04X} ({name})" if name else f"U+{ord(char):04X}"
        kind = _REFUSED_CATEGORIES.get(unicodedata.category(char), "not printable")
        raise ValueError(f"`{field}` contains {shown}, {kind}")
    if not 1 <= len(text) <= HOLDER_MAX_LENGTH:
        detail = f"must be 1 to {HOLDER_MAX_LENGTH} characters after NFC normalization, got {len(text)}"
        raise ValueError(f"`{field}` {detail}")
    return text


IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=255, pattern=r"\A[\x20-\x7e]+\Z")]

HoldStatus = Literal["held", "confirmed", "cancelled", "expired"]
HOLD_STATUSES: tuple[HoldStatus, ...] = get_args(HoldStatus)
LIVE_HOLD_STATUS: HoldStatus = (
    "held"  # a hold whose slots are taken until it expires, is confirmed or cancelled
)
SlotStateName = Literal["free", "held", "confirmed", "blocked"]
SLOT_STATES: tuple[SlotStateName, ...] = get_args(SlotStateName)


class Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every request body: unknown fields are an error, not silently dropped."""


# A hold's items: at most this many per hold.
MAX_ITEMS_PER_HOLD = 20
# A pool's capacity, a quantity and a limit: at most this many units (Postgres counts them in integers).
MAX_UNITS = 10_000_000


class HoldItem(Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One item of a hold: seats of an event (`slots`), or a quantity of one of its pools, never both."""

    event_id: Identifier
    slots: Annotated[list[Identifier], Meta(min_length=1)] | None = None
    pool_id: Identifier | None = None
    quantity: Annotated[int, Meta(ge=1, le=MAX_UNITS)] | None = None

    def __post_init__(self) -> None:
        if self.slots is not None:
            if self.pool_id is not None or self.quantity is not None:
                raise ValueError("an item has `slots` or `pool_id` and `quantity`, never both")
        elif self.pool_id is None or self.quantity is None:
            raise ValueError("an item needs `slots`, or `pool_id` and `quantity`")


class CreateHold(Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new hold: one event's seats (`event_id` and `slots`), or `items` (1 to 20, all granted or none)."""

    holder: Holder
    ttl_seconds: int | None = None
    event_id: Identifier | None = None
    slots: Annotated[list[Identifier], Meta(min_length=1)] | None = None
    items: Annotated[list[HoldItem], Meta(min_length=1, max_length=MAX_ITEMS_PER_HOLD)] | None = None

    def __post_init__(self) -> None:
        force_setattr(self, "holder", holder_text(self.holder))
        if self.items is not None:
            if self.event_id is not None or self.slots is not None:
                raise ValueError("`items` cannot be mixed with `event_id` and `slots`")
        elif self.event_id is None or self.slots is None:
            raise ValueError("a hold needs `event_id` and `slots`, or `items`")

    @property
    def all_items(self) -> list[HoldItem]:
        """The request as items (the one-event form is one item)."""
        if self.items is not None:
            return self.items
        assert self.event_id is not None
        assert self.slots is not None
        return [HoldItem(event_id=self.event_id, slots=self.slots)]


class HolderAction(Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    holder: Holder

    def __post_init__(self) -> None:
        force_setattr(self, "holder", holder_text(self.holder))


class ExtendHold(HolderAction, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An extension: the hold's new expiry is now + `ttl_seconds` (the creation's range), which may be earlier
    than its current one, and never past created_at + max_hold_lifetime_s."""

    ttl_seconds: Annotated[
        int, Meta(description="seconds from now, by the database's clock (GATEWAY_MIN_TTL_S to _MAX_TTL_S)")
    ]


class HoldItemView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An item of a hold as shown: {event_id, slots} or {event_id, pool_id, quantity}."""

    event_id: str
    slots: list[str] | None = None
    pool_id: str | None = None
    quantity: int | None = None


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    event_id: str | None  # null when the hold spans several events
    slots: list[str]  # the seats of its one event; [] for a pool-only hold or one spanning several events
    items: list[HoldItemView]  # by event, seats before pools
    holder: str
    status: HoldStatus
    created_at: datetime
    expires_at: datetime
    ttl_ms: int | None
    confirmed_at: datetime | None
    cancelled_at: datetime | None
    extensions: int  # times its expiry was moved (POST /v1/holds/{id}/extend)


HoldEventType = Literal["hold.created", "hold.extended", "hold.confirmed", "hold.cancelled", "hold.expired"]
HOLD_EVENT_TYPES: tuple[HoldEventType, ...] = get_args(HoldEventType)


class HoldEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A state change of a hold: the feed's items and a webhook's body."""

    id: int  # its position in the feed: ids increase in commit order
    type: HoldEventType
    occurred_at: datetime
    hold: Hold  # as GET /v1/holds/{id} showed it just after the change (ttl_ms as of occurred_at)


class HoldEventPage(msgspec.Struct, frozen=True, kw_only=True):
    events: list[HoldEvent]
    # Pass as `after` for the next page (the last event's id; `after` itself when there was none).
    next_cursor: str


class SlotState(msgspec.Struct, frozen=True, kw_only=True):
    """One slot as anyone may see it: its state and times, never a hold id or a holder (a hold id lets its
    holder's client key confirm and cancel it, so only that key and operations ever see it)."""

    event_id: str
    slot_id: str
    state: SlotStateName
    expires_at: datetime | None
    ttl_ms: int | None


class NewClientKeyBody(Body, frozen=True):
    """What to call a new client key (the frontend or integration that will use it)."""

    name: Holder  # the holder's rule: what people read must not imitate something else

    def __post_init__(self) -> None:
        force_setattr(self, "name", holder_text(self.name, "name"))


class ClientKeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A client key as listed: never the key itself, which is stored only as a digest."""

    id: str
    name: str
    created_at: datetime


class NewClientKey(msgspec.Struct, frozen=True, kw_only=True):
    """A client key just created: `key` is shown this once."""

    id: str
    name: str
    key: str
    created_at: datetime


class ClientKeyList(msgspec.Struct, frozen=True, kw_only=True):
    client_keys: list[ClientKeyInfo]


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """An error, as application/problem+json (RFC 9457); documents the error bodies in the OpenAPI."""

    type: str  # /problems/<slug>
    title: str
    status: int
    detail: str  # for a bad request, names the field or header first
    conflicts: list[str] | None = None  # slot-unavailable: the requested seats that are taken or blocked
    # slot-unavailable: every seat ({event_id, slot_id}) and pool ({event_id, pool_id, requested, available})
    # that could not be granted
    unavailable: list[dict[str, str | int]] | None = None
    current_status: HoldStatus | None = None  # invalid-transition: the hold's status
    # lifetime-exceeded: the latest expires_at an extension may give the hold, its created_at +
    # max_hold_lifetime_s
    max_expires_at: datetime | None = None


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ok"]


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    database: Literal["up", "down"]
    redis: Literal["up", "down"]
    mode: Literal["redis-front", "db-only"]
    # Why the gateway is in db-only mode: Redis not configured, or its last failure.
    mode_reason: str | None = None
    # Whether hold routes need a client key ("required": one exists), or anyone may call them ("open");
    # "unknown" until this worker has first read the keys (hold routes answer 503 meanwhile).
    client_keys: Literal["required", "open", "unknown"] = "unknown"


Mode = Literal["redis-front", "db-only"]


class HoldPage(msgspec.Struct, frozen=True, kw_only=True):
    holds: list[Hold]
    # Pass as `cursor` for the next page; null on the last page.
    next_cursor: str | None


class SeatMapSlot(SlotState, frozen=True, kw_only=True):
    """A slot on the operations seat map: with the id of the hold on it."""

    hold_id: str | None


class SlotPage(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    slots: list[SeatMapSlot]
    next_cursor: str | None


class HoldCounts(msgspec.Struct, frozen=True, kw_only=True):
    active: int  # held and not yet expired
    confirmed: int
    confirmed_slots: int
    expiring_within_10s: int
    expiring_within_60s: int
    expired_last_minute: int


class SweeperLag(msgspec.Struct, frozen=True, kw_only=True):
    # How far past its expiry the oldest held row is that the sweeper has not marked yet; 0 when caught up.
    lag_ms: int
    oldest_lapsed_expires_at: datetime | None


class RoundTrips(msgspec.Struct, frozen=True, kw_only=True):
    postgres_ms: float | None  # null: it did not answer
    redis_ms: float | None


class Agreement(msgspec.Struct, frozen=True, kw_only=True):
    """Live slots in Postgres compared with the leases in Redis (at most `agreement_sample_size` slots)."""

    checked_slots: int
    complete: bool  # false when there were more live slots than were checked
    leased: int  # Redis holds the lease of the hold Postgres has
    missing: int  # no lease: harmless, the next rival asks Postgres, which puts the lease back
    other_token: int  # a lease of another hold: Redis would turn away requests Postgres would too, or lie


class Counters(msgspec.Struct, frozen=True, kw_only=True):
    """Totals since the gateway started, over all its workers and all events."""

    holds_created: int
    rejected_by_redis: int
    rejected_by_postgres: int
    holds_confirmed: int
    holds_cancelled: int
    holds_expired: int
    # Hold requests refused, by reason (whichever layer refused them): a seat taken by another hold, a pool
    # sold out, the holder's limit in the event, a seat blocked. One field per metrics.REJECTION_REASONS.
    rejected_taken: int
    rejected_sold_out: int
    rejected_holder_limit: int
    rejected_blocked: int


class BackgroundRole(msgspec.Struct, frozen=True, kw_only=True):
    """Who runs the database's background work (the sweeper, the hold event sequencer, the outbox drains): one
    worker, elected through Postgres; as the worker that answered knows it."""

    worker_id: str  # the worker that answered (pid-random@host; Postgres shows it in application_name)
    leader: bool  # whether that worker is the leader now
    leader_id: str | None  # the leader as that worker last saw it (a lease ago at most)
    term: int  # the leader's term: it grows by one at each handover


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str | None  # null: all events
    mode: Mode
    mode_reason: str | None  # why the gateway is in db-only mode
    holds: HoldCounts
    sweeper: SweeperLag
    round_trip_ms: RoundTrips
    agreement: Agreement | None  # null when Redis is not in use or did not answer
    counters: Counters
    background: BackgroundRole
    generated_at: datetime  # by the database's clock
    # Webhook deliveries over every endpoint (the stats of all events; null in one event's).
    webhooks: "WebhookStats | None" = None


class PoolDefinition(Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pool_id: Identifier
    capacity: Annotated[int, Meta(ge=0, le=MAX_UNITS)]


class Limits(Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # A holder's live units (held and not lapsed, or confirmed) in the event, at most; null: no limit.
    per_holder: Annotated[int, Meta(ge=1, le=MAX_UNITS)] | None = None
    # Units of the event in one hold, at most; null: only max_slots_per_hold.
    per_hold: Annotated[int, Meta(ge=1, le=MAX_UNITS)] | None = None


# Per event, at most.
MAX_SEATS_PER_EVENT = 100_000
MAX_POOLS_PER_EVENT = 100


class InventoryBody(Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An event's whole inventory; a field left out is empty (no seats, no pools, no limits)."""

    seats: Annotated[list[Identifier], Meta(max_length=MAX_SEATS_PER_EVENT)] = msgspec.field(
        default_factory=list
    )
    pools: Annotated[list[PoolDefinition], Meta(max_length=MAX_POOLS_PER_EVENT)] = msgspec.field(
        default_factory=list
    )
    limits: Limits = msgspec.field(default_factory=Limits)


class PoolCapacity(msgspec.Struct, frozen=True, kw_only=True):
    pool_id: str
    capacity: int


class BlockedSeat(msgspec.Struct, frozen=True, kw_only=True):
    seat_id: str
    reason: str
    blocked_at: datetime


class InventorySummary(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    seats_total: int
    pools: list[PoolCapacity]
    limits: Limits


class Inventory(InventorySummary, frozen=True, kw_only=True):
    """An event's inventory as defined: its seats (sorted), pools, limits, and the seats blocked now."""

    seats: list[str]
    blocked: list[BlockedSeat]


class SeatsBody(Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Seats to block or unblock, all or none; `reason` is kept with a block (the first one, if repeated)."""

    seats: Annotated[list[Identifier], Meta(min_length=1, max_length=MAX_SEATS_PER_EVENT)]
    reason: Annotated[str, Meta(max_length=500)] | None = None


class SeatsChanged(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    changed: int  # seats whose state this call changed (0 when repeated)
    blocked_total: int


class SeatCounts(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    free: int
    held: int
    confirmed: int
    blocked: int


class PoolAvailability(msgspec.Struct, frozen=True, kw_only=True):
    pool_id: str
    capacity: int
    available: int
    held: int
    confirmed: int
    # The earliest expires_at of a live held hold in the pool: when units may come back; null if none.
    next_release_at: datetime | None


class Availability(msgspec.Struct, frozen=True, kw_only=True):
    """What is left of an event, as anyone may see it (never holders); at most a second old (`as_of`)."""

    event_id: str
    as_of: datetime
    seats: SeatCounts
    pools: list[PoolAvailability]
    limits: Limits


class StreamSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A live stream's `snapshot` message: the event as it is. The first message of a stream (unless it
    resumed), and again whenever the stream must start over (it fell behind, or the inventory changed)."""

    event_id: str
    # As GET /v1/events/{event_id}/availability shows it; null for an event without an inventory.
    availability: Availability | None
    # The seats that are not free (held, confirmed, blocked), by seat id; a seat not listed is free.
    seats: dict[str, SlotStateName]


class StreamChanges(msgspec.Struct, frozen=True, kw_only=True):
    """A live stream's `changes` message: what changed since the message before it."""

    event_id: str
    # The seats whose state changed, with their state now (`free` included).
    seats: dict[str, SlotStateName]
    # Every pool of the event, as the availability shows them, when any pool's counts changed; else [].
    pools: list[PoolAvailability]


# ---- Webhooks: endpoints that receive every hold event (Standard Webhooks) ----

WEBHOOK_URL_MAX_LENGTH = 2048
WEBHOOK_URL_SCHEMES = ("http", "https")
# Standard Webhooks' secret: `whsec_` and the base64 of 24 to 64 random bytes.
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a format's prefix, not a secret
WEBHOOK_SECRET_BYTES = (24, 64)
_WEBHOOK_SECRET_RULE = (
    f"`secret` must be `{WEBHOOK_SECRET_PREFIX}` followed by the base64 of {WEBHOOK_SECRET_BYTES[0]} to "
    f"{WEBHOOK_SECRET_BYTES[1]} random bytes"
)
_WEBHOOK_SECRET_DESCRIPTION = (
    _WEBHOOK_SECRET_RULE.removeprefix("`secret` must be ") + "; generated when left out"
)


def webhook_url(value: str) -> str:
    """The endpoint URL as given, if deliveries can be sent to it: http or https, with a host (ValueError
    naming `url` otherwise). No whitespace or control characters: what is stored is what is shown and
    asked."""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("`url` must not contain whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port  # a port that is not a number, or out of range, raises here
    except ValueError as exc:
        raise ValueError(f"`url` is not a URL: {exc}") from None
    if parts.scheme.lower() not in WEBHOOK_URL_SCHEMES:
        raise ValueError(f"`url` must be an http or https URL, got scheme {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise ValueError("`url` must name a host")
    if port == 0:
        raise ValueError("`url` must not name port 0")
    return value


def webhook_secret(value: str) -> str:
    """A signing secret as Standard Webhooks define it (ValueError naming `secret` otherwise)."""
    encoded = value.removeprefix(WEBHOOK_SECRET_PREFIX)
    if encoded == value or not encoded.isascii():
        raise ValueError(_WEBHOOK_SECRET_RULE)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(_WEBHOOK_SECRET_RULE) from None
    if not WEBHOOK_SECRET_BYTES[0] <= len(key) <= WEBHOOK_SECRET_BYTES[1]:
        raise ValueError(f"{_WEBHOOK_SECRET_RULE}, got {len(key)} bytes")
    return value


class NewWebhookEndpointBody(Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where to send hold events, and the secret to sign them with (generated when not given)."""

    url: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=WEBHOOK_URL_MAX_LENGTH,
            description="an http or https URL with a host; redirects are not followed",
        ),
    ]
    secret: Annotated[str, Meta(max_length=200, description=_WEBHOOK_SECRET_DESCRIPTION)] | None = None

    def __post_init__(self) -> None:
        webhook_url(self.url)
        if self.secret is not None:
            webhook_secret(self.secret)


class RedeliverBody(Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Besides the failed deliveries: every kept event after this feed id, sent to the endpoint again."""

    after: Annotated[int, Meta(ge=0, le=2**63 - 1)] | None = None


class NewWebhookEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook endpoint just created, with its signing secret (listings never show it again)."""

    id: str
    url: str
    secret: str
    created_at: datetime  # it gets the events that occur from then on


class WebhookEndpointInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook endpoint as listed: never its secret."""

    id: str
    url: str
    created_at: datetime
    pending: int  # deliveries owed to it (waiting, retrying or in flight)
    delivered: int  # deliveries it answered 2xx
    failed: int  # deliveries given up after the retry window (POST …/redeliver sends them again)
    last_delivered_at: datetime | None
    last_error: str | None  # the latest failed attempt: its HTTP status and response excerpt, or the error
    last_error_at: datetime | None


class WebhookEndpointList(msgspec.Struct, frozen=True, kw_only=True):
    webhook_endpoints: list[WebhookEndpointInfo]


class Redelivered(msgspec.Struct, frozen=True, kw_only=True):
    redelivered: int  # deliveries this made pending


class WebhookStats(msgspec.Struct, frozen=True, kw_only=True):
    """Webhook deliveries over every endpoint."""

    endpoints: int
    pending: int
    failed: int
    delivered: int
    # How long ago the event of the oldest pending delivery occurred; 0 when none is pending.
    oldest_pending_age_ms: int
    oldest_pending_occurred_at: datetime | None
