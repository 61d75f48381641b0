"""Requests for another pod's events and holds, sent on to that pod's gateways (docs/scaling.md).

With pods, a gateway serves its own pod's events and holds. A create for another pod's event, or a hold route
with another pod's hold id, is sent on to the `gateway_url` the shard map gives that pod, and its answer
returned as it is, so that clients (and a load balancer that does not route by event) need not know the
pods. A request is sent on once at most: one that arrives sent on (FORWARDED_HEADER) and is still not this
pod's gets 421 wrong-pod (two gateways with different maps would otherwise pass it back and forth). A pod
without a `gateway_url` in the map: 421 wrong-pod, for the client to route.
"""

from typing import Any

import httpx

from gateway.errors import BackendUnavailable, WrongPod

FORWARDED_HEADER = b"x-gateway-forwarded-from"
# How long the other pod may take to answer: a create may resolve a lost claim for several seconds.
FORWARD_TIMEOUT_S = 30.0
# Headers that belong to one connection (RFC 9110 7.6.1) or that httpx sets itself.
_NOT_FORWARDED = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"host", b"content-length"}
)
_Headers = list[tuple[bytes, bytes]]


def was_forwarded(scope: Any) -> bool:
    return any(name == FORWARDED_HEADER for name, _ in scope["headers"])


class PodForwarder:
    """One HTTP client per worker, its connections to the other pods' gateways kept open."""

    def __init__(self, pod: str, retry_after_s: int, timeout_s: float = FORWARD_TIMEOUT_S) -> None:
        self.pod = pod
        self.retry_after_s = retry_after_s
        self._client = httpx.AsyncClient(
            timeout=timeout_s, limits=httpx.Limits(max_connections=256, max_keepalive_connections=64)
        )

    async def forward(self, scope: Any, body: bytes, wrong_pod: WrongPod) -> tuple[int, _Headers, bytes]:
        """The other pod's answer to this request (status, headers, body). BackendUnavailable if its gateways
        cannot be reached; `wrong_pod` itself if the map names none for it, or the request was sent on
        before."""
        gateway_url = wrong_pod.extensions.get("gateway_url")
        if not isinstance(gateway_url, str) or was_forwarded(scope):
            raise wrong_pod
        query = scope.get("query_string", b"")
        url = gateway_url.rstrip("/") + scope["path"] + ("?" + query.decode("latin-1") if query else "")
        headers = [(name, value) for name, value in scope["headers"] if name not in _NOT_FORWARDED]
        headers.append((FORWARDED_HEADER, self.pod.encode()))
        try:
            response = await self._client.request(scope["method"], url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(self.retry_after_s) from exc
        answer_headers = [
            (name.lower(), value)
            for name, value in response.headers.raw
            if name.lower() not in _NOT_FORWARDED
        ]
        answer_headers.append((b"content-length", str(len(response.content)).encode()))
        return response.status_code, answer_headers, response.content

    async def close(self) -> None:
        await self._client.aclose()
