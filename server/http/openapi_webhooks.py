"""The /v1/webhooks part of /openapi.json (server/http/openapi.py merges it in)."""

from __future__ import annotations

from typing import Any

import msgspec

from core.pipeline.webhooks import (
    DELIVERY_STATUSES,
    CreatedEndpoint,
    DeliveryPage,
    DeliveryView,
    EndpointList,
    EndpointView,
)
from server.http.handlers.webhooks import PAGE_LIMIT_MAX, WebhookIn
from server.http.openapi_shapes import DELIVERY_CURSOR
from server.http.schemas import ErrorOut

REF = "#/components/schemas/{name}"
STRUCTS = (WebhookIn, CreatedEndpoint, EndpointView, EndpointList, DeliveryView, DeliveryPage)


def webhook_components() -> dict[str, Any]:
    _, found = msgspec.json.schema_components(STRUCTS, ref_template=REF)
    return found


def webhook_paths() -> dict[str, Any]:
    from server.http.openapi import (  # noqa: PLC0415 - it imports us
        _header,
        _ok,
        _op,
        _param,
        _ref,
        _with_codes,
    )

    webhook = _param("webhook_id", "path", {"type": "string", "pattern": r"^wh_[0-9a-f]{20}$"},
                     "The webhook's id.")
    delivery = _param("delivery_id", "path", {"type": "string", "pattern": r"^[1-9][0-9]{0,18}$"},
                      "The delivery's id.")
    status = _param("status", "query", {"type": "string", "enum": list(DELIVERY_STATUSES)},
                    "Only the deliveries in this status (failed: dead-lettered).")
    limit = _param("limit", "query", {"type": "integer", "minimum": 1,
                                      "maximum": PAGE_LIMIT_MAX, "default": 100}, "Page size.")
    # Exactly the cursors cursor_delivery takes (an empty one is the first page).
    cursor = _param("cursor", "query", {"type": "string", "pattern": f"^$|{DELIVERY_CURSOR}"},
                    "`next_cursor` of the previous page (empty: the first page).")
    return {
        "/v1/webhooks": {
            "post": _op("Register a webhook endpoint (its secret is shown only here)", "admin",
                        {"201": _ok("Registered.", _ref(CreatedEndpoint), "Location"),
                         "422": _ok("invalid_request: KASSA_WEBHOOK_ENDPOINTS_MAX endpoints "
                                    "are registered already",
                                    _with_codes(_ref(ErrorOut), ("invalid_request",)))},
                        ("unsupported_media_type",), _ref(WebhookIn)),
            "get": _op("List the webhook endpoints", "admin",
                       {"200": _ok("Every endpoint, without secrets.", _ref(EndpointList))})},
        "/v1/webhooks/{webhook_id}": {
            "parameters": [webhook],
            "get": _op("Get a webhook endpoint", "admin",
                       {"200": _ok("The endpoint, without its secret.", _ref(EndpointView))},
                       ("not_found",)),
            "delete": _op("Delete a webhook endpoint and its deliveries", "admin",
                          {"204": {"description": "Deleted.",
                                   "headers": {"X-Request-Id": _header("X-Request-Id")}}}, ("not_found",))},
        "/v1/webhooks/{webhook_id}/deliveries": {
            "parameters": [webhook],
            "get": _op("The endpoint's deliveries, newest first", "admin",
                       {"200": _ok("A page.", _ref(DeliveryPage))}, ("not_found",),
                       params=(status, limit, cursor))},
        "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver": {
            "parameters": [webhook, delivery],
            "post": _op("Send a delivery again (pending, due now, a new retry window)", "admin",
                        {"202": _ok("Queued again.", _ref(DeliveryView))}, ("not_found",))},
    }
