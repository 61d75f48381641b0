"""Every Redis key name and lease value the gateway uses. The keys of one event share the hash tag {event_id},
so one script only ever touches one Redis Cluster slot."""

import hashlib
from typing import NamedTuple

_FINGERPRINT_LENGTH = 16  # hex digits of a holder fingerprint

# The value of a blocked seat's slot key (no TTL): never a lease value, which always holds a colon. The Lua
# scripts spell it too (acquire.lua, sync_blocked.lua); the script tests pin them to this constant.
BLOCKED_LEASE_VALUE = "blocked"


def slot_key(prefix: str, event_id: str, slot_id: str) -> str:
    """The lease on one slot: its value is the owning hold's lease value."""
    return f"{prefix}:{{{event_id}}}:slot:{slot_id}"


def sync_key(prefix: str, event_id: str) -> str:
    """The event's synchronization marker: the run_id of the Redis instance whose leases of this event were
    last brought in line with Postgres. acquire.lua judges nothing while it differs from the run_id the
    gateway checked on its connection (a restart, an old snapshot) or is missing (a flush, a new event)."""
    return f"{prefix}:{{{event_id}}}:synced"


def pool_key(prefix: str, event_id: str, pool_id: str) -> str:
    """A general-admission pool: a hash of `capacity`, `used` (the sum of the entries) and one entry per hold
    taking units, pool_entry_field(lease value) -> quantity."""
    return f"{prefix}:{{{event_id}}}:pool:{pool_id}"


def pool_entry_field(lease_value: str) -> str:
    """The field of a pool's hash holding one hold's quantity (the Lua scripts spell it 't:' .. value)."""
    return f"t:{lease_value}"


def pool_expiry_key(prefix: str, event_id: str, pool_id: str) -> str:
    """When each entry of the pool lapses: a sorted set of lease values scored by expiry in milliseconds by
    Redis's clock (+inf for a confirmed hold's units)."""
    return f"{prefix}:{{{event_id}}}:pool:{pool_id}:expiry"


def pools_key(prefix: str, event_id: str) -> str:
    """The set of the event's pool ids that Redis holds (so a pool dropped from the inventory is deleted)."""
    return f"{prefix}:{{{event_id}}}:pools"


def blocked_key(prefix: str, event_id: str) -> str:
    """The set of the event's seat ids whose slot key Redis holds as BLOCKED_LEASE_VALUE."""
    return f"{prefix}:{{{event_id}}}:blocked"


def instance_key(prefix: str) -> str:
    """The run_id of the Redis instance whose live leases were last rebuilt in bulk (a restart or flush since
    shows as a different run_id or no key). Only decides whether to rebuild eagerly: requests are protected
    by each event's sync_key."""
    return f"{prefix}:instance"


def idempotency_key(prefix: str, event_id: str, client_key_id: str, holder: str, key: str) -> str:
    """The record of an Idempotency-Key used for this event by this client key and holder; its value is the
    request's fingerprint."""
    return f"{prefix}:{{{event_id}}}:idem:{_digest(client_key_id, holder, key)}"


def holder_fingerprint(holder: str) -> str:
    """A short digest of the holder, the suffix of each of its lease values (tells a retry from a rival)."""
    return _digest(holder)[:16]


def lease_value(token: str, holder: str) -> str:
    """What a lease key holds: the hold's token, then the holder fingerprint."""
    return f"{token}:{holder_fingerprint(holder)}"


class LeaseValue(NamedTuple):
    token: str
    holder_fingerprint: str


def parse_lease_value(value: str) -> LeaseValue:
    """The token and holder fingerprint of a value lease_value() built; ValueError for anything else
    (BLOCKED_LEASE_VALUE included: a blocked seat belongs to no hold)."""
    token, sep, fingerprint = value.rpartition(":")  # the fingerprint is hex: the last colon is the separator
    if not sep or not token or len(fingerprint) != _FINGERPRINT_LENGTH:
        raise ValueError(f"not a lease value: {value!r}")
    return LeaseValue(token, fingerprint)


def is_blocked(value: str | None) -> bool:
    """Whether a slot key's value marks the seat blocked rather than leased."""
    return value == BLOCKED_LEASE_VALUE


def _digest(*parts: str) -> str:
    # NUL cannot occur in validated ids, so joining on it is unambiguous.
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
