"""/v1/accounts handlers."""

from __future__ import annotations

import base64
import binascii
import re
import secrets

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from core.ledger.errors import InvalidRequest
from core.ledger.models import WORLD_PREFIX
from core.ledger.validation import (
    check_account_id,
    check_account_ref,
    check_currency,
    check_limit,
    check_overdraft_limit,
)
from server.http.errors import error_response
from server.http.handlers.common import (
    NO_QUERY,
    authenticate,
    authorize,
    check_media_type,
    decode,
    guarded,
    json_response,
    not_found,
    read_body,
    takes,
    within_limit,
)
from server.http.handlers.listing import check_time
from server.http.schemas import account_in, account_patch

PAGE_LIMIT_MAX = 1000
LEDGER_ID_MAX = 2**63 - 1
# Cursors are base64url("l<ledger id>") without padding (server/adapters/postgres/accounts.py).
CURSOR = re.compile(r"[A-Za-z0-9_-]{2,28}")
CURSOR_TEXT = re.compile(rb"l[0-9]{1,19}")
ACCOUNT_QUERY = takes("at")
ENTRIES_QUERY = takes("limit", "cursor")


@guarded
async def create_account(request: Request) -> Response:
    api, _ = await authorize(request, "admin")
    check_media_type(request.headers.get("content-type"))
    body = decode(account_in, await read_body(request, api.body_size_max))
    account_id = check_account_id(body.id) if body.id is not None else f"acc_{secrets.token_hex(10)}"
    account = await api.accounts.create(
        account_id, check_currency(body.currency), check_overdraft_limit(body.overdraft_limit or 0),
        msgspec.to_builtins(body.contact) if body.contact else None, body.metadata or {})
    return json_response(account, 201, {"Location": f"/v1/accounts/{account_id}"})


@guarded
async def get_account(request: Request) -> Response:
    api, api_key = authenticate(request, "read")
    ACCOUNT_QUERY.check(request.query_params)
    account_id = check_account_ref(request.path_params["account_id"])
    at = request.query_params.get("at")
    if at is not None:  # the balance as it stood then; no held or available
        instant = check_time("at", at)
        await within_limit(api, api_key)
        past = await api.listing.account_at(account_id, instant)
        return json_response(past) if past is not None else not_found("account")
    await within_limit(api, api_key)
    account = await api.accounts.get(account_id)
    return json_response(account) if account is not None else not_found("account")


@guarded
async def patch_account(request: Request) -> Response:
    api, api_key = authenticate(request, "admin")
    NO_QUERY.check(request.query_params)
    account_id = check_account_ref(request.path_params["account_id"])
    if account_id.startswith(WORLD_PREFIX):
        # The contract's one invalid_request that is a 422: the system accounts' status is fixed.
        return error_response("invalid_request", "system accounts cannot be changed", status=422)
    await within_limit(api, api_key)
    check_media_type(request.headers.get("content-type"))
    body = decode(account_patch, await read_body(request, api.body_size_max))
    status = body.status if not isinstance(body.status, msgspec.UnsetType) else None
    metadata = body.metadata if not isinstance(body.metadata, msgspec.UnsetType) else None
    if status is None and metadata is None:
        raise InvalidRequest("give a status, metadata or both")
    account = await api.accounts.update(account_id, status, metadata, api.body_size_max)
    return json_response(account) if account is not None else not_found("account")


@guarded
async def list_entries(request: Request) -> Response:
    api, api_key = authenticate(request, "read")
    ENTRIES_QUERY.check(request.query_params)
    account_id = check_account_ref(request.path_params["account_id"])
    limit = check_limit(request.query_params.get("limit", "100"), PAGE_LIMIT_MAX)
    cursor = request.query_params.get("cursor")
    if cursor:  # an empty cursor is the first page, as before
        check_cursor(cursor)
    await within_limit(api, api_key)
    page = await api.accounts.entries(account_id, limit, cursor or None)
    return json_response(page) if page is not None else not_found("account")


def check_cursor(cursor: str) -> None:
    """Refuse a cursor this API cannot have returned, before anything is asked of a store."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        text = b""
    if not (CURSOR.fullmatch(cursor) and CURSOR_TEXT.fullmatch(text)
            and 0 < int(text[1:]) <= LEDGER_ID_MAX):
        raise InvalidRequest("cursor is not one this API returned", param="cursor")
