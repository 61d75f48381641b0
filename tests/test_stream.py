"""GET /v1/events/{event_id}/stream: live availability as Server-Sent Events, from a real gateway over real
sockets, read by an SSE client that parses the wire format itself (HTTP/1.1 chunks, then `id:`, `event:`,
`data:` and comment lines, as EventSource does)."""

import asyncio
import contextlib
import json
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway import streams
from gateway.config import Settings
from gateway.streams import StreamHub
from tests.conftest import make_settings
from tests.support import Gateway, running_gateway

DEADLINE_S = 30.0  # generous: the machine is shared, and nothing here waits that long when it works


@dataclass
class Event:
    id: int | None
    type: str
    data: Any


@dataclass
class SeatMap:
    """What a seat map page would show, built from the messages alone."""

    seats: dict[str, str] = field(default_factory=dict)  # seats not free
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    availability: dict[str, Any] | None = None

    def apply(self, event: Event) -> None:
        if event.type == "snapshot":
            self.seats = dict(event.data["seats"])
            self.availability = event.data["availability"]
            pools = self.availability["pools"] if self.availability else []
            self.pools = {pool["pool_id"]: pool for pool in pools}
        elif event.type == "changes":
            for seat, state in event.data["seats"].items():
                if state == "free":
                    self.seats.pop(seat, None)
                else:
                    self.seats[seat] = state
            for pool in event.data["pools"]:
                self.pools[pool["pool_id"]] = pool


class SseClient:
    """One stream: a raw HTTP/1.1 GET whose body is read as it comes, decoded and parsed into events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""  # the non-stream answer (an error)
        self.raw = bytearray()  # every byte of the stream, to search for what must never be in it
        self.events: list[Event] = []
        self.comments: list[str] = []
        self.map = SeatMap()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.ended = False

    @classmethod
    async def open(
        cls, gateway: Gateway, event_id: str, last_event_id: str | None = None, *, read: bool = True
    ) -> "SseClient":
        port = int(gateway.url.rpartition(":")[2])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        head = [
            f"GET /v1/events/{event_id}/stream HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Accept: text/event-stream",
        ]
        if last_event_id is not None:
            head.append(f"Last-Event-ID: {last_event_id}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await client._read_head()
        if client.status == 200 and read:
            client.start_reading()
        return client

    async def _read_head(self) -> None:
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {
            name.lower(): value for name, _, value in (line.partition(": ") for line in lines if line)
        }
        if self.status != 200:
            self.body = await self._reader.readexactly(int(self.headers["content-length"]))

    def start_reading(self) -> None:
        self._task = asyncio.create_task(self._read_body())

    async def _read_body(self) -> None:
        assert self.headers.get("transfer-encoding") == "chunked", self.headers
        pending = ""
        data: list[str] = []
        event_type = ""
        last_id: str | None = None
        try:
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).strip(), 16)
                chunk = (await self._reader.readexactly(size + 2))[:-2]
                if size == 0:
                    return
                self.raw += chunk
                pending += chunk.decode()
                *lines, pending = re.split(r"\r\n|\r|\n", pending)
                for line in lines:
                    if not line:  # dispatch, as EventSource does
                        if data:
                            parsed = json.loads("\n".join(data))
                            event_id = int(last_id) if last_id is not None else None
                            event = Event(event_id, event_type or "message", parsed)
                            self.events.append(event)
                            self.map.apply(event)
                        data, event_type = [], ""
                        self._arrived.set()
                        continue
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "":
                        self.comments.append(value)
                    elif name == "data":
                        data.append(value)
                    elif name == "event":
                        event_type = value
                    elif name == "id":
                        last_id = value
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.ended = True
            self._arrived.set()

    @property
    def last_id(self) -> int:
        ids = [e.id for e in self.events if e.id is not None]
        return ids[-1]

    async def wait_for(self, condition: Callable[["SseClient"], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not condition(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.ended:
                raise AssertionError(f"{what}: not within {DEADLINE_S}s; events {self.events}")
            self._arrived.clear()
            if condition(self):
                return
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                continue

    async def close(self) -> None:
        self._writer.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


def hub_of(gateway: Gateway) -> StreamHub:
    hub: StreamHub = gateway.server.config.loaded_app.app.state.streams  # type: ignore[union-attr]
    return hub


async def eventually(condition: Callable[[], Awaitable[bool]] | Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {DEADLINE_S}s")
        await asyncio.sleep(0.02)


async def create_hold(gateway: Gateway, body: dict[str, Any]) -> str:
    response = await gateway.client.post("/v1/holds", json=body)
    assert response.status_code == 201, response.text
    hold_id: str = response.json()["id"]
    return hold_id


async def act(gateway: Gateway, hold_id: str, action: str, holder: str) -> None:
    response = await gateway.client.post(f"/v1/holds/{hold_id}/{action}", json={"holder": holder})
    assert response.status_code == 200, response.text


async def put_inventory(gateway: Gateway, event_id: str, body: dict[str, Any]) -> None:
    response = await gateway.client.put(f"/v1/events/{event_id}/inventory", json=body)
    assert response.status_code == 200, response.text


async def query_counts(gateway: Gateway) -> dict[str, float]:
    """Statements run per query name since the process started, from /metrics."""
    text = (await gateway.client.get("/metrics")).text
    pattern = re.compile(r'^gateway_postgres_query_duration_seconds_count\{query="([a-z_]+)"\} (\S+)$', re.M)
    return {name: float(value) for name, value in pattern.findall(text)}


def stream_settings(database_url: str, redis_url: str, key_prefix: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"sweep_interval_s": 0.2, "stream_inventory_check_s": 0.3}
    values.update(overrides)
    return make_settings(database_url, redis_url, key_prefix, **values)


@pytest.fixture(name="gateway")
async def fx_gateway(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Gateway]:
    """A gateway whose sweeper records lapses within 0.2 s, and whose streams look for inventory changes
    every 0.3 s."""
    async with running_gateway(stream_settings(database_url, redis_url, key_prefix)) as gateway:
        yield gateway


async def test_a_subscriber_sees_a_snapshot_then_each_seat_change_and_never_a_holder_or_hold_id(
    gateway: Gateway,
) -> None:
    held_before = await create_hold(gateway, {"event_id": "show-1", "slots": ["A-9"], "holder": "zoe-before"})
    stream = await SseClient.open(gateway, "show-1")
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["cache-control"] == "no-store"
    await stream.wait_for(lambda s: bool(s.events), "the snapshot")
    snapshot = stream.events[0]
    assert snapshot.type == "snapshot"
    assert snapshot.data == {"event_id": "show-1", "availability": None, "seats": {"A-9": "held"}}

    confirmed = await create_hold(
        gateway, {"event_id": "show-1", "slots": ["A-1", "A-2"], "holder": "zoe-confirms"}
    )
    await stream.wait_for(lambda s: s.map.seats.get("A-1") == "held", "A-1 held")
    await act(gateway, confirmed, "confirm", "zoe-confirms")
    await stream.wait_for(lambda s: s.map.seats.get("A-2") == "confirmed", "A-2 confirmed")
    cancelled = await create_hold(gateway, {"event_id": "show-1", "slots": ["B-1"], "holder": "zoe-cancels"})
    await stream.wait_for(lambda s: s.map.seats.get("B-1") == "held", "B-1 held")
    await act(gateway, cancelled, "cancel", "zoe-cancels")
    await stream.wait_for(lambda s: "B-1" not in s.map.seats, "B-1 free")
    expiring = await create_hold(
        gateway, {"event_id": "show-1", "slots": ["C-1"], "holder": "zoe-lets-go", "ttl_seconds": 1}
    )
    await stream.wait_for(lambda s: s.map.seats.get("C-1") == "held", "C-1 held")
    await stream.wait_for(lambda s: "C-1" not in s.map.seats, "C-1 free once its hold expired")
    await act(gateway, held_before, "cancel", "zoe-before")
    await stream.wait_for(lambda s: "A-9" not in s.map.seats, "A-9 free")

    assert stream.map.seats == {"A-1": "confirmed", "A-2": "confirmed"}
    changes = list(stream.events[1:])
    assert changes
    assert all(e.type == "changes" for e in changes), [(e.id, e.type, e.data["seats"]) for e in stream.events]
    assert all(e.data["event_id"] == "show-1" and e.data["pools"] == [] for e in changes)
    ids = [e.id for e in stream.events]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for secret in ("zoe-", held_before, confirmed, cancelled, expiring, "holder"):
        assert secret.encode() not in stream.raw, secret
    await stream.close()
    await eventually(lambda: hub_of(gateway).subscribers == 0, "the subscriber removed")


async def test_pool_counts_follow_pool_holds(gateway: Gateway) -> None:
    await put_inventory(
        gateway, "fest-1", {"seats": ["S-1", "S-2"], "pools": [{"pool_id": "floor", "capacity": 10}]}
    )
    stream = await SseClient.open(gateway, "fest-1")
    await stream.wait_for(lambda s: bool(s.events), "the snapshot")
    availability = stream.events[0].data["availability"]
    assert availability["event_id"] == "fest-1"
    assert availability["seats"] == {"total": 2, "free": 2, "held": 0, "confirmed": 0, "blocked": 0}
    assert stream.map.pools["floor"]["available"] == 10

    def floor(held: int, confirmed: int) -> Callable[[SseClient], bool]:
        def reached(s: SseClient) -> bool:
            pool = s.map.pools["floor"]
            return (pool["held"], pool["confirmed"], pool["available"]) == (
                held,
                confirmed,
                10 - held - confirmed,
            )

        return reached

    first = await create_hold(
        gateway, {"holder": "pat", "items": [{"event_id": "fest-1", "pool_id": "floor", "quantity": 3}]}
    )
    await stream.wait_for(floor(3, 0), "3 held")
    second = await create_hold(
        gateway,
        {
            "holder": "quinn",
            "items": [
                {"event_id": "fest-1", "slots": ["S-2"]},
                {"event_id": "fest-1", "pool_id": "floor", "quantity": 2},
            ],
        },
    )
    await stream.wait_for(floor(5, 0), "5 held")
    assert stream.map.seats == {"S-2": "held"}
    await act(gateway, first, "confirm", "pat")
    await stream.wait_for(floor(2, 3), "3 confirmed, 2 held")
    await act(gateway, second, "cancel", "quinn")
    await stream.wait_for(floor(0, 3), "2 given back")
    await stream.wait_for(lambda s: s.map.seats == {}, "S-2 free")
    for secret in ("pat", "quinn", first, second):
        assert secret.encode() not in stream.raw, secret
    await stream.close()


async def test_a_hold_across_two_events_reaches_both_streams(gateway: Gateway) -> None:
    await put_inventory(gateway, "fest-2", {"pools": [{"pool_id": "lawn", "capacity": 5}]})
    open_event = await SseClient.open(gateway, "show-2")
    inventory_event = await SseClient.open(gateway, "fest-2")
    await open_event.wait_for(lambda s: bool(s.events), "snapshot")
    await inventory_event.wait_for(lambda s: bool(s.events), "snapshot")
    hold_id = await create_hold(
        gateway,
        {
            "holder": "rio",
            "items": [
                {"event_id": "show-2", "slots": ["D-4"]},
                {"event_id": "fest-2", "pool_id": "lawn", "quantity": 2},
            ],
        },
    )
    await open_event.wait_for(lambda s: s.map.seats == {"D-4": "held"}, "D-4 held")
    await inventory_event.wait_for(lambda s: s.map.pools["lawn"]["held"] == 2, "2 lawn units held")
    await act(gateway, hold_id, "confirm", "rio")
    await open_event.wait_for(lambda s: s.map.seats == {"D-4": "confirmed"}, "D-4 confirmed")
    await inventory_event.wait_for(lambda s: s.map.pools["lawn"]["confirmed"] == 2, "2 confirmed")
    assert all(e.data["event_id"] == "show-2" for e in open_event.events)
    await open_event.close()
    await inventory_event.close()


async def test_a_seat_taken_over_after_lapsing_ends_held_by_the_new_hold(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The claim that takes over a lapsed seat writes the old hold's hold.expired and its own hold.created in
    one statement, in that order: applied in feed order the seat ends held, not free. (No sweeper here, so
    the claim is what records the lapse.)"""
    settings = stream_settings(database_url, redis_url, key_prefix, sweep_interval_s=3600)
    async with running_gateway(settings) as gateway:
        stream = await SseClient.open(gateway, "show-3")
        await stream.wait_for(lambda s: bool(s.events), "snapshot")
        await create_hold(
            gateway, {"event_id": "show-3", "slots": ["E-1"], "holder": "old", "ttl_seconds": 1}
        )
        await stream.wait_for(lambda s: s.map.seats == {"E-1": "held"}, "E-1 held by the old hold")

        async def lapsed() -> bool:
            return (await gateway.client.get("/v1/events/show-3/slots/E-1")).json()["state"] == "free"

        await eventually(lapsed, "the old hold lapsed")
        messages_before = len(stream.events)
        await create_hold(gateway, {"event_id": "show-3", "slots": ["E-1"], "holder": "new"})
        await stream.wait_for(lambda s: len(s.events) > messages_before, "the takeover")
        # Both events reached the hub in one read and were sent as one message, the new hold's state last.
        assert stream.events[-1].data["seats"] == {"E-1": "held"}
        feed = (await gateway.client.get("/v1/hold-events")).json()["events"]
        assert [e["type"] for e in feed] == ["hold.created", "hold.expired", "hold.created"]
        await asyncio.sleep(0)
        assert stream.map.seats == {"E-1": "held"}
        await stream.close()


async def test_resume_with_last_event_id_replays_the_changes_after_it(gateway: Gateway) -> None:
    stream = await SseClient.open(gateway, "show-4")
    await stream.wait_for(lambda s: bool(s.events), "snapshot")
    first = await create_hold(gateway, {"event_id": "show-4", "slots": ["F-1"], "holder": "sam"})
    await stream.wait_for(lambda s: s.map.seats == {"F-1": "held"}, "F-1 held")
    seen = stream.last_id
    await stream.close()

    await act(gateway, first, "confirm", "sam")
    second = await create_hold(gateway, {"event_id": "show-4", "slots": ["F-2", "F-3"], "holder": "sam"})
    await act(gateway, second, "cancel", "sam")
    await create_hold(gateway, {"event_id": "show-4", "slots": ["F-4"], "holder": "sam"})

    async def fed_past() -> bool:
        head = hub_of(gateway).position
        return head >= seen + 4

    await eventually(fed_past, "the hub read the four events")
    resumed = await SseClient.open(gateway, "show-4", last_event_id=str(seen))
    resumed.map.seats = {"F-1": "held"}  # what the page showed when it lost the stream
    await resumed.wait_for(lambda s: s.map.seats == {"F-1": "confirmed", "F-4": "held"}, "the missed changes")
    assert resumed.events
    assert all(e.type == "changes" for e in resumed.events)
    assert all(e.id is not None and e.id > seen for e in resumed.events)
    await resumed.close()


@pytest.mark.parametrize("last_event_id", ["0", "before", "999999999", "not-a-number", ""])
async def test_an_unknown_or_old_last_event_id_gets_a_snapshot(gateway: Gateway, last_event_id: str) -> None:
    """Resuming needs the worker to keep every message after the id: an id from before the event was first
    watched here (0, or the one just before that), one past the feed's head, or no number at all, start
    over from a snapshot."""
    elsewhere = await SseClient.open(gateway, "show-50")  # the hub follows the feed from here on
    await elsewhere.wait_for(lambda s: bool(s.events), "snapshot")
    await create_hold(gateway, {"event_id": "show-5", "slots": ["G-1"], "holder": "tess"})
    await eventually(lambda: hub_of(gateway).position >= 1, "the hub read the hold's event")
    before = str(hub_of(gateway).position - 1)
    watcher = await SseClient.open(gateway, "show-5")  # the event's messages are kept from here on
    await watcher.wait_for(lambda s: bool(s.events), "snapshot")
    await create_hold(gateway, {"event_id": "show-5", "slots": ["G-2"], "holder": "tess"})
    await watcher.wait_for(lambda s: "G-2" in s.map.seats, "G-2 held")

    stream = await SseClient.open(
        gateway, "show-5", last_event_id=before if last_event_id == "before" else last_event_id
    )
    await stream.wait_for(lambda s: bool(s.events), "a first message")
    assert stream.events[0].type == "snapshot"
    assert stream.map.seats == {"G-1": "held", "G-2": "held"}
    for client in (stream, watcher, elsewhere):
        await client.close()


async def test_a_burst_reaches_a_subscriber_as_far_fewer_messages_with_the_final_state(
    gateway: Gateway,
) -> None:
    stream = await SseClient.open(gateway, "show-6")
    await stream.wait_for(lambda s: bool(s.events), "snapshot")
    burst = 40
    started = time.monotonic()
    holds = await asyncio.gather(
        *(
            create_hold(gateway, {"event_id": "show-6", "slots": [f"H-{i}"], "holder": f"h{i}"})
            for i in range(burst)
        )
    )
    burst_s = time.monotonic() - started
    for hold_id, i in zip(holds[::2], range(0, burst, 2), strict=True):
        await act(gateway, hold_id, "confirm", f"h{i}")
    expected = {f"H-{i}": "confirmed" if i % 2 == 0 else "held" for i in range(burst)}
    await stream.wait_for(lambda s: s.map.seats == expected, "the burst's final state")
    changes = [e for e in stream.events if e.type == "changes"]
    # 60 changes (40 creates, 20 confirms): at most a message per half second, plus the first at once.
    elapsed_s = time.monotonic() - started
    assert len(changes) <= elapsed_s / gateway.settings.stream_flush_interval_s + 2, (len(changes), elapsed_s)
    assert len(changes) < (burst + burst // 2) / 4, (len(changes), burst_s, elapsed_s)
    await stream.close()


async def test_bad_event_id_is_422_problem_naming_it(gateway: Gateway) -> None:
    for bad in ("a%20b", "x" * 129, "%C3%A9"):
        response = await gateway.client.get(f"/v1/events/{bad}/stream")
        assert response.status_code == 422, (bad, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "`event_id`" in response.json()["detail"]
    assert hub_of(gateway).subscribers == 0


async def test_past_the_cap_a_stream_is_503_with_retry_after(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    settings = stream_settings(database_url, redis_url, key_prefix, stream_max_subscribers=2)
    async with running_gateway(settings) as gateway:
        opened = [await SseClient.open(gateway, "show-7") for _ in range(2)]
        refused = await SseClient.open(gateway, "show-7")
        assert refused.status == 503
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert json.loads(refused.body)["type"] == "/problems/too-many-streams"
        assert int(refused.headers["retry-after"]) >= 1
        await refused.close()
        await opened[0].close()
        await eventually(lambda: hub_of(gateway).subscribers == 1, "a place freed")
        again = await SseClient.open(gateway, "show-7")
        assert again.status == 200
        for stream in (opened[1], again):
            await stream.close()
        await eventually(lambda: hub_of(gateway).subscribers == 0, "every subscriber removed")


async def test_a_quiet_stream_gets_keep_alive_comments(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    settings = stream_settings(database_url, redis_url, key_prefix, stream_heartbeat_s=0.2)
    async with running_gateway(settings) as gateway:
        stream = await SseClient.open(gateway, "show-8")
        await stream.wait_for(lambda s: len(s.comments) >= 3, "three keep-alives")
        assert set(stream.comments) == {"keep-alive"}
        assert [e.type for e in stream.events] == ["snapshot"]
        await stream.close()


async def test_blocked_and_unblocked_seats_reach_the_stream_as_a_fresh_snapshot(gateway: Gateway) -> None:
    await put_inventory(gateway, "fest-3", {"seats": ["K-1", "K-2", "K-3"]})
    stream = await SseClient.open(gateway, "fest-3")
    await stream.wait_for(lambda s: bool(s.events), "snapshot")
    response = await gateway.client.post(
        "/v1/events/fest-3/seats/block", json={"seats": ["K-2"], "reason": "desk"}
    )
    assert response.status_code == 200
    await stream.wait_for(lambda s: s.map.seats == {"K-2": "blocked"}, "K-2 blocked")
    assert stream.events[-1].type == "snapshot"
    assert stream.map.availability is not None
    assert stream.map.availability["seats"]["blocked"] == 1
    assert b"desk" not in stream.raw  # a block's reason is for operations only
    response = await gateway.client.post("/v1/events/fest-3/seats/unblock", json={"seats": ["K-2"]})
    assert response.status_code == 200
    await stream.wait_for(
        lambda s: s.map.seats == {} and s.map.availability["seats"]["blocked"] == 0, "unblocked"
    )
    await stream.close()


async def test_a_subscriber_that_reads_nothing_holds_up_no_other_and_starts_over_once_it_reads(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that reads nothing (a tiny receive buffer) while its first message is larger than every
    buffer on the way (40,000 blocked seats, about 5 MB): its stream blocks on the socket, the other
    subscriber gets every change on time, and once the stalled one reads it is sent a fresh snapshot, its
    missed messages having been dropped for room (2 kept here)."""
    monkeypatch.setattr(streams, "HISTORY_PER_EVENT", 2)
    blocked = [f"B-{i:05d}-" + "x" * 112 for i in range(40_000)]
    await put_inventory(gateway, "hall-9", {"seats": [*blocked, *(f"S-{i}" for i in range(10))]})
    response = await gateway.client.post("/v1/events/hall-9/seats/block", json={"seats": blocked})
    assert response.status_code == 200, response.text
    port = int(gateway.url.rpartition(":")[2])
    stalled_socket = socket.socket()
    stalled_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled_socket.setblocking(False)
    await asyncio.get_running_loop().sock_connect(stalled_socket, ("127.0.0.1", port))
    request = f"GET /v1/events/hall-9/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    await asyncio.get_running_loop().sock_sendall(stalled_socket, request.encode())
    await eventually(lambda: hub_of(gateway).subscribers == 1, "the stalled client subscribed")
    reader = await SseClient.open(gateway, "hall-9")
    await reader.wait_for(lambda s: len(s.map.seats) == 40_000, "the snapshot")
    for i in range(6):
        hold_id = await create_hold(gateway, {"event_id": "hall-9", "slots": [f"S-{i}"], "holder": "uma"})
        await reader.wait_for(lambda s, i=i: s.map.seats.get(f"S-{i}") == "held", f"S-{i} held")
        await act(gateway, hold_id, "confirm", "uma")
        await reader.wait_for(lambda s, i=i: s.map.seats.get(f"S-{i}") == "confirmed", f"S-{i} confirmed")
    assert [e.type for e in reader.events].count("snapshot") == 1
    expected = dict(reader.map.seats)

    # Another stalled client that goes away without reading: its blocked stream ends and its place is freed.
    gone = socket.socket()
    gone.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    gone.setblocking(False)
    await asyncio.get_running_loop().sock_connect(gone, ("127.0.0.1", port))
    await asyncio.get_running_loop().sock_sendall(gone, request.encode())
    await eventually(lambda: hub_of(gateway).subscribers == 3, "the second stalled client subscribed")
    gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, at once
    gone.close()
    await eventually(lambda: hub_of(gateway).subscribers == 2, "the client gone is removed")

    stalled = SseClient(*await asyncio.open_connection(sock=stalled_socket))
    await stalled._read_head()
    stalled.start_reading()
    await stalled.wait_for(lambda s: s.map.seats == expected, "the stalled client caught up")
    assert [e.type for e in stalled.events].count("snapshot") == 2, [e.type for e in stalled.events]
    await stalled.close()
    await reader.close()
    await eventually(lambda: hub_of(gateway).subscribers == 0, "both removed")


async def test_a_subscriber_too_far_behind_starts_over_from_a_snapshot(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub keeps a few messages per event (here 3): a subscriber whose next message was dropped for room
    (its socket, here its consumer, took nothing meanwhile) is sent a fresh snapshot, not a gap."""
    monkeypatch.setattr(streams, "HISTORY_PER_EVENT", 3)
    hub = hub_of(gateway)
    behind = hub.subscribe("show-10", None)
    await hub.first_snapshot(behind)
    frames = hub.frames(behind)
    assert (await anext(frames)).startswith(b"id: ")
    watcher = await SseClient.open(gateway, "show-10")
    for i in range(8):
        await create_hold(gateway, {"event_id": "show-10", "slots": [f"N-{i}"], "holder": "vic"})
        await watcher.wait_for(lambda s, i=i: f"N-{i}" in s.map.seats, f"N-{i} held")
    assert len([e for e in watcher.events if e.type == "changes"]) == 8
    resync = await asyncio.wait_for(anext(frames), DEADLINE_S)
    assert b"event: snapshot" in resync
    assert all(f'"N-{i}":"held"'.encode() in resync for i in range(8))
    await frames.aclose()
    await watcher.close()
    await eventually(lambda: hub.subscribers == 0, "both removed")


async def test_a_thousand_idle_subscribers_cost_postgres_no_query_each(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The hub's statements (the feed, the availability cache's reads, snapshots, inventory checks) for K
    changes are the same with one subscriber and with a thousand, and every subscriber gets every change."""
    settings = stream_settings(database_url, redis_url, key_prefix, stream_inventory_check_s=60)
    changes = 6
    subscribers = 1000
    watched = ("hold_events_after", "event_availability", "event_seat_states", "inventory_versions")
    async with running_gateway(settings) as gateway:
        await put_inventory(
            gateway,
            "arena",
            {"seats": [f"R-{i}" for i in range(20)], "pools": [{"pool_id": "ga", "capacity": 100}]},
        )

        async def k_changes(clients: list[SseClient], round_no: int) -> dict[str, float]:
            before = await query_counts(gateway)
            for i in range(changes):
                await create_hold(
                    gateway,
                    {
                        "holder": f"w{round_no}-{i}",
                        "items": [
                            {"event_id": "arena", "slots": [f"R-{round_no * changes + i}"]},
                            {"event_id": "arena", "pool_id": "ga", "quantity": 1},
                        ],
                    },
                )
                seat = f"R-{round_no * changes + i}"
                held = round_no * changes + i + 1
                for client in clients:
                    await client.wait_for(
                        lambda s, seat=seat, held=held: (
                            s.map.seats.get(seat) == "held" and s.map.pools["ga"]["held"] == held
                        ),
                        f"{seat} held and {held} units",
                    )
            after = await query_counts(gateway)
            return {name: after.get(name, 0) - before.get(name, 0) for name in watched}

        one = await SseClient.open(gateway, "arena")
        await one.wait_for(lambda s: bool(s.events), "snapshot")
        alone = await k_changes([one], 0)

        crowd = await asyncio.gather(*(SseClient.open(gateway, "arena") for _ in range(subscribers - 1)))
        everyone = [one, *crowd]
        assert all(c.status == 200 for c in everyone)
        for client in crowd:
            await client.wait_for(lambda s: bool(s.events), "snapshot")
        assert hub_of(gateway).subscribers == subscribers
        together = await k_changes(everyone, 1)

        print(f"statements for {changes} changes: 1 subscriber {alone}; {subscribers} subscribers {together}")
        assert alone["hold_events_after"] <= changes + 2, alone
        for name in watched:
            assert together[name] <= alone[name] + 2, (name, alone, together)
        expected = {f"R-{i}": "held" for i in range(2 * changes)}
        assert all(c.map.seats == expected for c in everyone)
        await asyncio.gather(*(c.close() for c in everyone))
        await eventually(lambda: hub_of(gateway).subscribers == 0, "every subscriber removed")


async def test_disconnected_subscribers_are_removed(gateway: Gateway) -> None:
    clients = [await SseClient.open(gateway, f"show-{i % 3}") for i in range(12)]
    await eventually(lambda: hub_of(gateway).subscribers == 12, "12 subscribed")
    await asyncio.gather(*(c.close() for c in clients[:6]))
    await eventually(lambda: hub_of(gateway).subscribers == 6, "6 removed")
    await asyncio.gather(*(c.close() for c in clients[6:]))
    await eventually(lambda: hub_of(gateway).subscribers == 0, "all removed")
    metrics = (await gateway.client.get("/metrics")).text
    assert re.search(r"^gateway_stream_subscribers 0\.0$", metrics, re.M), metrics


async def test_httpx_reads_the_stream_too(gateway: Gateway) -> None:
    """A stock HTTP client's line reader sees the same wire format (the SSE grammar, one data line)."""
    async with gateway.client.stream("GET", "/v1/events/show-11/stream") as response:
        assert response.status_code == 200
        lines = []
        async for line in response.aiter_lines():
            lines.append(line)
            if line == "":
                break
    assert lines[0].startswith("id: ")
    assert lines[1] == "event: snapshot"
    assert json.loads(lines[2].removeprefix("data: ")) == {
        "event_id": "show-11",
        "availability": None,
        "seats": {},
    }
    await eventually(lambda: hub_of(gateway).subscribers == 0, "the subscriber removed")


async def test_an_id_from_one_worker_resumes_on_another(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """Ids are positions in the one hold event feed, not a worker's counter: a client that lost its stream
    on one worker resumes on another that watches the event, with the changes it missed."""
    settings = stream_settings(database_url, redis_url, key_prefix)
    async with running_gateway(settings) as first, running_gateway(settings) as second:
        watcher = await SseClient.open(second, "show-12")  # the second worker keeps the event's messages
        await watcher.wait_for(lambda s: bool(s.events), "snapshot")
        stream = await SseClient.open(first, "show-12")
        await stream.wait_for(lambda s: bool(s.events), "snapshot")
        hold_id = await create_hold(first, {"event_id": "show-12", "slots": ["P-1"], "holder": "wes"})
        await stream.wait_for(lambda s: s.map.seats == {"P-1": "held"}, "P-1 held")
        await watcher.wait_for(lambda s: s.map.seats == {"P-1": "held"}, "P-1 held on the second worker")
        seen = stream.last_id
        await stream.close()

        await act(first, hold_id, "confirm", "wes")
        await create_hold(first, {"event_id": "show-12", "slots": ["P-2"], "holder": "wes"})
        await watcher.wait_for(lambda s: s.map.seats == {"P-1": "confirmed", "P-2": "held"}, "both changes")
        resumed = await SseClient.open(second, "show-12", last_event_id=str(seen))
        resumed.map.seats = {"P-1": "held"}
        await resumed.wait_for(
            lambda s: s.map.seats == {"P-1": "confirmed", "P-2": "held"}, "the missed changes"
        )
        assert [e.type for e in resumed.events] == ["changes"] * len(resumed.events)
        await resumed.close()
        await watcher.close()
