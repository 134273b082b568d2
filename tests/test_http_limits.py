"""HTTP limits before any work (issue 18, point 2; cases D2, D4, D8), against a real
`kassa serve` with one worker (so that a second client shares the worker of the first) and
small deadlines and cap to keep it fast: every refusal is the contract's JSON error with
X-Request-Id and `Connection: close`, and comes before the work it would cost."""

from __future__ import annotations

import json
import socket
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

from tests.conftest import ADMIN_KEY
from tests.fixtures.kassa_server import KassaProcess, serve_new_database
from tests.fixtures.servers import PostgresServer, RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
CONNECTIONS_MAX = 20
LIMITS = {"KASSA_HTTP_HEAD_TIMEOUT_S": str(HEAD_TIMEOUT_S),
          "KASSA_HTTP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
          "KASSA_HTTP_CONNECTIONS_MAX": str(CONNECTIONS_MAX)}


@pytest.fixture(scope="module")
def kassa(pg_server: PostgresServer, redis_server: RedisServer) -> Iterator[KassaProcess]:
    # Info: the disconnect test reads its line.
    yield from serve_new_database(pg_server, redis_server, {**LIMITS, "KASSA_LOG_LEVEL": "info"},
                                  workers=1, no_traceback=True)


def connect(kassa: KassaProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", kassa.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.body)


_UNREAD: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_answer(sock: socket.socket) -> Answer:
    """One answer (its Content-Length bytes of body); what follows is kept for the next."""
    raw = _UNREAD.pop(sock, b"")
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {raw!r}")
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(Answer(head + b"\r\n\r\n").headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    _UNREAD[sock] = body[length:]
    return Answer(head + b"\r\n\r\n" + body[:length])


def assert_refusal(answer: Answer, status: int, code: str = "invalid_request") -> None:
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    rid = answer.headers["x-request-id"]
    error = answer.json()["error"]
    assert error["code"] == code and error["message"]
    assert error.get("request_id", rid) == rid


def refused(kassa: KassaProcess, *pieces: bytes, pause_s: float = 0.0) -> Answer:
    """Send the pieces (pausing between them) on a new connection, read the answer, and
    check the server closes the connection after it."""
    with connect(kassa) as sock:
        for index, piece in enumerate(pieces):
            if index and pause_s:
                time.sleep(pause_s)
            sock.sendall(piece)
        answer = read_answer(sock)
        assert closed_within(sock, 5.0), "the connection stays open after a refusal"
    return answer


def closed_within(sock: socket.socket, timeout_s: float) -> bool:
    sock.settimeout(timeout_s)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        return False
    return True


def healthz(sock: socket.socket) -> float:
    """Seconds to an answer of GET /healthz on this keep-alive connection."""
    started = time.perf_counter()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: kassa\r\n\r\n")
    assert read_answer(sock).status == 200
    return time.perf_counter() - started


# D2: one huge header, many headers, a long request line ------------------------------------

def test_a_64_mb_header_gets_431_at_once_while_other_requests_are_answered(kassa) -> None:  # type: ignore[no-untyped-def]
    probe = connect(kassa)
    healthz(probe)
    big = connect(kassa)
    sent = threading.Event()

    def send() -> None:
        try:
            big.sendall(b"GET /healthz HTTP/1.1\r\nHost: kassa\r\nX-Request-Id: big-1\r\nX-Big: ")
            chunk = b"a" * 65536
            for _ in range(1024):  # 64 MB, no end of line
                big.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed
        finally:
            sent.set()

    started = time.perf_counter()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    latencies = []
    while not sent.is_set() and time.perf_counter() - started < 10:
        latencies.append(healthz(probe))
        time.sleep(0.005)
    answer = read_answer(big)
    sender.join(10)
    assert_refusal(answer, 431)
    assert max(latencies) < 0.1, f"another client waited {max(latencies):.3f}s"
    assert healthz(probe) < 0.1
    probe.close()
    big.close()


def test_101_headers_get_431_and_100_are_served(kassa) -> None:  # type: ignore[no-untyped-def]
    head = b"GET /healthz HTTP/1.1\r\nHost: kassa\r\n"
    answer = refused(kassa, head + b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n")
    assert_refusal(answer, 431)
    with connect(kassa) as sock:
        sock.sendall(head + b"".join(b"X-%d: v\r\n" % i for i in range(99)) + b"\r\n")
        assert read_answer(sock).status == 200
    # 5,000 headers dribbled in pieces: refused on the held bytes, before any is parsed
    many = b"".join(b"X-%d: v\r\n" % i for i in range(5000))
    assert_refusal(refused(kassa, head, many[:30001], many[30001:], pause_s=0.05), 431)


def test_headers_over_64_kb_get_431_in_one_piece_or_in_many(kassa) -> None:  # type: ignore[no-untyped-def]
    head = b"GET /healthz HTTP/1.1\r\nHost: kassa\r\nX-Big: "
    assert_refusal(refused(kassa, head + b"a" * 70_000 + b"\r\n\r\n"), 431)
    pieces = [head] + [b"a" * 8192] * 10 + [b"\r\n\r\n"]
    assert_refusal(refused(kassa, *pieces, pause_s=0.01), 431)
    with connect(kassa) as sock:  # just under the limit, in pieces: served
        for piece in [head] + [b"a" * 6000] * 10 + [b"\r\n\r\n"]:
            sock.sendall(piece)
            time.sleep(0.005)
        assert read_answer(sock).status == 200


def test_a_9_kb_request_line_gets_414(kassa) -> None:  # type: ignore[no-untyped-def]
    line = b"GET /healthz?x=" + b"a" * 9216 + b" HTTP/1.1\r\n"
    assert_refusal(refused(kassa, line + b"Host: kassa\r\nX-Request-Id: long-1\r\n\r\n"), 414)
    assert_refusal(refused(kassa, line[:4000], line[4000:], b"Host: kassa\r\n\r\n", pause_s=0.05),
                   414)
    assert_refusal(refused(kassa, line[:4000], line[4000:9000], line[9000:-2], pause_s=0.05), 414)


# D4: a declared body over the limit, slow heads, stalled bodies, too many connections --------

def test_a_declared_body_over_the_limit_gets_413_before_it_is_sent(kassa) -> None:  # type: ignore[no-untyped-def]
    with connect(kassa) as sock:
        sock.sendall(b"POST /v1/transactions HTTP/1.1\r\nHost: kassa\r\nX-Request-Id: huge-1\r\n"
                     b"Authorization: Bearer " + ADMIN_KEY.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
                     + b"x" * 100)
        sock.settimeout(2)
        answer = read_answer(sock)
        assert_refusal(answer, 413)
        assert answer.headers["x-request-id"] == "huge-1"
        assert closed_within(sock, 5.0)
    with connect(kassa) as sock:  # also on a Starlette route
        sock.sendall(b"POST /v1/accounts HTTP/1.1\r\nHost: kassa\r\n"
                     b"Content-Length: 2000000\r\n\r\n")
        sock.settimeout(2)
        assert_refusal(read_answer(sock), 413)


def test_a_slow_head_is_closed_after_the_head_deadline(kassa) -> None:  # type: ignore[no-untyped-def]
    head = b"GET /healthz HTTP/1.1\r\nHost: kassa\r\n\r\n"
    with connect(kassa) as sock:
        started = time.monotonic()
        try:
            for byte in head[:-2]:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert closed_within(sock, 3.0)
        assert HEAD_TIMEOUT_S * 0.9 < time.monotonic() - started < HEAD_TIMEOUT_S + 1.0
    with connect(kassa) as sock:  # nothing sent at all
        started = time.monotonic()
        assert closed_within(sock, 3.0)
        assert time.monotonic() - started < HEAD_TIMEOUT_S + 1.0
    with connect(kassa) as sock:  # keep-alive: the deadline runs from the previous answer
        healthz(sock)
        time.sleep(HEAD_TIMEOUT_S / 2)
        healthz(sock)
        started = time.monotonic()
        assert closed_within(sock, 3.0)
        assert HEAD_TIMEOUT_S * 0.9 < time.monotonic() - started < HEAD_TIMEOUT_S + 1.0


def test_a_stalled_body_is_closed_after_the_body_deadline(kassa) -> None:  # type: ignore[no-untyped-def]
    with connect(kassa) as sock:
        sock.sendall(b"POST /v1/transactions HTTP/1.1\r\nHost: kassa\r\n"
                     b"Authorization: Bearer " + ADMIN_KEY.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"type\"")
        time.sleep(BODY_TIMEOUT_S / 2)
        sock.sendall(b": \"deposit\"")  # a chunk in time restarts the deadline
        started = time.monotonic()
        assert closed_within(sock, 4.0)
        assert BODY_TIMEOUT_S * 0.9 < time.monotonic() - started < BODY_TIMEOUT_S + 1.5


def test_a_client_leaving_mid_body_is_logged_as_such_not_as_an_error(kassa) -> None:  # type: ignore[no-untyped-def]
    """A handler reading the body when the client disconnects: one info line, no 500 and no
    traceback (the module's fixture checks the log for tracebacks at the end)."""
    with connect(kassa) as sock:
        sock.sendall(b"POST /v1/accounts HTTP/1.1\r\nHost: kassa\r\n"
                     b"Authorization: Bearer " + ADMIN_KEY.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"id\"")
        time.sleep(0.2)  # the handler is reading the body
    deadline = time.monotonic() + 10
    while "client disconnected before the body of POST /v1/accounts" not in kassa.log():
        assert time.monotonic() < deadline, kassa.log()
        time.sleep(0.05)
    assert "unhandled error" not in kassa.log()


def test_connections_beyond_the_cap_get_503_and_are_closed(kassa) -> None:  # type: ignore[no-untyped-def]
    time.sleep(0.3)  # connections of earlier tests gone
    idle = [connect(kassa) for _ in range(CONNECTIONS_MAX)]
    try:
        time.sleep(0.1)
        with connect(kassa) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: kassa\r\n\r\n")
            answer = read_answer(sock)
            assert_refusal(answer, 503, "overloaded")
            assert answer.headers["retry-after"] == "1"
            assert closed_within(sock, 5.0)
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    with connect(kassa) as sock:
        assert healthz(sock) < 1
    assert "connection refused (503)" in kassa.log()


# D8: what the parser refuses is a 400 in the contract's shape ---------------------------------

@pytest.mark.parametrize("head", [
    b"POST /v1/transactions HTTP/1.1\r\nHost: kassa\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"POST /v1/transactions HTTP/1.1\r\nHost: kassa\r\nContent-Length: 5\r\n"
    b"Content-Length: 5\r\n\r\n",
    b"POST /v1/transactions HTTP/1.1\r\nHost: kassa\r\nIdempotency-Key: a\x7fb\r\n"
    b"Content-Length: 2\r\n\r\n{}",
], ids=["content-length-and-transfer-encoding", "two-content-lengths", "del-in-a-header"])
def test_protocol_errors_get_400_in_the_contract_shape(kassa, head: bytes) -> None:  # type: ignore[no-untyped-def]
    assert_refusal(refused(kassa, head), 400)
    assert_refusal(refused(kassa, head[:20], head[20:], pause_s=0.05), 400)


def test_a_keep_alive_connection_serves_on_after_limits_checks(kassa) -> None:  # type: ignore[no-untyped-def]
    """Pipelined requests and heads split anywhere are still served."""
    one = b"GET /healthz HTTP/1.1\r\nHost: kassa\r\n\r\n"
    with connect(kassa) as sock:
        sock.sendall(one * 3)
        assert [read_answer(sock).status for _ in range(3)] == [200] * 3
        for cut in (1, 20, len(one) - 3, len(one) - 1):
            sock.sendall(one[:cut])
            time.sleep(0.02)
            sock.sendall(one[cut:])
            assert read_answer(sock).status == 200
        sock.sendall(one + one[:len(one) - 1])  # a pipelined head cut before its last LF
        time.sleep(0.02)
        sock.sendall(b"\n")
        assert [read_answer(sock).status for _ in range(2)] == [200] * 2
