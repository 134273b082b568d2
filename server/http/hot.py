"""The two hot routes as raw ASGI: POST /v1/transactions and POST /v1/transactions/batch.

Per request, Starlette builds Request, Headers, QueryParams and Response objects, matches
route regexes and passes two middlewares: more Python than the rest of the accept path
(docs/performance.md). These two routes read the ASGI scope directly and answer with two
`send` calls; every other route stays in Starlette's routing table (server/http/app.py), and
both share the handlers' logic and the contract's error bodies.

Every HTTP request passes `HotRoutes.__call__`, which also records it for the HTTP metrics
(`Api.record_request`): the route template (a hot route's path, or the Starlette route that
matched, which Starlette leaves in `scope["route"]`; `unmatched` when none did), the method,
the answer's status and the time to the answer's last byte.

While tracing is on (server/tracing/, docs/operations.md "Tracing") it also gives the
request its W3C traceparent, and a server span when it is sampled; while it is off, that
costs one flag test per request.

It also writes a request's first and last log lines, both under its `X-Request-Id`:
`[REQUEST START] POST /v1/transactions?wait=true` on arrival and `[REQUEST END] POST
/v1/transactions?wait=true: 201 in 3.1ms` after its answer, at debug only (about 13 µs
each: at info the transaction lines already spend most of the logging budget of
docs/performance.md, and they are the lines a person follows a request by).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any
from urllib.parse import parse_qsl

from opentelemetry.trace import StatusCode

from core.kit.request_context import REQUEST_ID, TRACEPARENT
from core.ledger.errors import InvalidRequest, KassaError
from server.http.api import Api, RecordRequest
from server.http.errors import HTTP_STATUS, error_dict
from server.http.handlers.common import BodyTooLarge
from server.http.schemas import encoder
from server.tracing import spans

log = logging.getLogger("kassa.http")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_REQUEST_ID = b"x-request-id"
_CLIENT_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
UNMATCHED = "unmatched"  # the route label of a request no route matched (a 404)


def request_id(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's X-Request-Id if it is 1..128 visible ASCII characters, else a new one."""
    for name, value in headers:
        if name == _REQUEST_ID and _CLIENT_REQUEST_ID.fullmatch(value):
            return value
    return secrets.token_hex(16).encode()


@dataclass(slots=True)
class Call:
    """What a hot handler needs of one HTTP request."""

    api: Api
    headers: dict[bytes, bytes]  # lower-case names; the last value of a repeated header
    query: dict[str, str]
    body: bytes

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


Handler = Callable[[Call], Awaitable[Answer]]


def json_answer(body: Any, status: int, headers: dict[str, str] | None = None) -> Answer:
    raw = body if isinstance(body, bytes) else encoder.encode(body)
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return Answer(status, raw, extra)


def error_answer(exc: KassaError, status: int | None = None) -> Answer:
    status = status or HTTP_STATUS.get(exc.code, 500)
    headers = {}
    if status in (429, 503) or exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s or 1)
    return json_answer(error_dict(exc.code, exc.message), status, headers)


class HotRoutes:
    """ASGI app: the hot routes here, everything else to `fallback` (Starlette)."""

    def __init__(self, fallback: Any, routes: dict[tuple[str, str], Handler],
                 api: Callable[[], Api]) -> None:
        self._fallback: ASGIApp = fallback
        self._routes = routes
        self._paths = {path for _, path in routes}
        # Paths that the fallback also routes (GET /v1/transactions): their other methods
        # go there, which answers 405 for a method neither has.
        self._shared = {getattr(r, "path", None) for r in getattr(fallback, "routes", ())}
        self._api = api
        self.state = fallback.state  # where the lifespan (or a test) puts the runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._fallback(scope, receive, send)
        elif spans.ENABLED:  # the one test per request while tracing is off
            await self._traced(scope, receive, send)
        else:
            await self._serve(scope, receive, send)

    async def _traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`_serve` in the request's server span (server/tracing/spans.py), named by its
        route template once known."""
        unsampled = spans.unsampled(scope["headers"])
        if unsampled is not None:  # its traceparent is carried, no span is built
            token = TRACEPARENT.set(unsampled)
            try:
                await self._serve(scope, receive, send)
            finally:
                TRACEPARENT.reset(token)
            return
        path = scope["path"]
        with spans.http_request(scope["method"], path if path in self._paths else "",
                                scope["headers"]) as span:
            status = 500

            async def watched(message: dict[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            await self._serve(scope, receive, watched)
            matched = scope.get("route")
            if matched is not None:
                span.update_name(f"{scope['method']} {getattr(matched, 'path', path)}")
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = perf_counter()
        rid = request_id(scope["headers"])
        token = REQUEST_ID.set(rid.decode("ascii"))
        path = scope["path"]
        route = path
        status = 500  # unless an answer started
        target = ""
        if log.isEnabledFor(logging.DEBUG):
            query = scope["query_string"]
            target = f"{scope['method']} {path}" + (f"?{query.decode('latin-1')}" if query else "")
            log.debug("[REQUEST START] %s", target)
        try:
            if path in self._paths and ((scope["method"], path) in self._routes
                                        or path not in self._shared):
                status = await self._hot(scope, receive, send, rid)
            else:
                reply = _Reply(send, rid)
                try:
                    await self._fallback(scope, receive, reply)
                finally:
                    status = reply.status
                    matched = scope.get("route")
                    route = getattr(matched, "path", UNMATCHED) if matched is not None else UNMATCHED
        finally:
            if target:
                log.debug("[REQUEST END] %s: %d in %.1fms", target, status,
                          (perf_counter() - start) * 1000)
            REQUEST_ID.reset(token)
            record = self._recorder()
            if record is not None:
                record(route, scope["method"], status, perf_counter() - start)

    def _recorder(self) -> RecordRequest | None:
        try:
            return self._api().record_request
        except AttributeError:  # no runtime on the app's state (yet)
            return None

    async def _hot(self, scope: Scope, receive: Receive, send: Send, rid: bytes) -> int:
        handler = self._routes.get((scope["method"], scope["path"]))
        if handler is None:
            answer = json_answer(error_dict("invalid_request", f"{scope['method']} is not allowed here"),
                                 405, {"Allow": ", ".join(sorted(m for m, p in self._routes if p == scope["path"]))})
        else:
            answer = await self._answer(handler, scope, receive)
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": [_JSON, (b"content-length", str(len(answer.body)).encode()),
                                (_REQUEST_ID, rid), *answer.headers]})
        await send({"type": "http.response.body", "body": answer.body})
        return answer.status

    async def _answer(self, handler: Handler, scope: Scope, receive: Receive) -> Answer:
        try:
            api = self._api()
            call = Call(api, dict(scope["headers"]), _query(scope["query_string"]),
                        await _body(receive, api.body_size_max))
            return await handler(call)
        except BodyTooLarge as exc:
            return error_answer(exc, 413)
        except KassaError as exc:
            return error_answer(exc)
        except Exception:  # noqa: BLE001 - a defect: logged, answered as the contract says
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            return json_answer(error_dict("internal", "internal error"), 500)


class _Reply:
    """The fallback's `send`: adds the request id and notes the answer's status."""

    __slots__ = ("_send", "_rid", "status")

    def __init__(self, send: Send, rid: bytes) -> None:
        self._send = send
        self._rid = rid
        self.status = 500  # unless an answer started

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            message = {**message, "headers": [*message.get("headers", ()), (_REQUEST_ID, self._rid)]}
        await self._send(message)


def _query(raw: bytes) -> dict[str, str]:
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)) if raw else {}


async def _body(receive: Receive, limit: int) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
