"""What every handler shares: the runtime, body reading with a limit, JSON answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from core.errors import InvalidRequest, KassaError
from server.errors import error_response, from_exception
from server.schemas import encoder

if TYPE_CHECKING:
    from server.runtime import Runtime

T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def authorize(request: Request, scope: str) -> tuple[Runtime, str]:
    """The runtime and the caller's API key, once the key has `scope` and is within its
    rate limit (401, 403 or 429 otherwise)."""
    runtime = runtime_of(request)
    api_key = runtime.keys.require(request, scope)
    await runtime.limit(api_key)
    return runtime, api_key


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    raw = body if isinstance(body, bytes) else encoder.encode(body)
    return Response(raw, status, headers=headers, media_type="application/json")


class BodyTooLarge(KassaError):
    code = "invalid_request"


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body is larger than {limit} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"request body is larger than {limit} bytes")
    return body


def decode(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(str(exc)) from None


def guarded(handler: Handler) -> Handler:
    """Turn typed errors into the contract's error answers, in one place."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except BodyTooLarge as exc:
            response = from_exception(exc)
            response.status_code = 413
            return response
        except KassaError as exc:
            return from_exception(exc)

    run.__name__ = handler.__name__
    return run


def not_found(what: str) -> Response:
    return error_response("not_found", f"{what} not found")
