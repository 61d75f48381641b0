"""/v1/events/{event_id}/inventory, seats/block and seats/unblock: an event's known seats, pools and limits,
for operations (the ops token when one is set); /v1/events/{event_id}/availability: what is left, for anyone
(counts and times only, never holders)."""

from typing import Any

from litestar import Controller, Request, get, post, put
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

from gateway.api.auth import require_ops_token
from gateway.api.holds import strict_json_body
from gateway.api.problems import problem_specs
from gateway.api.slots import check_identifier
from gateway.availability import AvailabilityCache
from gateway.holds import HoldService
from gateway.inventory_store import InventoryStore
from gateway.models import Availability, Inventory, InventoryBody, InventorySummary, SeatsBody, SeatsChanged

# The inventory's body may list 100,000 seats of 128 characters: its route alone takes up to this much.
INVENTORY_MAX_BODY_BYTES = 16 * 1024 * 1024


def _inventories(state: State) -> InventoryStore:
    inventories: InventoryStore = state.inventories
    return inventories


async def _changed(state: State, event_id: str) -> None:
    """Redis forgets the event's synchronization at once (the inventory outbox does it otherwise)."""
    service: HoldService = state.holds
    if service.lease_sync is not None:
        await service.lease_sync.inventory_changed(event_id)


class InventoryController(Controller):
    path = "/v1/events/{event_id:str}"
    tags = ["inventory"]  # noqa: RUF012 - Litestar's own class attribute

    @put(
        "/inventory",
        summary="Create or replace an event's inventory: its seats, pools and limits",
        description="Atomic: the whole inventory is replaced, or nothing changes. A field left out is empty. "
        "409 inventory-in-use (naming the seats and pools) if a seat left out has a live hold, or a pool "
        "would have fewer units than its live holds. Seats kept keep their blocks. Needs the ops token when "
        "one is set; the body may be up to 16 MiB.",
        guards=[require_ops_token],
        before_request=strict_json_body(InventoryBody),
        request_max_body_size=INVENTORY_MAX_BODY_BYTES,
        responses=problem_specs(400, 401, 413, 415, 422, 503, described={409: "inventory-in-use"}),
        status_code=200,
    )
    async def put_inventory(
        self, state: State, event_id: FromPath[str], data: JSONBody[InventoryBody]
    ) -> InventorySummary:
        check_identifier("event_id", event_id)
        summary = await _inventories(state).replace(event_id, data)
        await _changed(state, event_id)
        return summary

    @get(
        "/inventory",
        summary="An event's inventory: its seats, pools, limits and blocked seats",
        description="404 inventory-not-found when the event has none (it is open: any seat ids, no pools, no "
        "limits). Needs the ops token when one is set (blocks carry their reasons).",
        guards=[require_ops_token],
        responses=problem_specs(400, 401, 404, 422, 503),
    )
    async def get_inventory(self, state: State, event_id: FromPath[str]) -> Inventory:
        check_identifier("event_id", event_id)
        return await _inventories(state).get(event_id)

    @post(
        "/seats/block",
        summary="Block seats: nobody can hold them until they are unblocked",
        description="All or none. 409 inventory-in-use naming the seats held or confirmed; 422 for a seat "
        "outside the inventory; repeating is harmless (the first reason stays). Needs the ops token when "
        "one is set.",
        guards=[require_ops_token],
        before_request=strict_json_body(SeatsBody),
        request_max_body_size=INVENTORY_MAX_BODY_BYTES,
        responses=problem_specs(400, 401, 404, 413, 415, 422, 503, described={409: "inventory-in-use"}),
        status_code=200,
    )
    async def block_seats(
        self, state: State, event_id: FromPath[str], data: JSONBody[SeatsBody]
    ) -> SeatsChanged:
        check_identifier("event_id", event_id)
        changed = await _inventories(state).set_blocked(
            event_id, data.seats, blocked=True, reason=data.reason or ""
        )
        if changed.changed:
            await _changed(state, event_id)
        return changed

    @post(
        "/seats/unblock",
        summary="Unblock seats",
        description="All or none; 422 for a seat outside the inventory; repeating is harmless. Needs the ops "
        "token when one is set.",
        guards=[require_ops_token],
        before_request=strict_json_body(SeatsBody),
        request_max_body_size=INVENTORY_MAX_BODY_BYTES,
        responses=problem_specs(400, 401, 404, 413, 415, 422, 503),
        status_code=200,
    )
    async def unblock_seats(
        self, state: State, event_id: FromPath[str], data: JSONBody[SeatsBody]
    ) -> SeatsChanged:
        check_identifier("event_id", event_id)
        changed = await _inventories(state).set_blocked(event_id, data.seats, blocked=False)
        if changed.changed:
            await _changed(state, event_id)
        return changed

    @get(
        "/availability",
        summary="What is left of an event: seat counts, and each pool's units with when more may come back",
        description="For anyone: counts and times, never holders. At most a second behind the holds "
        "(`as_of`, by the database's clock). `next_release_at` is the earliest expiry of a live held hold "
        "in the pool: when units may come back. 404 inventory-not-found for an event without an inventory.",
        responses=problem_specs(400, 404, 422, 503),
    )
    async def availability(self, request: Request[Any, Any, Any], event_id: FromPath[str]) -> Availability:
        check_identifier("event_id", event_id)
        cache: AvailabilityCache = request.app.state.availability
        return await cache.get(event_id)
