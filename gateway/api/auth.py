"""The operations token: with GATEWAY_OPS_TOKEN set, operations routes require it."""

import base64
import binascii
import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from gateway.config import Settings
from gateway.errors import Unauthorized


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


def require_ops_token(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    settings: Settings = connection.app.state.settings
    if settings.ops_token is None:
        return
    presented = presented_token(connection.headers.get("authorization", ""))
    # Constant time: how much of a guess matched must not show in the response time.
    if not hmac.compare_digest(presented.encode(), settings.ops_token.encode()):
        raise Unauthorized()
