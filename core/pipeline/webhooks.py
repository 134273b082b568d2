"""Webhook endpoints and their deliveries: the use case behind /v1/webhooks (docs/api.md,
Webhooks). Sending is not here: the relay's leader turns journals into deliveries and
sends them (server/adapters/webhooks/)."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from typing import Protocol

import msgspec

from core.ledger.errors import InvalidRequest
from core.ledger.webhooks import EVENT_TYPES, new_secret

URL_LENGTH_MAX = 2048
DELIVERY_STATUSES = ("pending", "succeeded", "failed")
ENDPOINT_ID = re.compile(r"wh_[0-9a-f]{20}")
DELIVERY_ID_MAX = 2**63 - 1
# Listing cursors are base64url("d<delivery id>") without padding.
_CURSOR = re.compile(r"[A-Za-z0-9_-]{2,28}")
_CURSOR_TEXT = re.compile(rb"d[0-9]{1,19}")


class EndpointView(msgspec.Struct, frozen=True):
    id: str
    url: str
    events: list[str] | None  # None: every event
    created_at: str


class CreatedEndpoint(msgspec.Struct, frozen=True):
    """The 201 answer: the only one that shows the secret."""

    id: str
    url: str
    events: list[str] | None
    secret: str
    created_at: str


class EndpointList(msgspec.Struct, frozen=True):
    webhooks: list[EndpointView]


class DeliveryView(msgspec.Struct, frozen=True):
    id: int
    webhook_id: str
    message_id: str  # the webhook-id header: the same on every attempt
    event: str
    receipt_code: str
    status: str  # pending | succeeded | failed (dead-lettered)
    attempts: int
    next_attempt_at: str | None  # while pending
    last_attempt_at: str | None
    last_status: int | None  # the receiver's HTTP status, None when none came back
    last_error: str | None
    created_at: str


class DeliveryPage(msgspec.Struct, frozen=True):
    deliveries: list[DeliveryView]
    next_cursor: str | None


class WebhookStore(Protocol):
    async def create(self, endpoint_id: str, url: str, events: list[str] | None,
                     secret: str, endpoints_max: int) -> CreatedEndpoint:
        """InvalidRequest when `endpoints_max` endpoints exist already."""
        ...

    async def endpoints(self) -> list[EndpointView]: ...

    async def endpoint(self, endpoint_id: str) -> EndpointView | None: ...

    async def delete(self, endpoint_id: str) -> bool: ...

    async def deliveries(self, endpoint_id: str, status: str | None, limit: int,
                         before: int | None) -> list[DeliveryView]:
        """Newest first, ids below `before` when given."""
        ...

    async def redeliver(self, endpoint_id: str, delivery_id: int,
                        window_s: float) -> DeliveryView | None:
        """Pending again, due now, with a new retry window; None when there is no such
        delivery of that endpoint."""
        ...


class Webhooks:
    def __init__(self, store: WebhookStore, *, endpoints_max: int, window_s: float) -> None:
        self._store = store
        self._endpoints_max = endpoints_max
        self._window_s = window_s

    async def create(self, url: str, events: list[str] | None) -> CreatedEndpoint:
        return await self._store.create(f"wh_{secrets.token_hex(10)}", check_url(url),
                                        check_events(events), new_secret(),
                                        self._endpoints_max)

    async def list(self) -> EndpointList:
        return EndpointList(await self._store.endpoints())

    async def get(self, endpoint_id: str) -> EndpointView | None:
        return await self._store.endpoint(endpoint_id)

    async def delete(self, endpoint_id: str) -> bool:
        """Its deliveries go with it, pending ones included."""
        return await self._store.delete(endpoint_id)

    async def deliveries(self, endpoint_id: str, status: str | None, limit: int,
                         before: int | None) -> DeliveryPage | None:
        """None when there is no such endpoint (a 404, not an empty page)."""
        if await self._store.endpoint(endpoint_id) is None:
            return None
        rows = await self._store.deliveries(endpoint_id, status, limit + 1, before)
        more = len(rows) > limit
        rows = rows[:limit]
        return DeliveryPage(rows, delivery_cursor(rows[-1].id) if more else None)

    async def redeliver(self, endpoint_id: str, delivery_id: int) -> DeliveryView | None:
        return await self._store.redeliver(endpoint_id, delivery_id, self._window_s)


def check_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if (not sep or scheme.lower() not in ("http", "https") or not host or len(url) > URL_LENGTH_MAX
            or any(c.isspace() or ord(c) < 0x20 for c in url)):
        raise InvalidRequest(f"url must be an http:// or https:// URL of at most "
                             f"{URL_LENGTH_MAX} characters", param="url")
    return url


def check_events(events: list[str] | None) -> list[str] | None:
    """null is every event; otherwise a non-empty list of known event types, kept in the
    order given without repeats."""
    if events is None:
        return None
    if not events:
        raise InvalidRequest("events must name at least one event type, or be null for every "
                             "event", param="events")
    for i, event in enumerate(events):
        if event not in EVENT_TYPES:
            raise InvalidRequest(f"unknown event type {event[:64]!r}; use one of "
                                 f"{', '.join(EVENT_TYPES)}", param=f"events[{i}]")
    return list(dict.fromkeys(events))


def check_endpoint_id(endpoint_id: str) -> str:
    if not ENDPOINT_ID.fullmatch(endpoint_id):
        raise InvalidRequest("not a webhook id", param="id")
    return endpoint_id


def check_delivery_id(delivery_id: str) -> int:
    if not (delivery_id.isascii() and delivery_id.isdigit() and len(delivery_id) <= 19
            and 0 < int(delivery_id) <= DELIVERY_ID_MAX):
        raise InvalidRequest("not a delivery id", param="delivery_id")
    return int(delivery_id)


def delivery_cursor(delivery_id: int) -> str:
    return base64.urlsafe_b64encode(b"d%d" % delivery_id).decode().rstrip("=")


def cursor_delivery(cursor: str) -> int:
    """The delivery id a listing cursor stands after; InvalidRequest for a cursor this API
    cannot have returned."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        text = b""
    if not (_CURSOR.fullmatch(cursor) and _CURSOR_TEXT.fullmatch(text)
            and 0 < int(text[1:]) <= DELIVERY_ID_MAX):
        raise InvalidRequest("cursor is not one this API returned", param="cursor")
    return int(text[1:])
