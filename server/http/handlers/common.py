"""What every handler shares: the Api, body reading with a limit, the query parameters a
route defines, the rate limit and its answer headers, JSON answers."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import msgspec.inspect
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from core.kit.rate_limit import Quota
from core.ledger.errors import InvalidRequest, KassaError, RateLimited
from core.ledger.models import LEGS_MAX
from core.ledger.validation import NESTING_MAX, check_json_value
from server.http.api import Api, api_of
from server.http.errors import error_response, from_exception, msgspec_param
from server.http.schemas import encoder

T = TypeVar("T")
log = logging.getLogger("kassa.http")
Handler = Callable[[Request], Awaitable[Response]]

_INT_GOT_FLOAT = re.compile(r"Expected `int( \| null)?`, got `float`")
_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[([0-9]+)\]")  # `legs[2].amount`: legs, 2, amount
INT_FIELDS_MAX = 2 * LEGS_MAX + 8  # integer fields in the largest body (a batch item's legs)

# The key's quota as the rate limit left it for the request this task serves (None: no
# limit set, or not consulted yet); `within_limit` sets it, `guarded` (and the hot routes'
# `guarded_call`) turn it into headers.
QUOTA: ContextVar[Quota | None] = ContextVar("kassa_quota", default=None)
# The draft's name for our one policy (a quota per API key). The syntax is that of
# draft-ietf-httpapi-ratelimit-headers-11 (May 2026; unchanged since -08): a List of
# quota policies, `RateLimit-Policy: "<name>";q=<quota units>;w=<window seconds>`, and the
# current state, `RateLimit: "<name>";r=<remaining>;t=<seconds until the quota resets>`.
RATE_POLICY = "api_key"


@dataclass(frozen=True, slots=True)
class Query:
    """The query parameters a route defines: exact `names`, and `families` of names by
    pattern (the listings' `metadata[<key>]` filters). Any other is refused (400
    invalid_request naming it) before anything is asked of a store."""

    names: frozenset[str] = frozenset()
    families: tuple[re.Pattern[str], ...] = ()

    def check(self, given: Iterable[str]) -> None:
        for name in given:
            if name not in self.names and not any(f.fullmatch(name) for f in self.families):
                raise InvalidRequest(f"unknown query parameter {name!r}", param=name)


def takes(*names: str, families: tuple[re.Pattern[str], ...] = ()) -> Query:
    return Query(frozenset(names), families)


NO_QUERY = takes()
# `metadata[<key>]=<value>`: a filter on a listing (exact match on a string value).
METADATA_FILTER = re.compile(r"metadata\[.+\]")


def request_api(request: Request) -> Api:
    return api_of(request.app.state)


def authenticate(request: Request, scope: str) -> tuple[Api, str]:
    """The Api and the caller's API key, once the key has `scope` (401 or 403
    otherwise); no dependency is touched."""
    api = request_api(request)
    return api, api.keys.require(request, scope)


async def authorize(request: Request, scope: str, defined: Query = NO_QUERY) -> tuple[Api, str]:
    """As `authenticate`, with only the query parameters `defined`, and within the key's
    rate limit (429 otherwise)."""
    api, api_key = authenticate(request, scope)
    defined.check(request.query_params)
    await within_limit(api, api_key)
    return api, api_key


async def within_limit(api: Api, api_key: str) -> None:
    """Count this request against the key's rate limit (429 when it is spent); the quota
    left goes on the answer (`guarded`)."""
    try:
        QUOTA.set(await api.limit(api_key))
    except RateLimited as exc:
        QUOTA.set(exc.quota)
        raise


def quota_headers(quota: Quota | None) -> dict[str, str]:
    """RateLimit-Policy and RateLimit (RATE_POLICY) for a key's quota; RateLimit only
    when the state is known (the limit fails open while Redis is down)."""
    if quota is None:
        return {}
    headers = {"RateLimit-Policy": f'"{RATE_POLICY}";q={quota.limit};w={quota.window_s}'}
    if quota.remaining is not None:
        headers["RateLimit"] = f'"{RATE_POLICY}";r={quota.remaining};t={quota.reset_s}'
    return headers


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
    except msgspec.ValidationError as exc:
        decoded = _with_integral_floats(decoder.type, raw, str(exc))
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


def _with_integral_floats(type_: Any, raw: bytes, message: str) -> Any:
    """JSON Schema (and so the OpenAPI document) counts 79234.0 as an integer; msgspec does
    not. Where the type says int and the body has a float with an integral value, take the
    int, there only: a fraction, or a float anywhere else (metadata keeps its values as
    sent), is refused as before. The rare path: the body decoded untyped, mended where
    msgspec points, converted again; one pass per such field."""
    try:
        value = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        value = None
    for _ in range(INT_FIELDS_MAX):
        if not _mend_integral_float(value, message):
            raise InvalidRequest(message, param=msgspec_param(message))
        try:
            return msgspec.convert(value, type_)
        except msgspec.ValidationError as exc:
            message = str(exc)
    raise InvalidRequest(message, param=msgspec_param(message))


def _mend_integral_float(value: Any, message: str) -> bool:
    """Replace the float msgspec's `message` says was not an int by that int, if it is
    integral; False when the message is about something else."""
    path = msgspec_param(message) if _INT_GOT_FLOAT.match(message) else None
    steps = [int(i) if i else name for name, i in _STEP.findall(path or "")]
    if not steps:
        return False
    for step in steps[:-1]:
        if not isinstance(value, (dict, list)):
            return False
        value = value[step]  # type: ignore[index]
    found = value[steps[-1]] if isinstance(value, (dict, list)) else None  # type: ignore[index]
    if not (isinstance(found, float) and found.is_integer()):
        return False
    value[steps[-1]] = int(found)  # type: ignore[index]
    return True


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
    """Turn typed errors into the contract's error answers, in one place, and put the
    key's rate limit headers on the answer once the limit was consulted."""

    async def run(request: Request) -> Response:
        token = QUOTA.set(None)
        try:
            try:
                response = await handler(request)
            except BodyTooLarge as exc:
                response = from_exception(exc, 413)
            except ClientDisconnect:
                # The client left before its body was complete: nothing was done, and no
                # one is there to read an answer (uvicorn drops it); not a server error.
                log.info("client disconnected before the body of %s %s was complete",
                         request.method, request.url.path)
                response = error_response("invalid_request", "the request body ended early")
            except KassaError as exc:
                response = from_exception(exc)
            response.headers.update(quota_headers(QUOTA.get()))
            return response
        finally:
            QUOTA.reset(token)

    run.__name__ = handler.__name__
    return run


def not_found(what: str) -> Response:
    return error_response("not_found", f"{what} not found")
