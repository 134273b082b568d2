"""server/http/protocol.py's response writing, driven in-process through a fake transport:
one write per answer whose body comes in one message (head and body together)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from server.http.protocol import KassaHttpProtocol


class FakeTransport(asyncio.Transport):
    """Records every write; a TCP connection that is never slow."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def one_message(scope: Any, receive: Any, send: Any) -> None:
    """As the hot routes answer: the whole body in the one body message."""
    await receive()
    body = b'{"ok":true}'
    await send({"type": "http.response.start", "status": 202,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def streamed(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})  # chunked
    await send({"type": "http.response.body", "body": b"", "more_body": True})
    await send({"type": "http.response.body", "body": b"one", "more_body": True})
    await send({"type": "http.response.body", "body": b"two", "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def connected(app: Any) -> tuple[KassaHttpProtocol, FakeTransport]:
    config = Config(app=app, http=KassaHttpProtocol, lifespan="off", access_log=False,
                    server_header=False, date_header=False)
    config.load()
    protocol = KassaHttpProtocol(config=config, server_state=ServerState(), app_state={},
                                 _loop=asyncio.get_running_loop())
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def answered(protocol: KassaHttpProtocol, request: bytes) -> None:
    protocol.data_received(request)
    async with asyncio.timeout(5):
        while not protocol.cycle.response_complete:
            await asyncio.sleep(0)


POST = (b"POST /v1/transactions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")


async def test_a_whole_answer_is_one_write_of_head_and_body() -> None:
    protocol, transport = await connected(one_message)
    for _ in range(2):  # and again on the kept-alive connection
        await answered(protocol, POST)
    assert len(transport.writes) == 2, transport.writes
    for write in transport.writes:
        head, _, body = write.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 202 Accepted\r\n") and b"content-length: 11" in head
        assert body == b'{"ok":true}'
    assert not transport.closed
    protocol.connection_lost(None)


async def test_a_streamed_answer_sends_its_head_with_its_first_bytes() -> None:
    protocol, transport = await connected(streamed)
    await answered(protocol, POST)
    assert transport.writes[0].endswith(b"\r\n\r\n3\r\none\r\n")
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in transport.writes[0]
    assert transport.writes[1:] == [b"3\r\ntwo\r\n", b"0\r\n\r\n"]
    protocol.connection_lost(None)


async def test_a_head_request_gets_its_head_alone() -> None:
    protocol, transport = await connected(one_message)
    await answered(protocol, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    [write] = transport.writes
    assert write.startswith(b"HTTP/1.1 202 Accepted\r\n") and write.endswith(b"\r\n\r\n")
    protocol.connection_lost(None)


async def test_http_1_0_closes_after_its_one_write() -> None:
    protocol, transport = await connected(one_message)
    await answered(protocol, POST.replace(b"HTTP/1.1", b"HTTP/1.0"))
    [write] = transport.writes
    assert b"connection: close\r\n" in write and write.endswith(b'{"ok":true}')
    assert transport.closed
    protocol.connection_lost(None)
