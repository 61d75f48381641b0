"""The shard map of event-sharded pods (docs/scaling.md): which pod owns each event.

A pod is one PostgreSQL (with its own failover) and one Redis (with its own Sentinel), served by gateways of
its own. Events are spread over a fixed number of buckets (the first 32 bits of md5(event_id), modulo the
bucket count: Postgres's gateway_bucket() computes the same), and the map assigns each bucket to one pod. The
map is a JSON file, versioned: every gateway and operator command reads the same file (a config map, a file
shipped with the release); `gateway pods move` writes the next version.

The map is a routing hint, never the authority: each pod's database records the buckets it owns (pod_buckets),
and every claim checks there, in its own transaction, that the event's bucket is still the pod's. A gateway
with a stale map is refused, never able to sell a seat in a pod that no longer owns it.

    {"version": 1, "buckets": 64,
     "pods": {"a": {"database_url": "postgresql://...", "gateway_url": "http://pod-a:8000"},
              "b": {"database_url": "postgresql://...", "gateway_url": "http://pod-b:8000"}},
     "assignments": {"a": ["0-31"], "b": ["32-63"]}}
"""

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

POD_NAME_PATTERN = r"\A[a-z0-9]{1,16}\Z"
# A hold id of a pod starts with its name and this separator (a hold is found by its id alone).
HOLD_ID_SEPARATOR = "."
# A gateway looks at the map file's modification time at most this often.
RELOAD_INTERVAL_S = 1.0

PodName = Annotated[str, Meta(pattern=POD_NAME_PATTERN)]
_RANGE = re.compile(r"\A(\d+)(?:-(\d+))?\Z")


class ShardMapError(Exception):
    """The shard map cannot be read or is inconsistent; the message says where."""


class Pod(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    database_url: str  # for the operator commands (the gateways of the pod have their own settings)
    gateway_url: str | None = None  # where the pod's gateways are served, told to clients sent elsewhere


class ShardMap(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: Annotated[int, Meta(ge=1)]
    buckets: Annotated[int, Meta(ge=1, le=65_536)]
    pods: dict[PodName, Pod]
    # pod -> bucket numbers and ranges ("0-31", "40")
    assignments: dict[PodName, list[str]]

    def __post_init__(self) -> None:
        for pod in self.assignments:
            if pod not in self.pods:
                raise ValueError(f"assignments name pod {pod!r}, which `pods` does not list")
        self.owners()  # every bucket assigned, once

    def owners(self) -> list[str]:
        """The pod of each bucket, by bucket number."""
        owner: dict[int, str] = {}
        for pod, ranges in self.assignments.items():
            for bucket in _expand(ranges, self.buckets):
                if bucket in owner:
                    raise ValueError(f"bucket {bucket} is assigned to both {owner[bucket]!r} and {pod!r}")
                owner[bucket] = pod
        missing = [bucket for bucket in range(self.buckets) if bucket not in owner]
        if missing:
            raise ValueError(f"buckets {', '.join(_ranges(missing))} are assigned to no pod")
        return [owner[bucket] for bucket in range(self.buckets)]

    def owner(self, bucket: int) -> str:
        return self.owners()[bucket]

    def pod_of(self, event_id: str) -> str:
        return self.owner(bucket_of(event_id, self.buckets))

    def buckets_of(self, pod: str) -> list[int]:
        return sorted(_expand(self.assignments.get(pod, []), self.buckets))

    def with_bucket_moved(self, bucket: int, pod: str) -> "ShardMap":
        """The next version, `bucket` assigned to `pod`."""
        assignments: dict[str, list[str]] = {}
        for name in sorted({*self.assignments, pod}):
            kept = [b for b in self.buckets_of(name) if b != bucket]
            taken = [bucket] if name == pod else []
            if kept or taken:
                assignments[name] = _ranges(kept + taken)
        return msgspec.structs.replace(self, version=self.version + 1, assignments=assignments)


def bucket_of(event_id: str, buckets: int) -> int:
    """The event's bucket: the first 32 bits of md5(event_id) modulo `buckets` (SQL's gateway_bucket())."""
    return int(hashlib.md5(event_id.encode(), usedforsecurity=False).hexdigest()[:8], 16) % buckets


def pod_of_hold(hold_id: str) -> str | None:
    """The pod a hold id names, or None for an id made without pods."""
    pod, separator, _ = hold_id.partition(HOLD_ID_SEPARATOR)
    return pod if separator and re.match(POD_NAME_PATTERN, pod) else None


def load(path: Path) -> ShardMap:
    try:
        return msgspec.json.decode(path.read_bytes(), type=ShardMap)
    except OSError as exc:
        raise ShardMapError(f"cannot read the shard map {path}: {exc}") from exc
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ShardMapError(f"the shard map {path} is invalid: {exc}") from exc


def write(path: Path, shard_map: ShardMap) -> None:
    """Replace the file at once (a reader sees the old map or the new, never half of one)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_bytes(msgspec.json.format(msgspec.json.encode(shard_map), indent=2) + b"\n")
    temporary.replace(path)


class ShardMapFile:
    """A gateway's view of the map file: read again when the file changes (looked at once a second at
    most), so a new version reaches every worker without a restart. A file that became unreadable keeps the
    last good map (the fence in Postgres still refuses what it gets wrong)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._use(load(path))
        self._mtime_ns = path.stat().st_mtime_ns
        self._checked_at = time.monotonic()

    def _use(self, shard_map: ShardMap) -> None:
        self._map = shard_map
        self._owners = shard_map.owners()

    def current(self) -> ShardMap:
        now = time.monotonic()
        if now - self._checked_at >= RELOAD_INTERVAL_S:
            self._checked_at = now
            try:
                mtime_ns = self.path.stat().st_mtime_ns
                if mtime_ns != self._mtime_ns:
                    self._use(load(self.path))
                    self._mtime_ns = mtime_ns
            except (OSError, ShardMapError):
                pass
        return self._map

    def pod_of(self, event_id: str) -> str:
        """The pod the current map gives the event (a table lookup, for every request)."""
        shard_map = self.current()
        return self._owners[bucket_of(event_id, shard_map.buckets)]


def _expand(ranges: list[str], buckets: int) -> set[int]:
    numbers: set[int] = set()
    for text in ranges:
        match = _RANGE.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not a bucket or a range of buckets (`7`, `0-31`)")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if not first <= last < buckets:
            raise ValueError(f"{text!r} is not within buckets 0-{buckets - 1}")
        numbers.update(range(first, last + 1))
    return numbers


def _ranges(numbers: list[int]) -> list[str]:
    """Bucket numbers as sorted ranges: [5, 0, 1, 2] -> ["0-2", "5"]."""
    spans: list[list[int]] = []  # [first, last] of each run of consecutive numbers
    for number in sorted(numbers):
        if spans and spans[-1][1] == number - 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return [str(first) if first == last else f"{first}-{last}" for first, last in spans]
