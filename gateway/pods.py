"""`gateway pods`: make each pod's database agree with the shard map, and move a bucket between pods.

    gateway pods init   --map FILE            each pod's database: its name, its buckets, the fence triggers
    gateway pods status --map FILE            what each pod's database owns, against the map
    gateway pods move   --map FILE BUCKET POD the bucket to POD, and the map's next version written to FILE
    gateway pods keys   --map FILE [--from POD]
                                              the client keys of one pod's database (the first pod's by
                                              default) made those of every other pod's

A move refuses while the bucket has live holds (held and not lapsed, or confirmed: a sold seat stays sold
only where its row is) or an inventory in the pod that owns it: those rows would be stranded. The owner gives
the bucket up first (its fence then refuses every claim in it, after waiting for the claims in flight), the
new owner takes it, and only then is the map's new version written; run again, a move that stopped half way
finishes. Between the two steps the bucket's events are refused (503 stale-shard-map) by both pods.
"""

from dataclasses import dataclass
from pathlib import Path

import asyncpg

from gateway import shard_map, sql
from gateway.migrations import migrate
from gateway.shard_map import ShardMap


class PodsError(Exception):
    """An operator command refused; the message says why and changed nothing that it names."""


@dataclass(frozen=True)
class PodState:
    pod: str
    identity: str | None  # the pod name its database records (None: not set up)
    buckets: list[int]  # those its database owns
    expected: list[int]  # those the map gives it

    @property
    def agrees(self) -> bool:
        return self.identity == self.pod and self.buckets == self.expected


async def init(path: Path) -> list[PodState]:
    """Migrate each pod's database, record its name and the map's bucket count, own exactly the map's buckets
    for it (giving one up only if nothing would be stranded) and attach the fence."""
    the_map = shard_map.load(path)
    for pod in the_map.pods:
        conn = await _connect(the_map, pod)
        try:
            await migrate(conn)
            identity = await conn.fetchrow(sql.POD_IDENTITY)
            if identity is not None and (identity["pod"], identity["buckets"]) != (pod, the_map.buckets):
                raise PodsError(
                    f"the database of pod {pod!r} is pod {identity['pod']!r} of a map with "
                    f"{identity['buckets']} buckets already"
                )
            async with conn.transaction():
                await conn.execute(sql.SET_POD_IDENTITY, pod, the_map.buckets)
                wanted = set(the_map.buckets_of(pod))
                for record in await conn.fetch(sql.POD_BUCKETS):
                    if record["bucket"] not in wanted:
                        await _give_up(conn, pod, record["bucket"], the_map.buckets)
                for bucket in sorted(wanted):
                    await conn.execute(sql.OWN_POD_BUCKET, bucket, the_map.version)
                await conn.execute(sql.ATTACH_POD_FENCE)
        finally:
            await conn.close()
    return await status(path)


async def status(path: Path) -> list[PodState]:
    the_map = shard_map.load(path)
    states = []
    for pod in the_map.pods:
        conn = await _connect(the_map, pod)
        try:
            identity = await conn.fetchrow(sql.POD_IDENTITY)
            owned = [record["bucket"] for record in await conn.fetch(sql.POD_BUCKETS)]
        finally:
            await conn.close()
        recorded = None if identity is None else str(identity["pod"])
        states.append(PodState(pod, recorded, owned, the_map.buckets_of(pod)))
    return states


async def move(path: Path, bucket: int, to_pod: str) -> ShardMap:
    """Move `bucket` to `to_pod`; the new map, written to `path`."""
    the_map = shard_map.load(path)
    if to_pod not in the_map.pods:
        raise PodsError(f"the map has no pod {to_pod!r}")
    if not 0 <= bucket < the_map.buckets:
        raise PodsError(f"bucket {bucket} is not within 0-{the_map.buckets - 1}")
    from_pod = the_map.owner(bucket)
    if from_pod == to_pod:
        raise PodsError(f"bucket {bucket} is pod {to_pod!r}'s already")
    new_map = the_map.with_bucket_moved(bucket, to_pod)
    source = await _connect(the_map, from_pod)
    try:
        async with source.transaction():
            await _give_up(source, from_pod, bucket, the_map.buckets)
    finally:
        await source.close()
    target = await _connect(the_map, to_pod)
    try:
        await target.execute(sql.OWN_POD_BUCKET, bucket, new_map.version)
    finally:
        await target.close()
    shard_map.write(path, new_map)
    return new_map


async def copy_client_keys(path: Path, from_pod: str | None = None) -> dict[str, tuple[int, int]]:
    """Make every other pod's client keys those of `from_pod` (a request's key is checked by the database of
    the pod that serves it, so each pod needs every key): missing keys added, keys the source no longer has
    revoked; each pod's workers are told at once. Per pod: (added, revoked)."""
    the_map = shard_map.load(path)
    source_pod = from_pod or next(iter(the_map.pods))
    if source_pod not in the_map.pods:
        raise PodsError(f"the map has no pod {source_pod!r}")
    source = await _connect(the_map, source_pod)
    try:
        keys = {record["id"]: record for record in await source.fetch(sql.CLIENT_KEYS_TO_COPY)}
    finally:
        await source.close()
    changes = {}
    for pod in the_map.pods:
        if pod == source_pod:
            continue
        conn = await _connect(the_map, pod)
        try:
            async with conn.transaction():
                present = {record["id"]: record for record in await conn.fetch(sql.CLIENT_KEYS_TO_COPY)}
                stale = [key_id for key_id, record in present.items() if keys.get(key_id) != record]
                for key_id in stale:
                    await conn.fetchval(sql.DELETE_CLIENT_KEY, key_id, sql.CLIENT_KEYS_CHANNEL)
                added = [
                    record for key_id, record in keys.items() if key_id not in present or key_id in stale
                ]
                for record in added:
                    await conn.fetch(
                        sql.INSERT_CLIENT_KEY,
                        record["id"],
                        record["name"],
                        record["key_sha256"],
                        sql.CLIENT_KEYS_CHANNEL,
                    )
        finally:
            await conn.close()
        changes[pod] = (len(added), len([key_id for key_id in stale if key_id not in keys]))
    return changes


async def _give_up(conn: asyncpg.Connection, pod: str, bucket: int, buckets: int) -> None:
    """In the caller's transaction: release the bucket (waiting for the claims in flight in it), then refuse
    (the transaction rolls back) if that would strand live holds or an inventory."""
    await conn.fetch(sql.RELEASE_POD_BUCKET, bucket)
    contents = await conn.fetchrow(sql.BUCKET_CONTENTS, bucket, buckets)
    assert contents is not None
    if contents["live_rows"] or contents["inventories"]:
        raise PodsError(
            f"bucket {bucket} of pod {pod!r} has {contents['live_rows']} live seat or pool rows and "
            f"{contents['inventories']} inventories: a move would strand them (wait until its events are "
            "over, or move it before they go on sale)"
        )


async def _connect(the_map: ShardMap, pod: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(the_map.pods[pod].database_url, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise PodsError(f"cannot reach the database of pod {pod!r}: {exc}") from exc
