"""What every handler shares: the Api, body reading with a limit, JSON answers."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import msgspec.inspect
from starlette.requests import Request
from starlette.responses import Response

from core.ledger.errors import InvalidRequest, KassaError
from core.ledger.validation import NESTING_MAX, check_json_value
from server.http.api import Api, api_of
from server.http.errors import error_response, from_exception
from server.http.schemas import encoder

T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]


def request_api(request: Request) -> Api:
    return api_of(request.app.state)


def authenticate(request: Request, scope: str) -> tuple[Api, str]:
    """The Api and the caller's API key, once the key has `scope` (401 or 403
    otherwise); no dependency is touched."""
    api = request_api(request)
    return api, api.keys.require(request, scope)


async def authorize(request: Request, scope: str) -> tuple[Api, str]:
    """As `authenticate`, and within the key's rate limit (429 otherwise)."""
    api, api_key = authenticate(request, scope)
    await api.limit(api_key)
    return api, api_key


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    raw = body if isinstance(body, bytes) else encoder.encode(body)
    return Response(raw, status, headers=headers, media_type="application/json")


class BodyTooLarge(KassaError):
    code = "invalid_request"


class UnsupportedMediaType(KassaError):
    code = "unsupported_media_type"


def check_media_type(content_type: str | None) -> None:
    """Bodies are JSON: `application/json` or `application/*+json`, parameters allowed; a
    missing Content-Type is taken as JSON (README, decisions)."""
    if content_type is None:
        return
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    raise UnsupportedMediaType("send the body as application/json")


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


def decode(decoder: msgspec.json.Decoder[T], body: bytes | msgspec.Raw, level: int = 1) -> T:
    """Decode a body (at JSON `level`) and refuse what the contract refuses in every body:
    invalid UTF-8, NUL characters, nesting deeper than NESTING_MAX.

    msgspec refuses invalid UTF-8 and lone surrogates; a NUL can only come from a \\u0000
    escape, so strings are walked only when the raw body holds one. The schema bounds the
    depth of everything but free-form values (metadata), walked only when the body has
    brackets enough to be deep. Common bodies cost one search and two counts, in C.
    """
    raw = body if isinstance(body, bytes) else memoryview(body).tobytes()
    try:
        decoded = decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(str(exc)) from None
    except RecursionError:
        raise InvalidRequest(f"JSON is nested deeper than {NESTING_MAX} levels") from None
    if b"\\u0000" in raw:
        check_struct(decoded, level)
    elif raw.count(b"[") + raw.count(b"{") + level - 1 > NESTING_MAX:
        for name in _free_fields(type(decoded)):
            value = getattr(decoded, name)
            if value is not None:
                check_json_value(value, level + 1, False)
    return decoded


def check_struct(struct: Any, level: int) -> None:
    """Walk every string and free-form value of a decoded struct (at JSON `level`)."""
    for name in struct.__struct_fields__:
        value = getattr(struct, name)
        if isinstance(value, msgspec.Struct):
            check_struct(value, level + 1)
        elif isinstance(value, list) and value and isinstance(value[0], msgspec.Struct):
            for item in value:
                check_struct(item, level + 2)
        elif isinstance(value, (str, dict, list)):
            check_json_value(value, level + 1, True)


@functools.cache
def _free_fields(cls: type) -> tuple[str, ...]:
    """The fields of a struct type that hold free-form JSON (dict or Any)."""
    if not issubclass(cls, msgspec.Struct):
        return ()
    return tuple(f.name for f in msgspec.inspect.type_info(cls).fields if _free(f.type))


def _free(t: msgspec.inspect.Type) -> bool:
    if isinstance(t, msgspec.inspect.UnionType):
        return any(_free(member) for member in t.types)
    return isinstance(t, (msgspec.inspect.DictType, msgspec.inspect.AnyType))


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
