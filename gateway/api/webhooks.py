"""/v1/webhook-endpoints: the operator registers, lists and deletes the endpoints that receive every hold
event, and sends deliveries again (gateway.webhooks). Needs the ops token when one is set."""

from litestar import Controller, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

from gateway.api.auth import require_ops_token
from gateway.api.holds import AnyRequest, strict_json_body
from gateway.api.problems import problem_specs
from gateway.models import (
    NewWebhookEndpoint,
    NewWebhookEndpointBody,
    RedeliverBody,
    Redelivered,
    WebhookEndpointList,
)
from gateway.webhooks import WebhookEndpoints

_NOT_FOUND = {404: "webhook-endpoint-not-found: no webhook endpoint has this id"}
_check_redeliver_body = strict_json_body(RedeliverBody)


def _webhooks(state: State) -> WebhookEndpoints:
    webhooks: WebhookEndpoints = state.webhooks
    return webhooks


async def _optional_redeliver_body(request: AnyRequest) -> None:
    """A redeliver's body is optional: none at all (Litestar then gives None), or a RedeliverBody checked as
    strictly as any body."""
    if await request.body():
        await _check_redeliver_body(request)


class WebhookEndpointsController(Controller):
    path = "/v1/webhook-endpoints"
    tags = ["webhooks"]  # noqa: RUF012 - Litestar's own class attribute
    guards = [require_ops_token]  # noqa: RUF012 - Litestar's own class attribute

    @post(
        "/",
        status_code=201,
        summary="Register a webhook endpoint",
        description="Every hold event that occurs from now on is POSTed to `url` (at least once, in order "
        "per hold), signed as Standard Webhooks define: headers `webhook-id` (the event id), "
        "`webhook-timestamp` and `webhook-signature`; the body is the event as GET /v1/hold-events shows "
        "it. `secret` is generated when left out, and shown in this answer only.",
        before_request=strict_json_body(NewWebhookEndpointBody),
        responses=problem_specs(400, 401, 413, 415, 422, 503),
    )
    async def create_endpoint(
        self, state: State, data: JSONBody[NewWebhookEndpointBody]
    ) -> NewWebhookEndpoint:
        return await _webhooks(state).create(data.url, data.secret)

    @get(
        "/",
        summary="List webhook endpoints (never their secrets)",
        description="Each with its deliveries pending, delivered and failed, and its latest failure.",
        responses=problem_specs(401, 503),
    )
    async def list_endpoints(self, state: State) -> WebhookEndpointList:
        return await _webhooks(state).list()

    @delete(
        "/{endpoint_id:str}",
        status_code=204,
        summary="Delete a webhook endpoint",
        description="The deliveries still owed to it go with it.",
        responses=problem_specs(401, 503, described=_NOT_FOUND),
    )
    async def delete_endpoint(self, state: State, endpoint_id: FromPath[str]) -> Response[None]:
        await _webhooks(state).delete(endpoint_id)
        return Response(None, status_code=204)

    @post(
        "/{endpoint_id:str}/redeliver",
        status_code=200,
        summary="Send deliveries to a webhook endpoint again",
        description="Its failed deliveries go back to pending, attempts from zero. With a body "
        '`{"after": <event id>}`, every kept event after that id (that occurred since the endpoint was '
        "created) is owed to it again as well: for a receiver that lost what it had received. Deliveries "
        "still pending are left as they are. Answers how many deliveries this made pending.",
        before_request=_optional_redeliver_body,
        responses=problem_specs(400, 401, 413, 415, 422, 503, described=_NOT_FOUND),
    )
    async def redeliver(
        self, state: State, endpoint_id: FromPath[str], data: JSONBody[RedeliverBody | None] = None
    ) -> Redelivered:
        after = None if data is None else data.after
        return Redelivered(redelivered=await _webhooks(state).redeliver(endpoint_id, after))
