"""The one table from error codes to HTTP statuses, and the contract's error body."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from core.ledger.errors import KassaError

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


def error_dict(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(code: str, message: str, *, retry_after_s: int | None = None,
                   **extra: Any) -> Response:
    from server.http.schemas import encoder

    status = HTTP_STATUS.get(code, 500)
    headers = {}
    if status in (429, 503) or retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s or 1)
    return Response(encoder.encode(error_dict(code, message, **extra)), status,
                    headers=headers, media_type="application/json")


def from_exception(exc: KassaError, **extra: Any) -> Response:
    return error_response(exc.code, exc.message, retry_after_s=exc.retry_after_s, **extra)
