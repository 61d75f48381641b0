"""All runtime SQL, read once from queries.sql: blocks headed `-- name --` then a one-line description."""

import re
from pathlib import Path
from typing import Final

_QUERIES_FILE = Path(__file__).with_name("queries.sql")
_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split the file into {name: statement}; the leading comment lines (the description) are not sent."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        lines = body.strip().splitlines()
        while lines and lines[0].startswith("--"):
            lines.pop(0)
        if not lines:
            raise ValueError(f"query {name!r} is empty")
        queries[name] = "\n".join(lines)
    return queries


QUERIES: Final = parse_queries(_QUERIES_FILE.read_text())

CLAIM_HOLD: Final = QUERIES["claim_hold"]
CLAIM_HOLDS_BATCH: Final = QUERIES["claim_holds_batch"]
LOCK_INVENTORIES: Final = QUERIES["lock_inventories"]
CHECK_INVENTORY: Final = QUERIES["check_inventory"]
CLAIM_POOLS: Final = QUERIES["claim_pools"]
INVENTORY_STATE: Final = QUERIES["inventory_state"]
SLOT_OWNERS: Final = QUERIES["slot_owners"]
GET_HOLD: Final = QUERIES["get_hold"]
GET_IDEMPOTENCY_RECORD: Final = QUERIES["get_idempotency_record"]
CONFIRM_HOLD: Final = QUERIES["confirm_hold"]
CANCEL_HOLD: Final = QUERIES["cancel_hold"]
EXTEND_HOLD: Final = QUERIES["extend_hold"]
SLOT_STATE: Final = QUERIES["slot_state"]
EXPIRE_HOLDS: Final = QUERIES["expire_holds"]
PURGE_IDEMPOTENCY_KEYS: Final = QUERIES["purge_idempotency_keys"]
RETIRE_HOLDS: Final = QUERIES["retire_holds"]
LIST_HOLDS: Final = QUERIES["list_holds"]
EVENT_SLOTS: Final = QUERIES["event_slots"]
HOLD_STATS: Final = QUERIES["hold_stats"]
LIVE_SLOT_TOKENS: Final = QUERIES["live_slot_tokens"]
HOLD_BY_TOKEN: Final = QUERIES["hold_by_token"]
TAKE_DUE_LEASE_RELEASES: Final = QUERIES["take_due_lease_releases"]
LEASE_EVENTS: Final = QUERIES["lease_events"]
RECENTLY_CANCELLED: Final = QUERIES["recently_cancelled"]
LIVE_LEASES: Final = QUERIES["live_leases"]
CLIENT_KEY_DIGESTS: Final = QUERIES["client_key_digests"]
INSERT_CLIENT_KEY: Final = QUERIES["insert_client_key"]
CLIENT_KEYS_TO_COPY: Final = QUERIES["client_keys_to_copy"]
LIST_CLIENT_KEYS: Final = QUERIES["list_client_keys"]
DELETE_CLIENT_KEY: Final = QUERIES["delete_client_key"]
PING: Final = QUERIES["ping"]
CREATE_INVENTORY: Final = QUERIES["create_inventory"]
LOCK_INVENTORY: Final = QUERIES["lock_inventory"]
GIVE_BACK_LAPSED_UNITS: Final = QUERIES["give_back_lapsed_units"]
INVENTORY_IN_USE: Final = QUERIES["inventory_in_use"]
REPLACE_INVENTORY: Final = QUERIES["replace_inventory"]
GET_INVENTORY: Final = QUERIES["get_inventory"]
INVENTORY_POOLS_OF: Final = QUERIES["inventory_pools_of"]
INVENTORY_SEATS_OF: Final = QUERIES["inventory_seats_of"]
LOCK_SEATS: Final = QUERIES["lock_seats"]
LIVE_SEATS: Final = QUERIES["live_seats"]
SET_BLOCKED: Final = QUERIES["set_blocked"]
TAKE_DUE_INVENTORY_SYNCS: Final = QUERIES["take_due_inventory_syncs"]
EVENT_AVAILABILITY: Final = QUERIES["event_availability"]
TRY_SEQUENCER_LOCK: Final = QUERIES["try_sequencer_lock"]
NUMBER_HOLD_EVENTS: Final = QUERIES["number_hold_events"]
HOLD_EVENTS_HEAD: Final = QUERIES["hold_events_head"]
HOLD_EVENTS_PENDING: Final = QUERIES["hold_events_pending"]
NOTIFY: Final = QUERIES["notify"]
HOLD_EVENTS_AFTER: Final = QUERIES["hold_events_after"]
PURGE_HOLD_EVENTS: Final = QUERIES["purge_hold_events"]
EVENT_SEAT_STATES: Final = QUERIES["event_seat_states"]
INVENTORY_VERSIONS: Final = QUERIES["inventory_versions"]

# Constraint names the store compares driver errors with (see db/migrations).
ONE_ACTIVE_HOLD_PER_SLOT: Final = "hold_slots_one_active_hold"

# The background leader's election (gateway.leader).
CLAIM_BACKGROUND_LEADER: Final = QUERIES["claim_background_leader"]
RELEASE_BACKGROUND_LEADER: Final = QUERIES["release_background_leader"]

# The channels of NOTIFY that every worker LISTENs on (gateway.listener): the hold event feed's new head (the
# payload), a client key created or deleted, a leader that stepped down (its id).
HOLD_EVENTS_CHANNEL: Final = "gateway_hold_events"
CLIENT_KEYS_CHANNEL: Final = "gateway_client_keys"
LEADER_CHANNEL: Final = "gateway_background_leader"

# The key of the advisory lock that makes one hold-event sequencer at a time per database.
SEQUENCER_LOCK_KEY: Final = 0x67770001_686F6C64

# Webhooks.
LOCK_SEQUENCER: Final = QUERIES["lock_sequencer"]
INSERT_WEBHOOK_ENDPOINT: Final = QUERIES["insert_webhook_endpoint"]
LIST_WEBHOOK_ENDPOINTS: Final = QUERIES["list_webhook_endpoints"]
DELETE_WEBHOOK_ENDPOINT: Final = QUERIES["delete_webhook_endpoint"]
REDELIVER_WEBHOOKS: Final = QUERIES["redeliver_webhooks"]
FAN_OUT_WEBHOOK_DELIVERIES: Final = QUERIES["fan_out_webhook_deliveries"]
CLAIM_WEBHOOK_DELIVERIES: Final = QUERIES["claim_webhook_deliveries"]
WEBHOOK_DELIVERED: Final = QUERIES["webhook_delivered"]
WEBHOOK_ATTEMPT_FAILED: Final = QUERIES["webhook_attempt_failed"]
WEBHOOK_STATS: Final = QUERIES["webhook_stats"]
PURGE_WEBHOOK_DELIVERIES: Final = QUERIES["purge_webhook_deliveries"]
POD_IDENTITY: Final = QUERIES["pod_identity"]
SET_POD_IDENTITY: Final = QUERIES["set_pod_identity"]
POD_BUCKETS: Final = QUERIES["pod_buckets"]
OWN_POD_BUCKET: Final = QUERIES["own_pod_bucket"]
RELEASE_POD_BUCKET: Final = QUERIES["release_pod_bucket"]
BUCKET_CONTENTS: Final = QUERIES["bucket_contents"]
ATTACH_POD_FENCE: Final = QUERIES["attach_pod_fence"]
# The SQLSTATE of the pod fence's refusal (migration 0010).
POD_FENCE_SQLSTATE: Final = "GWPOD"
