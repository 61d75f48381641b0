"""/v1/events/{event_id}/slots: the state of a slot, as Postgres sees it. Never shows the holder."""

import re

from litestar import Controller, get
from litestar.datastructures import State
from litestar.params import FromPath

from gateway.errors import InvalidRequest
from gateway.holds import HoldService
from gateway.models import SlotState

_IDENTIFIER = re.compile(r"\A[A-Za-z0-9._:~-]{1,128}\Z")


def check_identifier(name: str, value: str) -> None:
    if not _IDENTIFIER.match(value):
        raise InvalidRequest(f"`{name}` must be 1 to 128 characters from [A-Za-z0-9._:~-]")


class SlotsController(Controller):
    path = "/v1/events/{event_id:str}/slots"
    tags = ["slots"]  # noqa: RUF012 - Litestar's own class attribute

    @get("/{slot_id:str}", summary="The state of one slot")
    async def slot_state(self, state: State, event_id: FromPath[str], slot_id: FromPath[str]) -> SlotState:
        check_identifier("event_id", event_id)
        check_identifier("slot_id", slot_id)
        service: HoldService = state.holds
        return await service.slot_state(event_id, slot_id)
