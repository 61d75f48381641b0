"""One seat, two worker processes, 200 clients released at one instant: exactly one hold.

The gateway is `gateway serve --workers 2`, a process of its own. Each client is an OS thread with its own
connection, opened before the start and left for either worker to accept; all threads wait on one barrier
and then send. The access log (JSON, with each worker's pid and the request id it answered) shows which
worker served which request.
"""

import socket
import threading
from collections import Counter

import pytest

from gateway.embedded import free_port
from tests.support import active_holds_per_slot
from tests.test_cli import access_lines, clean_env, serving

CLIENTS = 200
EVENT_ID = "show-7"
SEAT = "B-12"
BARRIER_TIMEOUT_S = 60  # every client must be connected and waiting by then (a busy 2-core box)
SOCKET_TIMEOUT_S = 30


def request_bytes(port: int, i: int) -> bytes:
    body = f'{{"event_id": "{EVENT_ID}", "slots": ["{SEAT}"], "holder": "holder-{i}"}}'.encode()
    head = (
        f"POST /v1/holds HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-ID: storm-{i}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def storm(port: int) -> dict[str, int]:
    """CLIENTS requests for the seat, sent at once; request id -> status (0 for a client that got none)."""
    barrier = threading.Barrier(CLIENTS)
    statuses: dict[str, int] = {}

    def client(i: int) -> None:
        status = 0
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as conn:
                request = request_bytes(port, i)
                barrier.wait(BARRIER_TIMEOUT_S)
                conn.sendall(request)
                reply = b""
                while chunk := conn.recv(65536):  # Connection: close, so the server ends the reply
                    reply += chunk
            status = int(reply.split(b" ", 2)[1])
        except (OSError, ValueError, IndexError, threading.BrokenBarrierError):
            barrier.abort()  # the others are not kept waiting for a client that will never arrive
        statuses[f"storm-{i}"] = status

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


@pytest.mark.timeout(120)
async def test_two_hundred_clients_against_two_workers_make_one_hold(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    env = clean_env(
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_REDIS_URL=redis_url,
        GATEWAY_REDIS_KEY_PREFIX=key_prefix,
        GATEWAY_LOG_FORMAT="json",
        GATEWAY_ACCESS_LOG_409_SAMPLE="1",  # every answer is checked against its line
    )
    port = free_port()
    with serving(["--workers", "2"], env, port):
        answered = storm(port)
    served = {
        line["request_id"]: line
        for line in access_lines(serving.last_output)  # type: ignore[attr-defined]
        if line["request_id"].startswith("storm-")
    }

    assert Counter(answered.values()) == {201: 1, 409: CLIENTS - 1}
    assert await active_holds_per_slot(database_url) == {(EVENT_ID, SEAT): 1}
    # Every answer is the one a worker logged for that request, and the storm reached both workers.
    assert {request_id: line["status"] for request_id, line in served.items()} == answered
    by_worker = Counter(line["pid"] for line in served.values())
    assert len(by_worker) == 2, f"one worker served the whole storm: {by_worker}"
