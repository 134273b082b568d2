"""/v1/transactions handlers: decode, submit through the TransactionService, encode."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from core.ledger.decide import Outcome
from core.ledger.errors import InvalidRequest, KassaError
from core.ledger.models import Transaction
from core.ledger.validation import check_receipt_code, normalize_transaction
from core.pipeline.accept import Submission, Submitted, accepted_body
from server.http.errors import error_dict
from server.http.handlers.common import (
    authenticate,
    check_media_type,
    decode,
    guarded,
    json_response,
    not_found,
)
from server.http.hot import Answer, Call, json_answer
from server.http.schemas import TransactionIn, batch_in, batch_item_in, transaction_in
from server.process.runtime import Runtime

BATCH_MAX = 1000
IDEMPOTENCY_KEY_MAX = 255


def to_transaction(body: TransactionIn) -> Transaction:
    legs = [(leg.source, leg.destination, leg.amount) for leg in body.legs] if body.legs else None
    if body.legs is not None and not body.legs:
        raise InvalidRequest("legs must hold 1 to 64 legs")
    return normalize_transaction(
        body.type, body.currency, amount=body.amount, source=body.source,
        destination=body.destination, legs=legs, description=body.description,
        metadata=body.metadata)


_canonical = msgspec.json.Encoder(order="sorted")


def request_hash(tx: Transaction) -> str:
    """The same request in any JSON spelling hashes the same: the normalised form, with
    object keys (metadata included) in sorted order."""
    return hashlib.sha256(_canonical.encode(tx)).hexdigest()


@functools.lru_cache(maxsize=1024)
def scope_of(api_key: str) -> str:
    """Idempotency keys are scoped to the API key; store a digest, never the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:24]


def check_idempotency_key(key: str | None) -> str | None:
    if key is not None and not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
        raise InvalidRequest(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters")
    return key


def wants_wait(query: Mapping[str, str]) -> bool:
    raw = query.get("wait", "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidRequest("wait must be true or false")
    return raw in ("true", "1")


async def authorize_call(call: Call, scope: str) -> str:
    """The caller's API key once it has `scope` and is within its rate limit, for a JSON
    body (415 otherwise)."""
    api_key = call.runtime.keys.require_header(call.header(b"authorization") or "", scope)
    await call.runtime.limit(api_key)
    check_media_type(call.header(b"content-type"))
    return api_key


async def post_transaction(call: Call) -> Answer:
    api_key = await authorize_call(call, "write")
    wait = wants_wait(call.query)
    key = check_idempotency_key(call.header(b"idempotency-key"))
    tx = to_transaction(decode(transaction_in, call.body))
    submitted = await call.runtime.service.submit(
        Submission(tx, scope_of(api_key), key, request_hash(tx) if key else None, wait))
    status, body = await answer(call.runtime, submitted)
    headers = {"Location": f"/v1/transactions/{submitted.receipt_code}"}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_answer(body, status, headers)


async def answer(runtime: Runtime, submitted: Submitted) -> tuple[int, Any]:
    """The HTTP status and body for one submission: a finished one from the outcome in
    memory (no read that could fail after the transaction was posted), a replayed
    `?wait=true` one from the journal as it stands."""
    if submitted.http_status == 202:
        return 202, submitted.body or accepted_body(submitted.receipt_code, submitted.processing_time)
    outcome, tx = submitted.outcome, submitted.transaction
    if outcome is not None and tx is not None and outcome.recorded_with_decision:
        view = transaction_view(outcome, tx)
    else:
        view = await runtime.accounts.transaction(submitted.receipt_code)
    assert view is not None, "a submitted journal is durable"
    if view["status"] == "completed":
        return 201, view
    if view["status"] == "failed":
        error = error_dict(view["error"]["code"], view["error"]["message"],
                           receipt_code=submitted.receipt_code)
        return 422, {**error, "receipt_code": submitted.receipt_code}
    return 202, accepted_body(submitted.receipt_code, submitted.processing_time)


def transaction_view(outcome: Outcome, tx: Transaction) -> dict[str, Any]:
    """The full transaction (docs/api.md) of a journal recorded by the commit that decided it, as
    the database has it (both times are the decision's)."""
    error = ({"code": outcome.error.code, "message": outcome.error.message}
             if outcome.error is not None else None)
    return {
        "receipt_code": outcome.receipt_code, "status": outcome.status, "type": tx.type,
        "currency": tx.currency, "journal_id": outcome.journal_id,
        "description": tx.description, "metadata": tx.metadata,
        "entries": [{"account": e.account, "direction": e.direction, "amount": e.amount,
                     "balance_after": e.balance_after} for e in outcome.entries],
        "error": error, "created_at": outcome.finished_at, "completed_at": outcome.finished_at,
    }


async def post_batch(call: Call) -> Answer:
    api_key = await authorize_call(call, "write")
    wait = wants_wait(call.query)
    batch = decode(batch_in, call.body)
    if not 1 <= len(batch.transactions) <= BATCH_MAX:
        raise InvalidRequest(f"a batch holds 1 to {BATCH_MAX} transactions")
    scope = scope_of(api_key)
    items = [parse_item(raw) for raw in batch.transactions]
    valid = [item for item in items if not isinstance(item, KassaError)]
    accounts = await call.runtime.service.view_accounts(
        [a for tx, _ in valid for a in tx.account_ids])
    submitted = iter(await call.runtime.service.submit_many(
        [Submission(tx, scope, key, request_hash(tx) if key else None, wait) for tx, key in valid],
        accounts))
    answered = [item if isinstance(item, KassaError) else next(submitted) for item in items]
    if wait:  # finished items are read back from the database, concurrently
        results = await asyncio.gather(*(item_result(call.runtime, a) for a in answered))
    else:  # 202 bodies and errors: nothing to wait for
        results = [await item_result(call.runtime, a) for a in answered]
    return json_answer({"results": results}, 201 if wait else 202)


def parse_item(raw: msgspec.Raw) -> tuple[Transaction, str | None] | KassaError:
    try:
        item = decode(batch_item_in, raw, level=3)  # {"transactions": [item]}
        return to_transaction(item), check_idempotency_key(item.idempotency_key)
    except KassaError as exc:
        return exc


async def item_result(runtime: Runtime, submitted: Submitted | KassaError) -> Any:
    """One item's result: the 202 body or the transaction, or its error; never raises."""
    if isinstance(submitted, KassaError):
        return error_dict(submitted.code, submitted.message)
    try:
        _, body = await answer(runtime, submitted)
    except KassaError as exc:
        return error_dict(exc.code, exc.message)
    return msgspec.Raw(body) if isinstance(body, bytes) else body


@guarded
async def get_status(request: Request) -> Response:
    runtime, api_key = authenticate(request, "read")
    code = check_receipt_code(request.path_params["receipt_code"])
    await runtime.limit(api_key)
    found = await runtime.status.status(code)
    if found is None:
        return not_found("receipt")
    return json_response(found)


@guarded
async def get_transaction(request: Request) -> Response:
    runtime, api_key = authenticate(request, "read")
    code = check_receipt_code(request.path_params["receipt_code"])
    await runtime.limit(api_key)
    view = await runtime.accounts.transaction(code)
    if view is None:
        return not_found("receipt")
    if view["status"] == "processing":
        found = await runtime.status.status(code)
        return json_response({**msgspec.to_builtins(found), "entries": []})
    return json_response(view)

