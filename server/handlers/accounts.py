"""/v1/accounts handlers."""

from __future__ import annotations

import secrets

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from core.errors import InvalidRequest
from core.validation import check_account_id, check_currency, check_overdraft_limit
from server.handlers.common import authorize, decode, guarded, json_response, not_found, read_body
from server.schemas import account_in, account_patch

PAGE_LIMIT_MAX = 1000


@guarded
async def create_account(request: Request) -> Response:
    runtime, _ = await authorize(request, "admin")
    body = decode(account_in, await read_body(request, runtime.settings.body_size_max))
    account_id = check_account_id(body.id) if body.id is not None else f"acc_{secrets.token_hex(10)}"
    account = await runtime.accounts.create(
        account_id, check_currency(body.currency), check_overdraft_limit(body.overdraft_limit),
        msgspec.to_builtins(body.contact) if body.contact else None, body.metadata or {})
    return json_response(account, 201, {"Location": f"/v1/accounts/{account_id}"})


@guarded
async def get_account(request: Request) -> Response:
    runtime, _ = await authorize(request, "read")
    account = await runtime.accounts.get(request.path_params["account_id"])
    return json_response(account) if account else not_found("account")


@guarded
async def patch_account(request: Request) -> Response:
    runtime, _ = await authorize(request, "admin")
    body = decode(account_patch, await read_body(request, runtime.settings.body_size_max))
    account_id = request.path_params["account_id"]
    account = await runtime.accounts.set_status(account_id, body.status)
    if account is None:
        return not_found("account")
    await runtime.invalidate_accounts([account_id])
    return json_response(account)


@guarded
async def list_entries(request: Request) -> Response:
    runtime, _ = await authorize(request, "read")
    account_id = request.path_params["account_id"]
    raw_limit = request.query_params.get("limit", "100")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= PAGE_LIMIT_MAX:
        raise InvalidRequest(f"limit must be an integer from 1 to {PAGE_LIMIT_MAX}")
    if await runtime.accounts.get(account_id) is None:
        return not_found("account")
    entries, cursor = await runtime.accounts.entries(
        account_id, int(raw_limit), request.query_params.get("cursor"))
    return json_response({"entries": entries, "next_cursor": cursor})
