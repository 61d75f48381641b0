"""/v1/events/{event_id}/slots: the state of one slot, for anyone (state and times only: never a hold id or a
holder, which would let a stranger act on the hold), and the event's seat map with hold ids, for operations
(the ops token when one is set)."""

from typing import Annotated

from litestar import Controller, get
from litestar.datastructures import State
from litestar.params import FromPath, QueryParameter

from gateway.api.auth import require_ops_token
from gateway.api.problems import problem_specs
from gateway.errors import InvalidRequest
from gateway.holds import HoldService
from gateway.models import IDENTIFIER_DESCRIPTION, SLOT_STATES, SlotPage, SlotState, is_identifier
from gateway.ops import OpsService

# A seat map is drawn from one page where it can be: a large hall has a few thousand seats.
DEFAULT_SLOTS_LIMIT = 1000
MAX_SLOTS_LIMIT = 5000


def check_identifier(name: str, value: str) -> None:
    if not is_identifier(value):
        raise InvalidRequest(f"`{name}` must be {IDENTIFIER_DESCRIPTION}")


class SlotsController(Controller):
    path = "/v1/events/{event_id:str}/slots"
    tags = ["slots"]  # noqa: RUF012 - Litestar's own class attribute

    @get(
        "/",
        summary="The seat map: the live slots of an event (held or confirmed), with their holds' ids",
        description=f"In slot order, cursor-paginated; filter with `state` ({', '.join(SLOT_STATES)}; "
        "`free` lists nothing). A slot not listed is free. Holders are never shown. An operations route: "
        "it needs the ops token when one is set (a hold id lets its client key act on the hold).",
        guards=[require_ops_token],
        responses=problem_specs(400, 401, 422, 503),
    )
    async def event_slots(
        self,
        *,
        state: State,
        event_id: FromPath[str],
        slot_state: Annotated[
            str | None, QueryParameter(name="state", description=f"one of {', '.join(SLOT_STATES)}")
        ] = None,
        limit: Annotated[int | None, QueryParameter(ge=1, le=MAX_SLOTS_LIMIT)] = None,
        cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
    ) -> SlotPage:
        check_identifier("event_id", event_id)
        if slot_state is not None and slot_state not in SLOT_STATES:
            raise InvalidRequest(f"`state` must be one of {', '.join(SLOT_STATES)}")
        ops: OpsService = state.ops
        return await ops.event_slots(
            event_id,
            state=slot_state,  # checked against SLOT_STATES above
            limit=limit or DEFAULT_SLOTS_LIMIT,
            cursor=cursor,
        )

    @get("/{slot_id:str}", summary="The state of one slot", responses=problem_specs(400, 422, 503))
    async def slot_state(self, state: State, event_id: FromPath[str], slot_id: FromPath[str]) -> SlotState:
        check_identifier("event_id", event_id)
        check_identifier("slot_id", slot_id)
        service: HoldService = state.holds
        return await service.slot_state(event_id, slot_id)
