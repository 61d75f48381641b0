"""/v1/client-keys: the operator creates, lists and revokes the client keys booking frontends use on the hold
routes (see gateway.client_keys). Needs the ops token when one is set."""

from litestar import Controller, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

from gateway.api.auth import require_ops_token
from gateway.api.holds import strict_json_body
from gateway.api.problems import problem_specs
from gateway.client_keys import ClientKeys
from gateway.errors import ClientKeyNotFound
from gateway.models import ClientKeyInfo, ClientKeyList, NewClientKey, NewClientKeyBody


def _client_keys(state: State) -> ClientKeys:
    client_keys: ClientKeys = state.client_keys
    return client_keys


class ClientKeysController(Controller):
    path = "/v1/client-keys"
    tags = ["client keys"]  # noqa: RUF012 - Litestar's own class attribute
    guards = [require_ops_token]  # noqa: RUF012 - Litestar's own class attribute

    @post(
        "/",
        status_code=201,
        summary="Create a client key",
        description="The key is in this answer only: it is stored as a digest. Once any client key exists, "
        "every hold route needs one (`Authorization: Bearer <key>`).",
        before_request=strict_json_body(NewClientKeyBody),
        responses=problem_specs(400, 401, 413, 415, 422, 503),
    )
    async def create_client_key(self, state: State, data: JSONBody[NewClientKeyBody]) -> NewClientKey:
        row, key = await _client_keys(state).create(data.name)
        return NewClientKey(id=row.id, name=row.name, key=key, created_at=row.created_at)

    @get("/", summary="List client keys (never the keys)", responses=problem_specs(401, 503))
    async def list_client_keys(self, state: State) -> ClientKeyList:
        rows = await _client_keys(state).list()
        return ClientKeyList(
            client_keys=[ClientKeyInfo(id=r.id, name=r.name, created_at=r.created_at) for r in rows]
        )

    @delete(
        "/{key_id:str}",
        status_code=204,
        summary="Revoke a client key",
        description="Refused at once by the worker that revokes it, by every other within "
        "GATEWAY_CLIENT_KEYS_REFRESH_S. Holds it created stay, readable with the ops token.",
        responses=problem_specs(401, 503, described={404: "client-key-not-found"}),
    )
    async def delete_client_key(self, state: State, key_id: FromPath[str]) -> Response[None]:
        if not await _client_keys(state).delete(key_id):
            raise ClientKeyNotFound()
        return Response(None, status_code=204)
