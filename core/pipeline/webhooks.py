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

from core.ledger.errors import InvalidRequest, WrongTarget
from core.ledger.webhooks import EVENT_TYPES, new_secret

URL_LENGTH_MAX = 2048
DELIVERY_STATUSES = ("pending", "succeeded", "failed")
ENDPOINT_ID = re.compile(r"wh_[0-9a-f]{20}")
DELIVERY_ID_MAX = 2**63 - 1
# What an endpoint URL may be: http or https (any case), a host (a name of letters, digits,
# `-` and `_` in dot-separated labels of 1..63 characters with an optional final dot, which
# includes IPv4 addresses, or an IPv6 address in brackets), an optional port 1..65535, and
# an optional path, query and fragment of visible ASCII characters. No user info, nothing
# blank or a control character; a non-ASCII host or path is written the way RFC 3986
# says (punycode, percent-encoding). The same pattern in the document's schema (ECMA) and
# here (Python): every character class is ASCII, so both read it alike. The sender
# (server/adapters/webhooks/transport.py) parses every URL it allows.
_H16 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LS32 = rf"(?:{_H16}:{_H16}|{_OCTET}(?:\.{_OCTET}){{3}})"
_IPV6 = "(?:" + "|".join((
    rf"(?:{_H16}:){{6}}{_LS32}",
    rf"::(?:{_H16}:){{5}}{_LS32}",
    rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
    rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
    rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
    rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
    rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
    rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
    rf"(?:(?:{_H16}:){{0,6}}{_H16})?::")) + ")"
_LABEL = "[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[{_IPV6}\])"
_PORT = "(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
URL_PATTERN = f"^[Hh][Tt][Tt][Pp][Ss]?://{_HOST}(?::{_PORT})?(?:[/?#][!-~]*)?$"
_URL = re.compile(URL_PATTERN[1:-1])
URL_RULE = (f"url must be an http:// or https:// URL of at most {URL_LENGTH_MAX} characters: "
            "a host name, IPv4 address or [IPv6 address], an optional port 1..65535, then an "
            "optional path, query and fragment of visible ASCII characters")
# Listing cursors are base64url("d<delivery id>") without padding.
_CURSOR = re.compile(r"[A-Za-z0-9_-]{2,28}")
_CURSOR_TEXT = re.compile(rb"d[0-9]{1,19}")


class EndpointsFull(WrongTarget):
    """A registration while KASSA_WEBHOOK_ENDPOINTS_MAX endpoints exist: a valid request the
    server's state refuses, 422 `invalid_request` (as a WrongTarget is, not 400: the request
    is what the document says; delete an endpoint and it is taken)."""


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
        """EndpointsFull when `endpoints_max` endpoints exist already."""
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
    """`url` when it is what URL_PATTERN says (the schema of POST /v1/webhooks says the same),
    else InvalidRequest."""
    if len(url) > URL_LENGTH_MAX or not _URL.fullmatch(url):
        raise InvalidRequest(URL_RULE, param="url")
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
