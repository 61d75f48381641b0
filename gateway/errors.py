"""Domain errors. Each knows its HTTP status and problem type; one handler renders them as problem+json."""

import random
from datetime import datetime
from typing import ClassVar

PROBLEM_TYPE_BASE = "/problems/"


class GatewayError(Exception):
    """The request could not be processed."""

    status_code: ClassVar[int] = 500
    problem: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, **extensions: object) -> None:
        self.detail = detail or (self.__doc__ or self.title).strip()
        self.extensions = extensions
        super().__init__(self.detail)

    @property
    def problem_type(self) -> str:
        return PROBLEM_TYPE_BASE + self.problem

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(GatewayError):
    """The request is invalid."""

    status_code = 422
    problem = "invalid-request"
    title = "Invalid request"


class MalformedRequest(InvalidRequest):
    """The request cannot be parsed."""

    status_code = 400
    problem = "malformed-request"
    title = "Malformed request"


class IncompleteRequest(MalformedRequest):
    """The body ended before the length the request announced: the client went away. Not a gateway failure,
    so never logged as one; the client hears no answer."""

    problem = "incomplete-request"
    title = "Incomplete request"


class BodyTooLarge(GatewayError):
    """The body is larger than the gateway accepts (max_body_bytes)."""

    status_code = 413
    problem = "body-too-large"
    title = "Request body too large"


class UnsupportedMediaType(GatewayError):
    """The body is declared as something other than JSON."""

    status_code = 415
    problem = "unsupported-media-type"
    title = "Unsupported media type"


class RouteNotFound(GatewayError):
    """No route has this path."""

    status_code = 404
    problem = "not-found"
    title = "Not found"


class MethodNotAllowed(GatewayError):
    """This route does not take this method; `Allow` lists those it takes."""

    status_code = 405
    problem = "method-not-allowed"
    title = "Method not allowed"

    def __init__(self, allowed_methods: str) -> None:
        super().__init__()
        self.allowed_methods = allowed_methods

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allowed_methods}


class SlotUnavailable(GatewayError):
    """Some of the requested seats are held by someone else or blocked, or a pool has too few units left."""

    status_code = 409
    problem = "slot-unavailable"
    title = "Slot unavailable"

    def __init__(self, conflicts: list[str], unavailable: list[dict[str, str | int]] | None = None) -> None:
        """`conflicts`: the seat ids taken or blocked; `unavailable`: every seat ({event_id, slot_id}) and
        pool ({event_id, pool_id, requested, available}) that could not be granted."""
        unavailable = unavailable or []
        pools = sum(1 for item in unavailable if "pool_id" in item)
        if pools and not conflicts:
            detail = f"{pools} of the requested pools {'has' if pools == 1 else 'have'} too few units left"
        else:
            verb = "is" if len(conflicts) == 1 else "are"
            detail = f"{len(conflicts)} of the requested slots {verb} taken"
            if pools:
                detail += f", and {pools} of the requested pools too few units left"
        super().__init__(detail, conflicts=conflicts, unavailable=unavailable)
        self.conflicts = conflicts
        self.unavailable = unavailable


class HolderLimitExceeded(GatewayError):
    """The holder's live units in the event, with this request's, would pass the event's per-holder limit."""

    status_code = 409
    problem = "holder-limit"
    title = "Holder limit exceeded"

    def __init__(self, event_id: str, limit: int, held: int, requested: int) -> None:
        super().__init__(
            f"the holder has {held} live units of event {event_id!r}; {requested} more would pass its "
            f"limit of {limit}",
            event_id=event_id,
            limit=limit,
            held=held,
            requested=requested,
        )


class InventoryInUse(GatewayError):
    """The change would take seats or units that live holds have."""

    status_code = 409
    problem = "inventory-in-use"
    title = "Inventory in use"

    def __init__(
        self, detail: str, *, seats: list[str] | None = None, pools: list[str] | None = None
    ) -> None:
        super().__init__(detail, seats=seats or [], pools=pools or [])


class InventoryNotFound(GatewayError):
    """The event has no inventory."""

    status_code = 404
    problem = "inventory-not-found"
    title = "Inventory not found"


class HoldNotFound(GatewayError):
    """No hold has this id."""

    status_code = 404
    problem = "hold-not-found"
    title = "Hold not found"


class SlotNotFound(GatewayError):
    """The event's inventory has no seat with this id."""

    status_code = 404
    problem = "slot-not-found"
    title = "Slot not found"


class ClientKeyNotFound(GatewayError):
    """No client key has this id."""

    status_code = 404
    problem = "client-key-not-found"
    title = "Client key not found"


class WebhookEndpointNotFound(GatewayError):
    """No webhook endpoint has this id."""

    status_code = 404
    problem = "webhook-endpoint-not-found"
    title = "Webhook endpoint not found"


class NotHolder(GatewayError):
    """The hold belongs to another holder."""

    status_code = 403
    problem = "not-holder"
    title = "Not the holder"


class InvalidTransition(GatewayError):
    """The hold cannot make this transition from its current status."""

    status_code = 409
    problem = "invalid-transition"
    title = "Invalid transition"

    def __init__(self, action: str, current_status: str) -> None:
        super().__init__(f"cannot {action} a hold that is {current_status}", current_status=current_status)


class LifetimeExceeded(GatewayError):
    """The new expiry would pass the longest life of the hold (created_at + max_hold_lifetime_s)."""

    status_code = 409
    problem = "lifetime-exceeded"
    title = "Lifetime exceeded"

    def __init__(self, max_expires_at: datetime) -> None:
        super().__init__(
            f"a hold lives until {max_expires_at.isoformat()} at the latest (its created_at + the longest "
            "life of a hold); ask for a shorter ttl_seconds",
            max_expires_at=max_expires_at,
        )


class IdempotencyKeyReused(GatewayError):
    """This Idempotency-Key was already used with a different request."""

    status_code = 422
    problem = "idempotency-key-reused"
    title = "Idempotency key reused"


class WrongPod(GatewayError):
    """The event (or hold) belongs to another pod, whose gateways answer for it: `pod` names it and
    `gateway_url`, when the shard map gives one, says where they are. Nothing was done here."""

    status_code = 421
    problem = "wrong-pod"
    title = "Wrong pod"

    def __init__(self, what: str, pod: str, gateway_url: str | None) -> None:
        super().__init__(f"{what} belongs to pod {pod!r}", pod=pod, gateway_url=gateway_url)


class RetryLater(GatewayError):
    """The request could not be served now; retry after `Retry-After` seconds."""

    status_code = 503

    def __init__(self, retry_after_s: int = 1) -> None:
        super().__init__()
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        # Jittered, between the setting and twice it: clients told the same number come back all at once.
        jitter_s = random.randint(0, self.retry_after_s)  # noqa: S311 - spreading retries, not a secret
        return {"Retry-After": str(self.retry_after_s + jitter_s)}


class Overloaded(RetryLater):
    """The gateway is overloaded; retry shortly."""

    problem = "overloaded"
    title = "Overloaded"


class BackendUnavailable(RetryLater):
    """The database is unavailable; retry shortly."""

    problem = "backend-unavailable"
    title = "Backend unavailable"


class StaleShardMap(RetryLater):
    """This pod's database does not own the event's bucket (any more): the shard map this gateway routed by is
    out of date, and nothing was created. The gateway reads its map file again; retry shortly."""

    problem = "stale-shard-map"
    title = "Stale shard map"


class OutcomeUnknown(RetryLater):
    """The database stopped answering while this hold was being committed, and did not come back in time to
    tell whether it was. Retry with the same Idempotency-Key: the retry finds the hold if it was committed."""

    problem = "outcome-unknown"
    title = "Outcome unknown"


class TooManyStreams(RetryLater):
    """This worker serves as many live streams as it may (GATEWAY_STREAM_MAX_SUBSCRIBERS); retry shortly."""

    problem = "too-many-streams"
    title = "Too many streams"


class ClientKeyRequired(GatewayError):
    """This route needs a client key: `Authorization: Bearer <client key>`."""

    status_code = 401
    problem = "client-key-required"
    title = "Client key required"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="gateway"'}


class Unauthorized(GatewayError):
    """This route needs the operations token: `Authorization: Bearer <GATEWAY_OPS_TOKEN>`."""

    status_code = 401
    problem = "unauthorized"
    title = "Unauthorized"

    def headers(self) -> dict[str, str]:
        # Basic lets a browser prompt for the token on /ops (any user name; the token as password). It comes
        # first: Chromium reads only the first challenge, and would not prompt for Bearer.
        return {"WWW-Authenticate": 'Basic realm="gateway-ops", Bearer realm="gateway-ops"'}
