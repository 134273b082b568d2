"""/v1/webhooks handlers (scope admin): endpoints and their deliveries."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from core.ledger.errors import InvalidRequest
from core.ledger.validation import check_limit
from core.pipeline.webhooks import (
    DELIVERY_STATUSES,
    URL_LENGTH_MAX,
    URL_PATTERN,
    URL_RULE,
    Webhooks,
    check_delivery_id,
    check_endpoint_id,
    cursor_delivery,
)
from server.http.api import Api
from server.http.handlers.common import (
    authorize,
    check_media_type,
    decode,
    guarded,
    json_response,
    not_found,
    read_body,
    takes,
)

PAGE_LIMIT_MAX = 1000
DELIVERIES_QUERY = takes("status", "limit", "cursor")


EventType = Literal["transaction.completed", "transaction.failed", "transaction.held",
                    "transaction.voided"]  # core.ledger.webhooks.EVENT_TYPES


class WebhookIn(msgspec.Struct, forbid_unknown_fields=True):
    # What check_url (core/pipeline/webhooks.py) takes, exactly (URL_PATTERN says why).
    url: Annotated[str, msgspec.Meta(max_length=URL_LENGTH_MAX, pattern=URL_PATTERN)]
    events: Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=16)] | None = None


webhook_in = msgspec.json.Decoder(WebhookIn)


def _webhooks(api: Api) -> Webhooks:
    assert api.webhooks is not None, "the composition root gives webhooks to every server"
    return api.webhooks


@guarded
async def create_webhook(request: Request) -> Response:
    api, _ = await authorize(request, "admin")
    check_media_type(request.headers.get("content-type"))
    try:
        body = decode(webhook_in, await read_body(request, api.body_size_max))
    except InvalidRequest as exc:
        if exc.param == "url" and "regex" in exc.message:  # msgspec quotes the whole pattern
            raise InvalidRequest(URL_RULE, param="url") from None
        raise
    created = await _webhooks(api).create(body.url, body.events)
    return json_response(created, 201, {"Location": f"/v1/webhooks/{created.id}"})


@guarded
async def list_webhooks(request: Request) -> Response:
    api, _ = await authorize(request, "admin")
    return json_response(await _webhooks(api).list())


@guarded
async def get_webhook(request: Request) -> Response:
    api, _ = await authorize(request, "admin")
    endpoint_id = check_endpoint_id(request.path_params["webhook_id"])
    endpoint = await _webhooks(api).get(endpoint_id)
    return json_response(endpoint) if endpoint is not None else not_found("webhook")


@guarded
async def delete_webhook(request: Request) -> Response:
    api, _ = await authorize(request, "admin")
    endpoint_id = check_endpoint_id(request.path_params["webhook_id"])
    if not await _webhooks(api).delete(endpoint_id):
        return not_found("webhook")
    return Response(status_code=204)


@guarded
async def list_deliveries(request: Request) -> Response:
    api, _ = await authorize(request, "admin", DELIVERIES_QUERY)
    endpoint_id = check_endpoint_id(request.path_params["webhook_id"])
    query = request.query_params
    status = query.get("status")
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(DELIVERY_STATUSES)}",
                             param="status")
    limit = check_limit(query.get("limit", "100"), PAGE_LIMIT_MAX)
    cursor = query.get("cursor")
    before = cursor_delivery(cursor) if cursor else None
    page = await _webhooks(api).deliveries(endpoint_id, status, limit, before)
    return json_response(page) if page is not None else not_found("webhook")


@guarded
async def redeliver(request: Request) -> Response:
    api, _ = await authorize(request, "admin")
    endpoint_id = check_endpoint_id(request.path_params["webhook_id"])
    delivery_id = check_delivery_id(request.path_params["delivery_id"])
    delivery = await _webhooks(api).redeliver(endpoint_id, delivery_id)
    return json_response(delivery, 202) if delivery is not None else not_found("delivery")
