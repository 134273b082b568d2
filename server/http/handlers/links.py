"""POST /v1/transactions/{receipt_code}/capture, /void and /reverse: each makes a new
transaction that names the one in the path, submitted and answered like any other
(202, or 201 with `?wait=true`; Idempotency-Key honoured)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from core.ledger.errors import InvalidRequest
from core.ledger.models import Transaction
from core.ledger.validation import check_receipt_code
from core.pipeline.idempotency import submission
from server.http.answers import answer
from server.http.api import Api
from server.http.handlers.common import (
    authorize,
    check_media_type,
    decode,
    guarded,
    json_response,
    read_body,
    takes,
)
from server.http.handlers.transactions import check_idempotency_key, wants_wait
from server.http.schemas import CaptureIn, ReverseIn, capture_in, reverse_in

LINKED_QUERY = takes("wait")

# (api, receipt code in the path, body, whether to check the named journal's state early)
Build = Callable[[Api, str, bytes, bool], Awaitable[Transaction]]


async def _capture(api: Api, code: str, body: bytes, early: bool) -> Transaction:
    request = decode(capture_in, body) if body.strip() else CaptureIn()
    return await api.links.capture(code, request.amount, early=early)


async def _void(api: Api, code: str, body: bytes, early: bool) -> Transaction:
    if body.strip() and body.strip() != b"{}":
        raise InvalidRequest("a void takes no body")
    return await api.links.void(code, early=early)


async def _reverse(api: Api, code: str, body: bytes, early: bool) -> Transaction:
    request = decode(reverse_in, body) if body.strip() else ReverseIn()
    return await api.links.reverse(code, request.amount, request.description, early=early)


def _linked(build: Build) -> Callable[[Request], Awaitable[Response]]:
    async def handler(request: Request) -> Response:
        api, api_key = await authorize(request, "write", LINKED_QUERY)
        code = check_receipt_code(request.path_params["receipt_code"])
        wait = wants_wait(request.query_params)
        key = check_idempotency_key(request.headers.get("idempotency-key"))
        body = await read_body(request, api.body_size_max)
        if body.strip():  # a void (or a default capture) may come with no body at all
            check_media_type(request.headers.get("content-type"))
        # With a key, a retry must reach the pipeline to be answered as a replay.
        tx = await build(api, code, body, key is None)
        submitted = await api.transactions.submit(submission(tx, api_key, key, wait))
        status, body = await answer(api.queries, submitted)
        headers = {"Location": f"/v1/transactions/{submitted.receipt_code}"}
        if submitted.replayed:
            headers["Idempotent-Replayed"] = "true"
        return json_response(body, status, headers)

    handler.__name__ = build.__name__.lstrip("_")
    return guarded(handler)


capture = _linked(_capture)
void = _linked(_void)
reverse = _linked(_reverse)
