"""HTTP limits enforced before any work: uvicorn's httptools protocol with a guard.

uvicorn's `HttpToolsProtocol` feeds every received chunk to httptools, which grows a header
value that spans chunks by bytes concatenation (`_current_header_value += val` in its
parser.pyx): one 64 MB header sent in 64 KB chunks costs about 1000 copies of a growing
value, and blocked a worker's event loop for 3.9 s (18 s at 128 MB); 16 such headers never
completed froze a worker until gunicorn killed it. It also had no limit on header bytes,
header count or request line, no deadline for a request head or a stalled body, no early
413 on a declared `Content-Length`, no cap on open connections, and answered protocol
errors with a text/plain 400.

`KassaHttpProtocol` keeps uvicorn's protocol and adds, per connection:

- **Linear head parsing.** A chunk that holds the end of a request head (`CRLF CRLF`), or
  any chunk of a body, is fed to the parser at once, as before (the usual request arrives in
  one chunk: the cost is one `in` test). Otherwise the bytes of an incomplete head are held
  in a list, counted, and fed in one piece when the head is complete, so a header value
  reaches the parser in at most two pieces (one copy) whatever the chunking.
- **Limits** (`Limits`, from the KASSA_HTTP_* settings): a request target (path and query)
  over `request_line_max` bytes gets 414, header fields over `header_bytes_max` bytes (names
  and values) or more than `headers_max` of them get 431: bounded on the held bytes as they
  arrive (lines and bytes), and exactly once the head is parsed (its bytes are summed only
  when it was parsed from a piece over half the limit: a head reaches the parser in at most
  two pieces, so from smaller ones it is within the limit). A `Content-Length` over
  `body_size_max` gets 413 as soon as the head is parsed, before any body is read or the
  app is called.
- **Deadlines** (`loop.call_later`, one timer at a time): a complete head within
  `head_timeout_s` of the accept or of the end of the previous response (on keep-alive, an
  idle connection is closed after the shorter of that and gunicorn's keep-alive); a body
  chunk at least every `body_timeout_s` while a body is incomplete (not counted while the
  app has paused reading or not yet asked for a `100-continue` body). Past a deadline the
  connection is closed, without an answer.
- **A cap on open connections per worker** (`connections_max`): the connection beyond it
  gets a 503 `overloaded` at once (with `Retry-After: 1`), before anything is read, and is
  closed. A refused client learns why and when to retry; closing at accept would look like a
  network fault. The refusal is logged (at most one line a second, with the count).
- **Every refusal in the contract's JSON shape**: 400 (what the parser refuses: conflicting
  `Content-Length`/`Transfer-Encoding`, two `Content-Length`s, bytes not allowed in a
  header, ...), 413, 414, 431 and 503, each with `X-Request-Id` (the client's when its head
  was parsed, else a new one) and `Connection: close`. After a refusal the connection sends
  its FIN and discards what still arrives for `LINGER_S` before closing, so that a client
  still sending (a body, a huge header) reads the answer instead of a reset.

**One write per answer** (`KassaCycle`, issue 19): uvicorn writes a response's head when
the app starts its answer and the body with the next message, two send(2) calls (and two
TCP segments without Nagle). The head is held until the first body message and written with
it, so an answer whose body comes in one message, as every Kassa answer's does, costs one.

Measured (issue 18): the guard costs about 1 us per request over uvicorn's protocol (14 us
per request for the protocol alone, driven in-process, 40-60 alternating rounds), against
about 55 us of worker CPU per GET /healthz and 400-500 us per POST /v1/transactions under
wrk, so under 2 % of either. uvicorn's h11 protocol, whose `h11_max_incomplete_event_size`
bounds a head, costs 60-75 us more per request (5 to 6 times the httptools protocol), still
answers in text/plain 400 and has no head or body deadline; no other ASGI server is in the
lock. So the httptools protocol stays, with this guard.
"""

from __future__ import annotations

import asyncio
import http
import logging
import resource
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from server.http.errors import error_dict
from server.http.hot import request_id
from server.http.schemas import encoder

log = logging.getLogger("kassa.http")

_HEAD_END = b"\r\n\r\n"
LINGER_S = 2.0  # after a refusal: FIN sent, incoming bytes discarded this long, then closed
# Descriptors a worker needs besides its HTTP connections (database pool, Redis, Kafka,
# gRPC channels, logs, the listening sockets): the cap is lowered to leave these free.
_FD_RESERVE = 128


@dataclass(frozen=True)
class Limits:
    header_bytes_max: int = 65_536
    headers_max: int = 100
    request_line_max: int = 8_192
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    connections_max: int = 4_096
    body_size_max: int = 1_048_576

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(header_bytes_max=settings.http_header_bytes_max,
                   headers_max=settings.http_headers_max,
                   request_line_max=settings.http_request_line_max,
                   head_timeout_s=settings.http_head_timeout_s,
                   body_timeout_s=settings.http_body_timeout_s,
                   connections_max=settings.http_connections_max,
                   body_size_max=settings.body_size_max)


class _Refusal(Exception):
    """Raised in a parser callback: the parser stops, data_received answers."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def refusal_bytes(status: int, code: str, message: str, rid: bytes,
                  default_headers: list[tuple[bytes, bytes]] = ()) -> bytes:  # type: ignore[assignment]
    """A whole HTTP/1.1 answer in the contract's error shape, closing the connection."""
    body = encoder.encode(error_dict(code, message, request_id=rid.decode("ascii")))  # as every error
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode("ascii")]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [b"content-type: application/json",
              b"content-length: " + str(len(body)).encode("ascii"),
              b"x-request-id: " + rid,
              b"connection: close"]
    if status in (429, 503):
        lines.append(b"retry-after: 1")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class KassaHttpProtocol(HttpToolsProtocol):
    """See the module docstring. `protocol_class(limits)` makes the class a worker uses."""

    limits: ClassVar[Limits] = Limits()
    _lingering: ClassVar[int] = 0  # refused connections of this process still open
    _refused_at: ClassVar[float] = 0.0  # last log line about the connection cap
    _refused_since: ClassVar[int] = 0  # connections refused since that line

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: list[bytes] | None = None  # an incomplete head, not yet parsed
        self._held_len = 0
        self._held_tail = b""  # the last 3 bytes held, to find a CRLF CRLF across chunks
        self._line_len = -1  # the request line's length in the held bytes, once known
        self._held_lines = 0  # CRLFs in the held bytes
        self._in_head = False  # the parser has begun a head (pipelined after a request)
        self._in_body = False  # head parsed, body not complete
        self._half_header_bytes = self.limits.header_bytes_max // 2
        self._idle_s = min(self.limits.head_timeout_s, self.timeout_keep_alive)
        self._feeding_big = False  # the chunk being parsed is over half the header limit
        self._big = False  # this request's head came in such a chunk: its bytes are counted
        self._declared: bytes | None = None  # the Content-Length of the request being parsed
        self._timer: asyncio.TimerHandle | None = None
        self._body_at = 0.0  # loop time of the last body chunk while a body is incomplete
        self._refused = False

    # Connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.connections_max:
            self._refuse_connection(transport)
            return
        super().connection_made(transport)
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._refused:
            self._refused = False
            type(self)._lingering -= 1
            self.parser = None  # type: ignore[assignment]
            return
        super().connection_lost(exc)

    def _refuse_connection(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        cls = type(self)
        cls._refused_since += 1
        now = time.monotonic()
        if now - cls._refused_at >= 1.0:
            log.warning("connection refused (503): this worker has %d open connections "
                        "(KASSA_HTTP_CONNECTIONS_MAX); %d refused since the last such line",
                        len(self.connections), cls._refused_since)
            cls._refused_at = now
            cls._refused_since = 0
        self._answer_and_close(503, "overloaded", "too many open connections, retry later",
                               secrets.token_hex(16).encode())

    # Receiving

    def data_received(self, data: bytes) -> None:
        if self._in_body:
            self._body_at = self.loop.time()
        elif self._refused:
            return  # lingering after an answer: discarded
        elif self._held is not None or _HEAD_END not in data:
            data = self._hold(data)  # type: ignore[assignment]
            if not data:
                return
        if len(data) > self._half_header_bytes:
            # for a head already begun; on_message_begin passes it to the others
            self._feeding_big = self._big = True
        elif self._feeding_big:
            self._feeding_big = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._cancel_timer()
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            refusal = exc.__context__
            if isinstance(refusal, _Refusal):
                self._refuse(refusal.status, refusal.code, refusal.message)
            else:
                self._refuse(400, "invalid_request", f"invalid HTTP request: {exc}")
            return
        if self._in_body:
            if self._timer is None:
                self._body_at = self.loop.time()
                self._timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)
        elif self._in_head:
            # The start of a pipelined head was parsed: the rest is held, from its 3 last
            # bytes on (a CRLF CRLF may straddle); its request line went through on_url.
            self._held, self._held_len, self._held_tail, self._line_len = [], 0, data[-3:], 0
            self._held_lines = 0

    def _hold(self, data: bytes) -> bytes | None:
        """Hold the bytes of an incomplete head; all of them once it is complete (or bad)."""
        held = self._held
        if held is None:
            held = self._held = []
            self._held_len, self._held_tail, self._line_len, self._held_lines = 0, b"", -1, 0
        straddle = self._held_tail[-1:] == b"\r"  # a CRLF cut between two chunks
        window = self._held_tail + data
        offset = self._held_len - len(self._held_tail)  # where `window` starts in the head
        held.append(data)
        self._held_len += len(data)
        self._held_tail = window[-3:]
        limits = self.limits
        if self._line_len < 0:
            line_end = window.find(b"\r\n")
            if line_end >= 0:
                self._line_len = offset + line_end
        line = self._line_len if self._line_len >= 0 else self._held_len
        # A coarse bound here (method and version are not the target); on_url's is exact.
        if line > limits.request_line_max + 32:
            self._refuse(414, "invalid_request",
                         f"the request line is longer than {limits.request_line_max} bytes", False)
            return None
        # A complete head, or a bare LF (which the parser refuses at once), is parsed now.
        if _HEAD_END in window or b"\n\n" in window:
            self._held = None
            return held[0] if len(held) == 1 else b"".join(held)
        self._held_lines += data.count(b"\r\n") + (straddle and data[:1] == b"\n")
        if self._held_lines > limits.headers_max + 1:  # the request line is one
            self._refuse(431, "invalid_request", f"more than {limits.headers_max} request headers",
                         False)
        # The limit counts names and values; the raw bytes also hold ": " and CRLF.
        elif self._held_len - line > limits.header_bytes_max + 4 * limits.headers_max + 64:
            self._refuse(431, "invalid_request",
                         f"the request headers are larger than {limits.header_bytes_max} bytes",
                         False)
        return None

    # Parser callbacks

    def on_message_begin(self) -> None:
        # uvicorn's (inlined: this runs for every request).
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        self._in_head = True
        self._declared = None
        self._big = self._feeding_big

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.request_line_max:
            raise _Refusal(414, "invalid_request",
                           f"the request line is longer than {self.limits.request_line_max} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's, noting the Content-Length; the limits are checked once the head is in.
        name = name.lower()
        # llhttp keeps trailing OWS, which RFC 9110 5.5 excludes from the value.
        value = value.rstrip(b" \t")
        if name == b"content-length":
            self._declared = value
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        limits = self.limits
        headers = self.headers
        if len(headers) > limits.headers_max:
            raise _Refusal(431, "invalid_request", f"more than {limits.headers_max} request headers")
        # A head parsed from pieces no larger than half the limit is within it (a head comes
        # in at most two pieces); otherwise its bytes are counted.
        if self._big and sum(len(n) + len(v) for n, v in headers) > limits.header_bytes_max:
            raise _Refusal(431, "invalid_request",
                           f"the request headers are larger than {limits.header_bytes_max} bytes")
        declared = self._declared
        if declared is not None and int(declared) > limits.body_size_max:
            raise _Refusal(413, "invalid_request",
                           f"request body is larger than {limits.body_size_max} bytes")
        self._in_head = False
        self._in_body = True
        # uvicorn's from here (inlined: this runs for every request), without its
        # limit_concurrency (KassaWorker does not set it; the connection cap replaces it).
        http_version = self.parser.get_http_version()
        self.scope["method"] = self.parser.get_method().decode("ascii")
        if http_version != "1.1":
            self.scope["http_version"] = http_version
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        self.scope["path"] = self.root_path + path
        self.scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        self.scope["query_string"] = parsed_url.query or b""
        existing_cycle = self.cycle
        self.cycle = KassaCycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(self.cycle, self.app)
        else:  # pipelined: queued until the answer before it is complete
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.app))

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._timer is not None:  # a body timer
            self._timer.cancel()
            self._timer = None
        cycle = self.cycle
        if cycle.response_complete:
            if not self.pipeline:
                # Answered before its body was all read: the next head's deadline starts now.
                self._watch_head()
            return
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        cycle.more_body = False
        cycle.message_event.set()

    def on_response_complete(self) -> None:
        # uvicorn's, with the head deadline in place of its keep-alive timer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif not self._in_body and self._timer is None:
            self._watch_head()

    # Deadlines

    def _watch_head(self) -> None:
        # An idle keep-alive connection may go first, at gunicorn's keep-alive.
        self._timer = self.loop.call_later(self._idle_s, self._head_timeout)

    def _head_timeout(self) -> None:
        self._timer = None
        if not self._waiting_for_head():
            return
        remaining = self.limits.head_timeout_s - self._idle_s
        if remaining > 0 and (self._held is not None or self._in_head):
            # gunicorn's keep-alive passed, but a head has begun: its deadline applies.
            self._timer = self.loop.call_later(remaining, self._head_deadline)
            return
        self._head_deadline()

    def _head_deadline(self) -> None:
        self._timer = None
        if self._waiting_for_head():
            log.debug("closing a connection that sent no complete request head in time")
            self.transport.close()

    def _waiting_for_head(self) -> bool:
        """Not closed, no body coming, no request being answered."""
        return not (self.transport.is_closing() or self._in_body
                    or (self.cycle is not None and not self.cycle.response_complete))

    def _body_timeout(self) -> None:
        self._timer = None
        if not self._in_body or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused or self.cycle.waiting_for_100_continue:
            self._body_at = now  # the app has not taken what came, or not asked for it yet
        remaining = self._body_at + self.limits.body_timeout_s - now
        if remaining > 0:
            self._timer = self.loop.call_later(remaining, self._body_timeout)
            return
        log.debug("closing a connection whose request body stalled")
        self.transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # Refusals

    def _refuse(self, status: int, code: str, message: str, parsed: bool = True) -> None:
        """Answer and close; `parsed`: the parser has begun this request (its headers so far
        may carry the client's X-Request-Id)."""
        log.debug("refused (%d): %s", status, message)
        current = parsed and (self._in_head or self._in_body) and self.headers
        rid = request_id(self.headers) if current else secrets.token_hex(16).encode()
        self._in_head = self._in_body = False
        if self.cycle is not None and not self.cycle.response_complete:
            # The app is answering an earlier request (pipelined): no answer of ours can
            # be sent in between, so the connection just ends.
            self.cycle.keep_alive = False
            self._cancel_timer()
            self.transport.close()
            return
        self.connections.discard(self)
        self._answer_and_close(status, code, message, rid)

    def _answer_and_close(self, status: int, code: str, message: str, rid: bytes) -> None:
        transport = self.transport
        self._cancel_timer()
        self._refused = True
        self._held = None
        type(self)._lingering += 1
        transport.write(refusal_bytes(status, code, message, rid,
                                      self.server_state.default_headers))
        if type(self)._lingering > self.limits.connections_max or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._timer = self.loop.call_later(LINGER_S, transport.close)


class KassaCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, but the response head is written with the first
    body message instead of on its own: one `transport.write` (one send(2)) per response
    whose body comes in one message, as every Kassa answer's does, where uvicorn made two.
    A head whose body never comes (the app failed after starting its answer) is not sent:
    the connection is closed either way."""

    _head = b""  # the response head, until the first body message

    async def send(self, message: Any) -> None:  # uvicorn 0.55's, but for `_head`
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got "
                                   f"'{message['type']}'.")
            self._head = self._start(message)
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got "
                                   f"'{message['type']}'.")
            self._body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}' sent, after "
                               "response already completed.")

    def _start(self, message: Any) -> bytes:
        """The status line and headers, as uvicorn writes them."""
        self.response_started = True
        self.waiting_for_100_continue = False
        status_code = message["status"]
        headers = self.default_headers + list(message.get("headers", []))
        if self.access_log:
            self.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(self.scope),
                                    self.scope["method"], get_path_with_query_string(self.scope),
                                    self.scope["http_version"], status_code)
        content = [STATUS_LINE[status_code]]
        has_connection_close = False
        for name, value in headers:
            if HEADER_RE.search(name):
                raise RuntimeError("Invalid HTTP header name.")
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
                if b"close" in connection:
                    self.keep_alive = False
                    has_connection_close = True
            content.extend([name, b": ", value, b"\r\n"])
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if (self.chunked_encoding is None and self.scope["method"] != "HEAD"
                and status_code not in (204, 304)):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content)

    def _body(self, body: bytes, more_body: bool) -> None:
        data = b""
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
        elif self.chunked_encoding:
            content = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
            if not more_body:
                content.append(b"0\r\n\r\n")
            data = b"".join(content)
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            data = body
        if self._head and (data or not more_body):  # with the first bytes of the body
            data, self._head = self._head + data, b""
        if data:
            self.transport.write(data)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()


def protocol_class(limits: Limits) -> type[KassaHttpProtocol]:
    """The protocol class a worker passes to uvicorn's Config(http=...), with its limits
    (the connection cap lowered to fit the process's descriptor limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.connections_max + _FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
        if soft < wanted:
            lowered = max(1, soft - _FD_RESERVE)
            log.warning("KASSA_HTTP_CONNECTIONS_MAX=%d lowered to %d: this process may open "
                        "%d descriptors", limits.connections_max, lowered, soft)
            limits = Limits(**{**limits.__dict__, "connections_max": lowered})
    return type("KassaHttpProtocol", (KassaHttpProtocol,), {"limits": limits})
