"""Who may call what: the operations token (with GATEWAY_OPS_TOKEN set, operations routes require it) and
the client keys of the hold routes (see gateway.client_keys)."""

import base64
import binascii
import hmac
from collections.abc import Iterable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler

from gateway.client_keys import ClientKeys
from gateway.config import Settings
from gateway.errors import ClientKeyRequired, Unauthorized


def presented_token(authorization: str) -> str:
    """The token in `Bearer <token>`, or the password of `Basic base64(user:token)` (a browser's prompt)."""
    scheme, _, credentials = authorization.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return credentials.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2]
    return ""


def is_ops_token(settings: Settings, presented: str) -> bool:
    if settings.ops_token is None:
        return False
    # Constant time: how much of a guess matched must not show in the response time.
    return hmac.compare_digest(presented.encode(), settings.ops_token.encode())


def require_ops_token(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    settings: Settings = connection.app.state.settings
    if settings.ops_token is None:
        return
    if not is_ops_token(settings, presented_token(connection.headers.get("authorization", ""))):
        raise Unauthorized()


def _authorization(raw_headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The Authorization header from the raw ASGI headers: every create passes here, so no Headers object."""
    for name, value in raw_headers:
        if name == b"authorization":
            return value.decode("latin-1")
    return ""


# What `hold_caller` answers for the ops token on a read: it reads every hold, whatever its client key.
EVERY_CLIENT = None


def hold_caller(connection: ASGIConnection[Any, Any, Any, Any], *, reading: bool = False) -> str | None:
    """The client key a hold route acts for (see `caller_of`). Called by the handlers, not as a guard (a
    guard copies its handler per request)."""
    return caller_of(connection.scope["headers"], connection.app.state, reading=reading)


def caller_of(
    raw_headers: Iterable[tuple[bytes, bytes]], state: State, *, reading: bool = False
) -> str | None:
    """The client key a hold route acts for: the presented key's id; '' while the gateway is open (no client
    key exists); or EVERY_CLIENT for the ops token on a read (it reads every hold and creates none). Raises
    ClientKeyRequired. `state` is the app's (settings, client_keys); the Litestar routes and the raw hot
    route (gateway.api.hot_holds) both ask here."""
    presented = presented_token(_authorization(raw_headers))
    settings: Settings = state.settings
    if reading and presented and is_ops_token(settings, presented):
        return EVERY_CLIENT
    client_keys: ClientKeys = state.client_keys
    if not client_keys.required:
        return ""
    key_id = client_keys.identify(presented) if presented else None
    if key_id is None:
        raise ClientKeyRequired()
    return key_id
