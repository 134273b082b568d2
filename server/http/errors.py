"""The one table from error codes to HTTP statuses, and the contract's error body.

Every error body on every path (Starlette handlers, the raw-ASGI hot routes, the HTTP
protocol's own refusals) is built by `error_dict`: `code`, `message`, `param` (the body
field or query parameter at fault, or null) and `request_id` (the answer's X-Request-Id:
the request's, from core/kit/request_context.py, which server/http/hot.py sets for every
request, unless the caller names it).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import Response

from core.kit.request_context import REQUEST_ID
from core.ledger.errors import KassaError, WrongTarget

HTTP_STATUS = {
    "invalid_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "account_exists": 409,
    "hold_not_pending": 409,
    "reversal_exceeds_original": 409,
    "idempotency_in_progress": 409,
    "account_not_found": 422,
    "account_inactive": 422,
    "currency_mismatch": 422,
    "insufficient_funds": 422,
    "amount_overflow": 422,
    "idempotency_key_reused": 422,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "overloaded": 503,
    "unavailable": 503,
    "outcome_unknown": 503,
    "method_not_allowed": 405,
}

# RFC 9110 11.6.1: a 401 names the scheme the server accepts.
WWW_AUTHENTICATE = ("WWW-Authenticate", "Bearer")


def error_dict(code: str, message: str, *, param: str | None = None,
               request_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "param": param,
                      "request_id": request_id if request_id is not None else REQUEST_ID.get(),
                      **extra}}


def error_headers(status: int, retry_after_s: int | None = None) -> dict[str, str]:
    """What an error answer carries besides its body: Retry-After on 429 and 503 (or when
    the error says when to retry), WWW-Authenticate on 401."""
    headers = {}
    if status in (429, 503) or retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s or 1)
    if status == 401:
        headers[WWW_AUTHENTICATE[0]] = WWW_AUTHENTICATE[1]
    return headers


def error_response(code: str, message: str, *, retry_after_s: int | None = None,
                   status: int | None = None, **extra: Any) -> Response:
    from server.http.schemas import encoder

    status = status or HTTP_STATUS.get(code, 500)
    return Response(encoder.encode(error_dict(code, message, **extra)), status,
                    headers=error_headers(status, retry_after_s), media_type="application/json")


def exception_parts(exc: KassaError, status: int | None = None
                    ) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A typed error's status, body and headers, for a Starlette Response or a hot-path
    Answer alike."""
    # The one invalid_request by class: well formed, refused by what it names (422).
    status = status or (422 if isinstance(exc, WrongTarget) else HTTP_STATUS.get(exc.code, 500))
    return (status, error_dict(exc.code, exc.message, param=exc.param),
            error_headers(status, exc.retry_after_s))


def from_exception(exc: KassaError, status: int | None = None) -> Response:
    from server.http.schemas import encoder

    status, body, headers = exception_parts(exc, status)
    return Response(encoder.encode(body), status, headers=headers, media_type="application/json")


# msgspec names what it refused in its message: "Expected `int`, got `str` - at
# `$.legs[2].amount`", "Object contains unknown field `foo` - at `$.legs[0]`", "Object
# missing required field `currency`". The field at fault is the path after `$`, with the
# named field appended for an unknown or missing one.
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]*)`")


def msgspec_param(message: str) -> str | None:
    """The body field a msgspec validation message is about (`legs[2].source`), or None
    (malformed JSON, or the body as a whole)."""
    at = _AT.search(message)
    path = at.group(1) if at is not None else ""
    field = _FIELD.search(message)
    if field is not None:
        path = f"{path}.{field.group(1)}" if path else field.group(1)
    return path or None
