"""Standard Webhooks signing and retry waits (core/ledger/webhooks.py), checked against the
`standardwebhooks` package; the sender's HTTP/1.1 client (server/adapters/webhooks/
transport.py) against a scripted server: bodies read whole, connections reused, a
connection the receiver closed replaced, a malformed answer refused."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import AsyncIterator

import pytest
from standardwebhooks import Webhook

from core.ledger.webhooks import RetryPolicy, headers, new_secret, retry_in, secret_key
from server.adapters.webhooks.transport import ProtocolError, Transport

pytestmark = pytest.mark.timeout(30)


def test_signatures_verify_with_standardwebhooks_and_only_with_their_secret() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 24
    body = b'{"event": "transaction.completed", "amount": 5}'
    signed = headers(secret_key(secret), "msg_RCP-1", int(time.time()), body)
    assert Webhook(secret).verify(body, signed)["amount"] == 5
    with pytest.raises(Exception, match="signature"):
        Webhook(new_secret()).verify(body, signed)
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(body + b" ", signed)
    # A hand-set KASSA_WEBHOOK_SECRET that is not whsec_... is its own key.
    assert Webhook(b"plain").verify(body, headers(secret_key("plain"), "m", int(time.time()),
                                                  body))


def test_retry_waits_are_full_jitter_capped_and_stop_after_the_window() -> None:
    policy = RetryPolicy(base_s=5, cap_s=36_000, window_s=86_400)
    rand = random.Random(7)
    for attempts in range(1, 30):
        ceiling = min(36_000, 5 * 2 ** (attempts - 1))
        waits = [retry_in(policy, attempts, 100.0, rand) for _ in range(200)]
        assert all(w is not None and 0 <= w <= ceiling for w in waits)
        assert max(w for w in waits if w is not None) > ceiling / 2  # spread over the range
    assert retry_in(policy, 3, 0.0) is None and retry_in(policy, 1, -1.0) is None
    # The default schedule keeps retrying for at least 24 hours.
    assert RetryPolicy().window_s >= 86_400


ANSWERS = [
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    b"HTTP/1.1 500 Oops\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
]


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[int, list[bytes], list[int]]]:
    """A server answering each request with the next of `answers` (closing the connection
    after one that says so); it counts the connections made to it."""
    answers: list[bytes] = []
    connections: list[int] = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                answer = answers.pop(0)
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer or b"x-then-close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port, answers, connections
    server.close()


async def test_bodies_are_read_and_connections_kept(
        scripted: tuple[int, list[bytes], list[int]]) -> None:
    port, answers, connections = scripted
    answers += ANSWERS
    http = Transport()
    url = f"http://127.0.0.1:{port}/hook?x=1"
    assert [await http.post(url, b"{}", {"webhook-id": "m"}) for _ in ANSWERS] == [200, 500, 204]
    assert connections[0] == 1
    await http.aclose()


async def test_a_closed_connection_is_replaced_and_garbage_refused(
        scripted: tuple[int, list[bytes], list[int]]) -> None:
    port, answers, connections = scripted
    answers += [b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                # closed by the receiver after the answer without saying so: kept idle, and
                # the next request finds it closed and is sent again on a new connection
                b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\nx-then-close: 1\r\n\r\n",
                b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n", b"SMTP ready\r\n\r\n"]
    http = Transport()
    url = f"http://127.0.0.1:{port}/"
    assert await http.post(url, b"1", {}) == 200
    assert await http.post(url, b"2", {}) == 201
    assert await http.post(url, b"3", {}) == 202
    assert connections[0] == 3
    with pytest.raises(ProtocolError):
        await http.post(url, b"4", {})
    with pytest.raises(ValueError):
        await http.post("ftp://127.0.0.1/", b"", {})
    await http.aclose()
