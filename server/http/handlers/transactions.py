"""/v1/transactions handlers: decode, submit through the TransactionService, encode."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from core.ledger.errors import InvalidRequest, KassaError
from core.ledger.models import HOLD_EXPIRES_DEFAULT_S, Transaction
from core.ledger.validation import check_json_value, check_receipt_code, normalize_transaction
from core.pipeline.idempotency import submission
from core.pipeline.submission import Submitted
from core.pipeline.transaction_query import TransactionQuery
from server.http.answers import answer
from server.http.errors import error_dict, exception_parts
from server.http.handlers.common import (
    NO_QUERY,
    QUOTA,
    authenticate,
    check_media_type,
    decode,
    guarded,
    json_response,
    not_found,
    quota_headers,
    read_body,
    takes,
    within_limit,
)
from server.http.hot import Answer, Call, json_answer
from server.http.schemas import (
    BatchItemIn,
    TransactionIn,
    batch_in,
    batch_item_in,
    batch_items_in,
    transaction_in,
    transaction_patch,
)

BATCH_MAX = 1000
IDEMPOTENCY_KEY_MAX = 255
POST_QUERY = takes("wait")


def to_transaction(body: TransactionIn) -> Transaction:
    legs = [(leg.source, leg.destination, leg.amount) for leg in body.legs] if body.legs else None
    if body.legs is not None and not body.legs:
        raise InvalidRequest("legs must hold 1 to 64 legs")
    tx = normalize_transaction(
        body.type, body.currency, amount=body.amount, source=body.source,
        destination=body.destination, legs=legs, description=body.description,
        metadata=body.metadata)
    if not body.hold:
        if body.hold_expires_in_s is not None:
            raise InvalidRequest("hold_expires_in_s is for holds (\"hold\": true)")
        return tx
    if tx.type not in ("transfer", "withdrawal"):
        raise InvalidRequest("only a transfer or a withdrawal can be held")
    return msgspec.structs.replace(
        tx, hold_expires_in_s=body.hold_expires_in_s or HOLD_EXPIRES_DEFAULT_S)


def check_idempotency_key(key: str | None) -> str | None:
    if key is not None and not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
        raise InvalidRequest(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters")
    return key


def wants_wait(query: Mapping[str, str]) -> bool:
    raw = query.get("wait", "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidRequest("wait must be true or false", param="wait")
    return raw in ("true", "1")


async def authorize_call(call: Call, scope: str) -> str:
    """The caller's API key once it has `scope`, with only the query parameters the hot
    routes define, and within its rate limit, for a JSON body (415 otherwise)."""
    api_key = call.api.keys.require_header(call.header(b"authorization") or "", scope)
    POST_QUERY.check(call.query)
    await within_limit(call.api, api_key)
    check_media_type(call.header(b"content-type"))
    return api_key


HotHandler = Callable[[Call], Awaitable[Answer]]


def guarded_call(handler: HotHandler) -> HotHandler:
    """`guarded` for the hot routes (server/http/hot.py): typed errors answered through
    the same renderer as every other route's (param, WWW-Authenticate, Retry-After), and
    the key's rate limit headers on every answer once the limit was consulted."""

    async def run(call: Call) -> Answer:
        token = QUOTA.set(None)
        try:
            try:
                answer = await handler(call)
            except KassaError as exc:
                status, body, headers = exception_parts(exc)
                answer = json_answer(body, status, headers)
            answer.headers += json_answer(b"", 0, quota_headers(QUOTA.get())).headers
            return answer
        finally:
            QUOTA.reset(token)

    run.__name__ = handler.__name__
    return run


@guarded_call
async def post_transaction(call: Call) -> Answer:
    api_key = await authorize_call(call, "write")
    wait = wants_wait(call.query)
    key = check_idempotency_key(call.header(b"idempotency-key"))
    tx = to_transaction(decode(transaction_in, call.body))
    submitted = await call.api.transactions.submit(submission(tx, api_key, key, wait))
    status, body = await answer(call.api.queries, submitted)
    headers = {"Location": f"/v1/transactions/{submitted.receipt_code}"}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_answer(body, status, headers)


@guarded_call
async def post_batch(call: Call) -> Answer:
    api_key = await authorize_call(call, "write")
    wait = wants_wait(call.query)
    items = parse_items(call.body)
    valid = [item for item in items if not isinstance(item, KassaError)]
    service = call.api.transactions
    accounts = await service.view_accounts([a for tx, _ in valid for a in tx.account_ids])
    submitted = iter(await service.submit_many(
        [submission(tx, api_key, key, wait) for tx, key in valid], accounts))
    answered = [item if isinstance(item, KassaError) else next(submitted) for item in items]
    if wait:  # finished items are read back from the database, concurrently
        results = await asyncio.gather(*(item_result(call.api.queries, a) for a in answered))
    else:  # 202 bodies and errors: nothing to wait for
        results = [await item_result(call.api.queries, a) for a in answered]
    return json_answer({"results": results}, 201 if wait else 202)


def parse_items(body: bytes) -> list[tuple[Transaction, str | None] | KassaError]:
    """A batch's items, each a transaction and its key or the error that refuses it alone.
    One typed decode of the whole body when every item decodes (the usual batch); else
    the body is decoded again item by item, so that each error is its own item's."""
    typed = _decoded_whole(body)
    raws = [] if typed is not None else decode(batch_in, body).transactions
    if not 1 <= len(typed if typed is not None else raws) <= BATCH_MAX:
        raise InvalidRequest(f"a batch holds 1 to {BATCH_MAX} transactions")
    if typed is not None:
        return [typed_item(item) for item in typed]
    return [parse_item(raw) for raw in raws]


def _decoded_whole(body: bytes) -> list[BatchItemIn] | None:
    if b"\\u0000" in body:  # strings to check for NUL: item by item, by `decode`
        return None
    try:
        return batch_items_in.decode(body).transactions
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def typed_item(item: BatchItemIn) -> tuple[Transaction, str | None] | KassaError:
    try:
        if item.metadata is not None:  # free-form: `decode`'s depth check, at its level
            check_json_value(item.metadata, 4, False)  # {"transactions": [{"metadata": {
        return to_transaction(item), check_idempotency_key(item.idempotency_key)
    except KassaError as exc:
        return exc


def parse_item(raw: msgspec.Raw) -> tuple[Transaction, str | None] | KassaError:
    try:
        item = decode(batch_item_in, raw, level=3)  # {"transactions": [item]}
        return to_transaction(item), check_idempotency_key(item.idempotency_key)
    except KassaError as exc:
        return exc


async def item_result(queries: TransactionQuery, submitted: Submitted | KassaError) -> Any:
    """One item's result: the 202 body or the transaction, or its error; never raises."""
    if isinstance(submitted, KassaError):
        return error_dict(submitted.code, submitted.message, param=submitted.param)
    try:
        _, body = await answer(queries, submitted)
    except KassaError as exc:
        return error_dict(exc.code, exc.message, param=exc.param)
    return msgspec.Raw(body) if isinstance(body, bytes) else body


@guarded
async def get_status(request: Request) -> Response:
    api, api_key = authenticate(request, "read")
    NO_QUERY.check(request.query_params)
    code = check_receipt_code(request.path_params["receipt_code"])
    await within_limit(api, api_key)
    found = await api.queries.status(code)
    if found is None:
        return not_found("receipt")
    return json_response(found)


@guarded
async def get_transaction(request: Request) -> Response:
    api, api_key = authenticate(request, "read")
    NO_QUERY.check(request.query_params)
    code = check_receipt_code(request.path_params["receipt_code"])
    await within_limit(api, api_key)
    found = await api.queries.lookup(code)
    if found is None:
        return not_found("receipt")
    return json_response(found)  # still processing: its status, money and no entries


@guarded
async def patch_transaction(request: Request) -> Response:
    """Merge metadata into the transaction's (the one thing of it that can change)."""
    api, api_key = authenticate(request, "write")
    NO_QUERY.check(request.query_params)
    code = check_receipt_code(request.path_params["receipt_code"])
    await within_limit(api, api_key)
    check_media_type(request.headers.get("content-type"))
    body = decode(transaction_patch, await read_body(request, api.body_size_max))
    found = await api.transaction_metadata.patch(code, body.metadata, api.body_size_max)
    if found is None:
        return not_found("receipt")
    return json_response(found)
