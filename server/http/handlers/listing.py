"""GET /v1/transactions and GET /v1/accounts (pages with filters), and the `?at=` time of
GET /v1/accounts/{id}. Every parameter is checked before anything is asked of a store;
a query parameter a route does not define is refused (400), as on every route."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Collection, Iterable

from starlette.requests import Request
from starlette.responses import Response

from core.ledger.errors import InvalidRequest
from core.ledger.validation import check_account_ref, check_currency, check_limit
from core.pipeline.views import MetadataFilter, TransactionFilter
from server.http.handlers.common import (
    METADATA_FILTER,
    authenticate,
    guarded,
    json_response,
    takes,
    within_limit,
)

PAGE_LIMIT_MAX = 1000
JOURNAL_ID_MAX = 2**63 - 1

# The statuses a transaction may be listed by, and the journal statuses each one is
# recorded as: `executing` lives only in memory, its journal row says `processing`.
STATUS_FILTERS: dict[str, tuple[str, ...]] = {
    "processing": ("processing",), "executing": ("processing",),
    "completed": ("completed",), "failed": ("failed",), "held": ("held",),
    "voided": ("voided",)}
TYPES = frozenset({"transfer", "deposit", "withdrawal", "capture", "void", "reversal"})
ACCOUNT_STATUSES = frozenset({"active", "locked", "closed"})
# Both listings take `metadata[<key>]=<value>` filters besides their own parameters.
TRANSACTIONS_QUERY = takes("account", "status", "type", "since", "until", "limit", "cursor",
                           families=(METADATA_FILTER,))
ACCOUNTS_QUERY = takes("currency", "status", "limit", "cursor", families=(METADATA_FILTER,))

# RFC 3339 date-time: a full date, `T`, a full time with optional fraction, and `Z` or an
# offset. Fractions beyond microseconds are cut (the database keeps microseconds). A space
# where the offset's sign goes is a `+`: a query string decodes an unescaped `+` to a space
# (`?at=2026-12-07T10:00:00+01:00` as typed into curl or a browser), and a space can be
# nothing else there.
RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+ -])([0-9]{2}):([0-9]{2}))")

# Cursors are base64url without padding of "j<journal id>" or "a<account id>"
# (server/adapters/postgres/listing.py).
CURSOR = re.compile(r"[A-Za-z0-9_-]{2,88}")
JOURNAL_CURSOR = re.compile(rb"j[0-9]{1,19}")
ACCOUNT_CURSOR = re.compile(rb"a[A-Za-z0-9_@:-]{1,64}")


def check_time(name: str, raw: str) -> dt.datetime:
    """An RFC 3339 date-time with `Z` or an offset (a space for its `+`, see RFC3339), as an
    aware datetime (400 otherwise)."""
    found = RFC3339.fullmatch(raw)
    if found is not None:
        year, month, day, hour, minute, second, fraction, zulu, sign, oh, om = found.groups()
        try:
            offset = dt.timedelta(0)
            if not zulu:
                if int(oh) > 23 or int(om) > 59:
                    raise ValueError(raw)
                offset = dt.timedelta(hours=int(oh), minutes=int(om)) * (-1 if sign == "-" else 1)
            return dt.datetime(int(year), int(month), int(day), int(hour), int(minute),
                               int(second), int((fraction or "0")[:6].ljust(6, "0")),
                               tzinfo=dt.timezone(offset))
        except ValueError:
            pass
    raise InvalidRequest(f"{name} must be an RFC 3339 date-time with Z or an offset, "
                         "such as 2026-11-24T10:00:00Z or 2026-11-24T11:00:00%2B01:00 "
                         "(a + in a query string is written %2B)", param=name)


def check_cursor(cursor: str, text: re.Pattern[bytes]) -> None:
    """Refuse a cursor this API cannot have returned, before anything is asked of a store."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if not (CURSOR.fullmatch(cursor) and text.fullmatch(raw)):
        raise InvalidRequest("cursor is not one this API returned", param="cursor")
    if text is JOURNAL_CURSOR and not 0 < int(raw[1:]) <= JOURNAL_ID_MAX:
        raise InvalidRequest("cursor is not one this API returned", param="cursor")


def metadata_filter(items: Iterable[tuple[str, str]]) -> MetadataFilter:
    """The `metadata[<key>]=<value>` parameters as (key, value) pairs, in order, repeats
    dropped (the same key twice with two values: both must hold, so nothing matches). A
    NUL cannot be stored in metadata: 400, naming the parameter."""
    pairs: list[tuple[str, str]] = []
    for name, value in items:
        if METADATA_FILTER.fullmatch(name) is None:
            continue
        if "\x00" in name or "\x00" in value:
            raise InvalidRequest("metadata filters must not contain NUL characters", param=name)
        pair = (name[len("metadata["):-1], value)
        if pair not in pairs:
            pairs.append(pair)
    return tuple(pairs)


def _choice(name: str, raw: str | None, allowed: Collection[str]) -> str | None:
    if raw is None:
        return None
    if raw not in allowed:
        raise InvalidRequest(f"{name} must be one of {', '.join(sorted(allowed))}", param=name)
    return raw


@guarded
async def list_transactions(request: Request) -> Response:
    api, api_key = authenticate(request, "read")
    query = request.query_params
    TRANSACTIONS_QUERY.check(query)
    account = query.get("account")
    status = _choice("status", query.get("status"), STATUS_FILTERS)
    since = query.get("since")
    until = query.get("until")
    where = TransactionFilter(
        account=check_account_ref(account, "account") if account is not None else None,
        statuses=STATUS_FILTERS[status] if status is not None else None,
        type=_choice("type", query.get("type"), TYPES),
        since=check_time("since", since) if since is not None else None,
        until=check_time("until", until) if until is not None else None,
        metadata=metadata_filter(query.multi_items()))
    limit = check_limit(query.get("limit", "100"), PAGE_LIMIT_MAX)
    cursor = query.get("cursor")
    if cursor:  # an empty cursor is the first page, as on the entries route
        check_cursor(cursor, JOURNAL_CURSOR)
    await within_limit(api, api_key)
    return json_response(await api.listing.transactions(where, limit, cursor or None))


@guarded
async def list_accounts(request: Request) -> Response:
    api, api_key = authenticate(request, "read")
    query = request.query_params
    ACCOUNTS_QUERY.check(query)
    currency = query.get("currency")
    if currency is not None:
        check_currency(currency)
    status = _choice("status", query.get("status"), ACCOUNT_STATUSES)
    metadata = metadata_filter(query.multi_items())
    limit = check_limit(query.get("limit", "100"), PAGE_LIMIT_MAX)
    cursor = query.get("cursor")
    if cursor:
        check_cursor(cursor, ACCOUNT_CURSOR)
    await within_limit(api, api_key)
    return json_response(await api.listing.accounts(currency, status, limit, cursor or None,
                                                    metadata))
