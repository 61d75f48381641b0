"""Event-sharded pods: two pods (each its own Postgres database and Redis namespace), a gateway for each, one
shard map file. Real servers throughout; pod b's Postgres is a server of its own so that it can be stopped."""

import asyncio
import json
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest

from gateway import cli, pods, shard_map
from gateway.app import create_app
from gateway.config import Settings
from gateway.embedded import LocalPostgres
from gateway.shard_map import Pod, ShardMap, ShardMapError, bucket_of
from tests.conftest import make_settings
from tests.support import QUIET_BACKGROUND, Gateway, fetch, migrated_database, running_gateway

BUCKETS = 8
CONTENDERS_PER_SEAT = 3


@dataclass
class TwoPods:
    map_path: Path
    gateways: dict[str, Gateway]
    databases: dict[str, str]
    pod_b_server: LocalPostgres

    def current_map(self) -> ShardMap:
        return shard_map.load(self.map_path)

    def events_of(self, pod: str, count: int = 3, *, bucket: int | None = None) -> list[str]:
        """Event ids the current map gives `pod` (all in `bucket`, if given)."""
        the_map = self.current_map()
        found = [
            event
            for event in (f"show-{n}" for n in range(10_000))
            if the_map.pod_of(event) == pod and (bucket is None or bucket_of(event, BUCKETS) == bucket)
        ]
        return found[:count]


def _map(databases: dict[str, str], gateway_urls: dict[str, str] | None = None) -> ShardMap:
    urls = gateway_urls or {}
    return ShardMap(
        version=1,
        buckets=BUCKETS,
        pods={pod: Pod(url, urls.get(pod)) for pod, url in databases.items()},
        assignments={"a": ["0-3"], "b": ["4-7"]},
    )


@pytest.fixture(name="two_pods")
async def fx_two_pods(
    database_url: str, redis_url: str, key_prefix: str, tmp_path: Path
) -> AsyncIterator[TwoPods]:
    with LocalPostgres(tmp_path / "pod-b", durable=False) as pod_b_server:
        databases = {"a": database_url, "b": await migrated_database(pod_b_server, "pod_b")}
        map_path = tmp_path / "shard-map.json"
        shard_map.write(map_path, _map(databases))
        states = await pods.init(map_path)
        assert all(state.agrees for state in states), states

        def settings(pod: str) -> Settings:
            return make_settings(
                databases[pod],
                redis_url,
                f"{key_prefix}{pod}",
                **QUIET_BACKGROUND,
                shard_map=str(map_path),
                pod=pod,
            )

        async with running_gateway(settings("a")) as a, running_gateway(settings("b")) as b:
            # The map tells clients sent to the wrong pod where its gateways are.
            shard_map.write(map_path, _map(databases, {"a": a.url, "b": b.url}))
            await _until_reloaded(a, b)
            yield TwoPods(map_path, {"a": a, "b": b}, databases, pod_b_server)


async def _until_reloaded(*gateways: Gateway) -> None:
    """Each gateway reads the map file again within a second of a change: wait until they have."""
    deadline = time.monotonic() + 30
    for gateway in gateways:
        shard_map_file = gateway.service.shard_map
        assert shard_map_file is not None
        expected = shard_map.load(shard_map_file.path)
        while shard_map_file.current() != expected:
            assert time.monotonic() < deadline, "a gateway did not read the new shard map"
            await asyncio.sleep(0.1)


async def test_the_bucket_of_an_event_is_the_same_in_python_and_in_postgres(database_url: str) -> None:
    events = [f"event-{n}" for n in range(300)] + ["", "é", "a" * 128, "show:2026-12-08~A.1"]
    rows = await fetch(
        database_url, "SELECT e, gateway_bucket(e, $2) AS bucket FROM unnest($1::text[]) AS e", events, 64
    )
    assert {row["e"]: row["bucket"] for row in rows} == {event: bucket_of(event, 64) for event in events}


def test_a_shard_map_assigns_every_bucket_once(tmp_path: Path) -> None:
    databases = {"a": "postgresql://a/db", "b": "postgresql://b/db"}
    path = tmp_path / "map.json"
    shard_map.write(path, _map(databases))
    the_map = shard_map.load(path)
    assert (the_map.buckets_of("a"), the_map.buckets_of("b")) == ([0, 1, 2, 3], [4, 5, 6, 7])
    moved = the_map.with_bucket_moved(2, "b")
    assert (moved.version, moved.assignments) == (2, {"a": ["0-1", "3"], "b": ["2", "4-7"]})
    for assignments, named in [
        ({"a": ["0-3"], "b": ["3-7"]}, "bucket 3 is assigned to both"),
        ({"a": ["0-2"], "b": ["4-7"]}, "buckets 3 are assigned to no pod"),
        ({"a": ["0-3"], "c": ["4-7"]}, "pod 'c'"),
        ({"a": ["0-3"], "b": ["4-8"]}, "not within buckets 0-7"),
    ]:
        pods_json = {pod: {"database_url": url} for pod, url in databases.items()}
        document = {"version": 1, "buckets": 8, "pods": pods_json, "assignments": assignments}
        path.write_bytes(msgspec.json.encode(document))
        with pytest.raises(ShardMapError, match=named):
            shard_map.load(path)


async def test_storms_on_both_pods_each_win_in_their_own_pod(two_pods: TwoPods) -> None:
    """Holders storm events of both pods, each request sent to either gateway (as a load balancer that knows
    nothing of pods would): a gateway sends another pod's requests on to that pod's gateway, so there is one
    winner per seat, each hold in its own pod's database only, its id naming its pod; a confirm by id alone
    works through either gateway."""
    asks = [
        (pod, event, f"S-{seat}", f"h-{pod}-{event}-{seat}-{n}")
        for pod in ("a", "b")
        for event in two_pods.events_of(pod)
        for seat in range(4)
        for n in range(CONTENDERS_PER_SEAT)
    ]
    barrier = asyncio.Barrier(len(asks))
    entry = [two_pods.gateways["a"], two_pods.gateways["b"]]

    async def one(index: int) -> tuple[str, str, httpx.Response]:
        pod, event, seat, holder = asks[index]
        await barrier.wait()
        return pod, f"{event}/{seat}", await entry[index % 2].hold(event, [seat], holder)

    answers = await asyncio.gather(*(one(index) for index in range(len(asks))))

    assert Counter(r.status_code for _, _, r in answers) == {201: len(asks) // 3, 409: 2 * len(asks) // 3}
    winners: dict[str, list[str]] = defaultdict(list)
    holders: dict[str, str] = {}
    per_seat: Counter[str] = Counter()
    for pod, seat, response in answers:
        if response.status_code == 201:
            hold = response.json()
            assert hold["id"].startswith(f"{pod}.")
            winners[pod].append(hold["id"])
            holders[hold["id"]] = hold["holder"]
            per_seat[seat] += 1
    assert set(per_seat.values()) == {1}
    assert len(per_seat) == len(asks) // CONTENDERS_PER_SEAT
    for pod, other in (("a", "b"), ("b", "a")):
        stored = await fetch(two_pods.databases[pod], "SELECT id FROM holds")
        assert sorted(row["id"] for row in stored) == sorted(winners[pod])
        hold_id = winners[pod][0]
        through_other = await two_pods.gateways[other].post(
            f"/v1/holds/{hold_id}/confirm", {"holder": holders[hold_id]}
        )
        assert through_other.status_code == 200
        assert through_other.json()["status"] == "confirmed"
        read = await two_pods.gateways[other].client.get(f"/v1/holds/{hold_id}")
        assert (read.status_code, read.json()["status"]) == (200, "confirmed")


async def test_a_request_is_sent_on_once_at_most(two_pods: TwoPods) -> None:
    """A request that arrives sent on by another gateway and is still not this pod's (the two gateways' maps
    disagree) is answered 421 wrong-pod, naming the pod this gateway's map gives, never sent back."""
    event = two_pods.events_of("b")[0]
    answer = await two_pods.gateways["a"].post(
        "/v1/holds", {"event_id": event, "slots": ["A-1"], "holder": "zoe"}, {"X-Gateway-Forwarded-From": "b"}
    )
    assert answer.status_code == 421
    problem = answer.json()
    assert (problem["type"], problem["pod"], problem["gateway_url"]) == (
        "/problems/wrong-pod",
        "b",
        two_pods.gateways["b"].url,
    )
    assert await fetch(two_pods.databases["b"], "SELECT id FROM holds") == []


async def test_a_hold_of_events_in_two_pods_is_refused(two_pods: TwoPods) -> None:
    mixed = await two_pods.gateways["a"].post(
        "/v1/holds",
        {
            "holder": "mia",
            "items": [
                {"event_id": two_pods.events_of("a")[0], "slots": ["M-1"]},
                {"event_id": two_pods.events_of("b")[0], "slots": ["M-1"]},
            ],
        },
    )
    assert mixed.status_code == 422
    assert "several pods" in mixed.json()["detail"]


async def test_a_gateway_with_a_stale_map_is_refused_by_the_pods_fence(
    two_pods: TwoPods, tmp_path: Path
) -> None:
    """A bucket moves from pod a to pod b while pod a's gateway still routes by the old map: its claim for an
    event of that bucket is refused by pod a's database (503 stale-shard-map) and nothing is written there;
    pod b, which reads the new map, takes it."""
    stale_copy = tmp_path / "stale-map.json"
    shutil.copy(two_pods.map_path, stale_copy)
    gateway_a = two_pods.gateways["a"]
    assert gateway_a.service.shard_map is not None
    gateway_a.service.shard_map.path = stale_copy  # pod a's gateway stops seeing the map's next versions
    bucket = 1
    (event,) = two_pods.events_of("a", 1, bucket=bucket)

    new_map = await pods.move(two_pods.map_path, bucket, "b")
    assert (new_map.version, new_map.owner(bucket)) == (2, "b")
    await _until_reloaded(two_pods.gateways["b"])

    refused = await gateway_a.hold(event, ["A-1"], "alice")
    assert refused.status_code == 503
    assert refused.json()["type"] == "/problems/stale-shard-map"
    assert "Retry-After" in refused.headers
    assert await fetch(two_pods.databases["a"], "SELECT id FROM holds") == []
    taken = await two_pods.gateways["b"].hold(event, ["A-1"], "alice")
    assert taken.status_code == 201
    assert taken.json()["id"].startswith("b.")
    states = await pods.status(two_pods.map_path)
    assert all(state.agrees for state in states), states


async def test_a_bucket_with_live_holds_does_not_move(two_pods: TwoPods) -> None:
    bucket = 2
    (event,) = two_pods.events_of("a", 1, bucket=bucket)
    held = await two_pods.gateways["a"].hold(event, ["A-1"], "alice")
    assert held.status_code == 201

    with pytest.raises(pods.PodsError, match="live seat or pool rows"):
        await pods.move(two_pods.map_path, bucket, "b")

    assert two_pods.current_map().version == 1  # not written
    states = await pods.status(two_pods.map_path)
    assert all(state.agrees for state in states), states  # pod a still owns it
    confirmed = await two_pods.gateways["a"].post(
        f"/v1/holds/{held.json()['id']}/confirm", {"holder": "alice"}
    )
    assert confirmed.status_code == 200


async def test_a_stopped_postgres_of_one_pod_turns_away_only_its_events(two_pods: TwoPods) -> None:
    two_pods.pod_b_server.stop("immediate")
    try:
        for n, event in enumerate(two_pods.events_of("b")):
            answer = await two_pods.gateways["b"].hold(event, [f"B-{n}"], "bob")
            assert answer.status_code == 503, answer.text
        for n, event in enumerate(two_pods.events_of("a")):
            assert (await two_pods.gateways["a"].hold(event, [f"B-{n}"], "bob")).status_code == 201
    finally:
        two_pods.pod_b_server.start()


async def test_a_gateway_refuses_to_serve_a_pod_whose_database_is_not_that_pods(
    database_url: str, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    map_path = tmp_path / "shard-map.json"
    shard_map.write(map_path, _map({"a": database_url, "b": database_url}))
    settings = make_settings(database_url, redis_url, key_prefix, shard_map=str(map_path), pod="a")
    refused: list[Exception] = []
    try:
        async with create_app(settings).lifespan():
            pass
    except* RuntimeError as group:  # the lifespan's task group wraps it
        refused.extend(group.exceptions)
    assert len(refused) == 1
    assert "not set up as a pod" in str(refused[0])
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pod_identity") == 0
    finally:
        await conn.close()


async def test_client_keys_copied_to_every_pod_work_through_either_gateway(two_pods: TwoPods) -> None:
    """A client key made on pod a's gateway is copied to pod b (`gateway pods keys`): pod b then wants a key
    too, a create for a pod b event with that key works through either gateway (pod b checks it), and once
    the key is revoked on pod a and copied again, pod b refuses it."""
    created = await two_pods.gateways["a"].client.post("/v1/client-keys", json={"name": "frontend"})
    assert created.status_code == 201
    other = await two_pods.gateways["a"].client.post("/v1/client-keys", json={"name": "box office"})
    assert other.status_code == 201
    key = {"Authorization": f"Bearer {created.json()['key']}"}
    (event,) = two_pods.events_of("b", 1)
    body = {"event_id": event, "slots": ["K-0"], "holder": "kim"}
    assert (await two_pods.gateways["b"].post("/v1/holds", body)).status_code == 201  # no key there yet: open

    assert await pods.copy_client_keys(two_pods.map_path) == {"b": (2, 0)}
    body["slots"] = ["K-1"]
    deadline = time.monotonic() + 30
    while (answer := await two_pods.gateways["b"].post("/v1/holds", body)).status_code != 401:
        assert answer.status_code == 201
        assert time.monotonic() < deadline, "pod b still takes requests without a key"
        body["slots"] = [f"K-{time.monotonic_ns()}"]
        await asyncio.sleep(0.1)
    assert (await two_pods.gateways["b"].post("/v1/holds", body, key)).status_code == 201
    body["slots"] = ["K-2"]
    assert (await two_pods.gateways["a"].post("/v1/holds", body, key)).status_code == 201

    revoked = await two_pods.gateways["a"].client.delete(f"/v1/client-keys/{created.json()['id']}")
    assert revoked.status_code == 204
    assert await pods.copy_client_keys(two_pods.map_path) == {"b": (0, 1)}
    body["slots"] = ["K-3"]
    deadline = time.monotonic() + 30
    while (answer := await two_pods.gateways["b"].post("/v1/holds", body, key)).status_code != 401:
        assert answer.status_code == 201
        assert time.monotonic() < deadline, "pod b still takes the revoked key"
        body["slots"] = [f"K-{time.monotonic_ns()}"]
        await asyncio.sleep(0.1)


async def test_an_events_routes_are_answered_by_its_pod_through_either_gateway(two_pods: TwoPods) -> None:
    """An event's inventory, seat and stats routes sent to the other pod's gateway are answered by the event's
    pod (the inventory is stored there only); its stream is not relayed: 421 names the pod."""
    (event,) = two_pods.events_of("b", 1)
    gateway_a = two_pods.gateways["a"]
    inventory = await gateway_a.client.put(
        f"/v1/events/{event}/inventory",
        json={"seats": ["A-1", "A-2"], "pools": [{"pool_id": "floor", "capacity": 5}]},
    )
    assert inventory.status_code in (200, 201), inventory.text
    assert await fetch(two_pods.databases["a"], "SELECT event_id FROM event_inventories") == []
    stored = await fetch(two_pods.databases["b"], "SELECT event_id FROM event_inventories")
    assert [row["event_id"] for row in stored] == [event]
    assert (await gateway_a.hold(event, ["A-1"], "alice")).status_code == 201
    seat = await gateway_a.client.get(f"/v1/events/{event}/slots/A-1")
    assert (seat.status_code, seat.json()["state"]) == (200, "held")
    stats = await gateway_a.client.get(f"/v1/events/{event}/stats")
    assert (stats.status_code, stats.json()["holds"]["active"]) == (200, 1)
    stream = await gateway_a.client.get(f"/v1/events/{event}/stream")
    assert (stream.status_code, stream.json()["pod"]) == (421, "b")


async def test_the_cli_shows_holds_and_stats_of_every_pod(
    two_pods: TwoPods, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gateway holds --map FILE` merges every pod's holds in expiry order; `gateway stats --map FILE` shows
    each pod's numbers."""
    monkeypatch.delenv("GATEWAY_URL", raising=False)
    monkeypatch.delenv("GATEWAY_OPS_TOKEN", raising=False)
    made = []
    for n, pod in enumerate(["a", "b", "a", "b"]):
        answer = await two_pods.gateways[pod].hold(
            two_pods.events_of(pod)[0], [f"C-{n}"], f"h{n}", ttl_seconds=60 + n
        )
        assert answer.status_code == 201
        made.append(answer.json()["id"])

    code = await asyncio.to_thread(cli.main, ["holds", "--map", str(two_pods.map_path), "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [hold["id"] for hold in listed["holds"]] == made  # expiry order, across the pods
    code = await asyncio.to_thread(
        cli.main, ["holds", "--map", str(two_pods.map_path), "--limit", "3", "--json"]
    )
    assert (code, json.loads(capsys.readouterr().out)["more_in_pods"]) == (0, ["b"])

    code = await asyncio.to_thread(cli.main, ["stats", "--map", str(two_pods.map_path), "--json"])
    stats = json.loads(capsys.readouterr().out)["pods"]
    assert code == 0
    assert {pod: stats[pod]["holds"]["active"] for pod in ("a", "b")} == {"a": 2, "b": 2}
    code = await asyncio.to_thread(cli.main, ["stats", "--map", str(two_pods.map_path)])
    text = capsys.readouterr().out
    assert (code, text.count("holds now")) == (0, 2)
    assert text.startswith("pod a")
    assert "\npod b\n" in text
