"""Secrets from files and API keys read again while `kassa serve` runs (issue 22, point 5),
against a real server with two workers whose database, Redis and API keys all come from
KASSA_*_FILE variables: a new keys file applies on connections already open, without
closing them or replacing a worker, whether the workers see it change or are told by a
SIGHUP to the PID this test started; a bad file keeps the keys in use, also in a worker
started while it is bad. Logic tests of the same: tests/unit/test_secret_files.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import new_database
from tests.fixtures.kassa_server import KassaProcess, start_kassa, wait_healthy
from tests.fixtures.servers import PostgresServer, RedisServer
from tests.test_http_limits import connect, read_answer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

POLL_INTERVAL_MS = 100
SETTLE_S = 15.0  # longest wait for every worker to have read a new file


def write_secret(path: Path, text: str) -> Path:
    """As an operator (or Kubernetes) replaces a secret: write beside it, rename over it."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def serve(pg_server: PostgresServer, redis_server: RedisServer, secrets: Path,
          poll_interval_ms: int) -> Iterator[KassaProcess]:
    """`kassa serve` with its database, Redis and API keys from files under `secrets`."""
    dsn = asyncio.run(new_database(pg_server))
    secrets.mkdir()
    env = {
        "KASSA_DATABASE_URL_FILE": str(write_secret(secrets / "database_url", dsn + "\n")),
        "KASSA_REDIS_URL_FILE": str(write_secret(secrets / "redis_url", redis_server.url)),
        "KASSA_API_KEYS_FILE": str(write_secret(secrets / "api_keys", FIRST_KEYS)),
        "KASSA_API_KEYS_POLL_INTERVAL_MS": str(poll_interval_ms),
        # Idle keep-alive connections stay open for the whole test.
        "KASSA_HTTP_HEAD_TIMEOUT_S": "200",
        # Each process says when it applied new keys, with its pid.
        "KASSA_LOG_LEVEL": "info", "KASSA_LOG_FORMAT": "json",
    }
    server = start_kassa(env, workers=2, data_dir=secrets.parent / "data")
    # Ready means one worker answered /readyz; a test changing the keys while the other
    # still starts would wait for a line that worker never writes (it reads the new file
    # at its start).
    wait_until(lambda: len(logged_by(server, 0, "Application startup complete")) == 2,
               "both workers started")
    yield server
    log = server.log()
    assert server.stop() == 0, log
    assert "Traceback" not in log, log


FIRST_KEYS = "stay:admin\nold:admin\n"


@pytest.fixture(scope="module")
def kassa(pg_server: PostgresServer, redis_server: RedisServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[KassaProcess]:
    """Its workers look at the keys file every 100 ms."""
    yield from serve(pg_server, redis_server, tmp_path_factory.mktemp("polling") / "secrets",
                     poll_interval_ms=100)


@pytest.fixture(scope="module")
def kassa_hup(pg_server: PostgresServer, redis_server: RedisServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[KassaProcess]:
    """Its workers look at the keys file once an hour: only a SIGHUP makes them read it."""
    yield from serve(pg_server, redis_server, tmp_path_factory.mktemp("hup") / "secrets",
                     poll_interval_ms=3_600_000)


@pytest.fixture
def keys_file(kassa: KassaProcess) -> Iterator[Path]:
    """The keys file, back to the first keys (and applied) after the test."""
    path = kassa.data_dir.parent / "secrets" / "api_keys"
    yield path
    mark = len(kassa.log())
    write_secret(path, FIRST_KEYS)
    wait_for_workers(kassa, mark, APPLIED)


APPLIED = "API keys read again from"
KEPT = "keeping the API keys last read from it"


def logged_by(kassa: KassaProcess, mark: int, message: str) -> set[int]:
    """The pids of the processes that logged `message` after offset `mark` of the log."""
    pids = set()
    for line in kassa.log()[mark:].splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and message in str(entry.get("message")):
            pids.add(entry["pid"])
    return pids


def wait_for_workers(kassa: KassaProcess, mark: int, message: str) -> None:
    """Until every worker (and the master, for KEPT) logged `message` after `mark`."""
    expected = set(kassa.worker_pids()) | ({kassa.pid} if message == KEPT else set())
    wait_until(lambda: logged_by(kassa, mark, message) >= expected,
               f"{message!r} logged by every process")


class open_connections:  # noqa: N801 - used as a context manager, like open()
    """`count` keep-alive connections, closed at exit."""

    def __init__(self, kassa: KassaProcess, count: int) -> None:
        self.socks = [connect(kassa) for _ in range(count)]

    def __enter__(self) -> list[socket.socket]:
        return self.socks

    def __exit__(self, *exc: object) -> None:
        for sock in self.socks:
            sock.close()


def request(sock: socket.socket, method: str, path: str, key: str, body: bytes = b"") -> int:
    """Send one request on this connection; its status (the connection must stay open)."""
    head = (f"{method} {path} HTTP/1.1\r\nHost: kassa\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    sock.sendall(head.encode() + body)
    answer = read_answer(sock)
    assert answer.headers.get("connection") != "close", (answer.status, answer.body)
    return answer.status


def status(sock: socket.socket, key: str) -> int:
    """404 (an unknown account) when the key is valid, 401 when it is not."""
    return request(sock, "GET", "/v1/accounts/nobody", key)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = SETTLE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)


def test_a_changed_keys_file_applies_on_open_connections(kassa: KassaProcess,
                                                         keys_file: Path) -> None:
    workers = kassa.worker_pids()
    with open_connections(kassa, 4) as socks:
        ports = [sock.getsockname() for sock in socks]
        assert [status(sock, "old") for sock in socks] == [404] * 4
        mark = len(kassa.log())
        write_secret(keys_file, "stay:admin\nnew:write\n")
        wait_for_workers(kassa, mark, APPLIED)
        assert [status(sock, "old") for sock in socks] == [401] * 4
        assert [status(sock, "new") for sock in socks] == [404] * 4
        assert [status(sock, "stay") for sock in socks] == [404] * 4
        # The transactions route (server/http/hot.py, outside Starlette) checks the same keys.
        assert [request(sock, "POST", "/v1/transactions", "old", b"{}")
                for sock in socks] == [401] * 4
        assert [request(sock, "POST", "/v1/transactions", "new", b"{}")
                for sock in socks] == [400] * 4
        assert [sock.getsockname() for sock in socks] == ports
    assert kassa.worker_pids() == workers, "a worker was replaced"


def test_sighup_applies_the_keys_file_without_closing_connections(
        kassa_hup: KassaProcess) -> None:
    kassa = kassa_hup
    workers = kassa.worker_pids()
    with open_connections(kassa, 4) as socks:
        mark = len(kassa.log())
        write_secret(kassa.data_dir.parent / "secrets" / "api_keys", "stay:admin\nnew:admin\n")
        assert [status(sock, "old") for sock in socks] == [404] * 4  # not looked at yet
        # A request in flight: its head and part of its body sent before the SIGHUP.
        body = json.dumps({"id": "acc_hup", "currency": "USD"}).encode()
        in_flight, others = socks[0], socks[1:]
        head = (f"POST /v1/accounts HTTP/1.1\r\nHost: kassa\r\nAuthorization: Bearer stay\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        in_flight.sendall(head.encode() + body[:10])
        os.kill(kassa.pid, signal.SIGHUP)
        wait_for_workers(kassa, mark, APPLIED)
        assert [status(sock, "old") for sock in others] == [401] * 3
        assert [status(sock, "new") for sock in others] == [404] * 3
        in_flight.sendall(body[10:])
        answer = read_answer(in_flight)
        assert answer.status == 201, answer.body
        assert (status(in_flight, "old"), status(in_flight, "new")) == (401, 404)
    assert kassa.worker_pids() == workers, "the workers were replaced (gunicorn's SIGHUP)"


def test_a_bad_keys_file_keeps_the_keys_even_in_new_workers(kassa: KassaProcess) -> None:
    keys_file = kassa.data_dir.parent / "secrets" / "api_keys"
    with open_connections(kassa, 2) as socks:
        mark = len(kassa.log())
        write_secret(keys_file, "stay:admin\nold:admni\n")  # a typo: the file is refused
        wait_for_workers(kassa, mark, KEPT)
        assert [status(sock, "old") for sock in socks] == [404, 404]
    assert "admni" not in kassa.log()  # the error names the entry's position, not its text
    # Workers that die now are replaced by new ones forked from the master: they serve the
    # keys last valid, not none (their start would fail, and gunicorn stop the server).
    workers = kassa.worker_pids()
    mark = len(kassa.log())
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: len(set(kassa.worker_pids()) - set(workers)) == 2, "two new workers",
               timeout_s=60)
    wait_for_workers(kassa, mark, KEPT)
    wait_healthy(kassa, 60)
    with open_connections(kassa, 4) as socks:
        assert [status(sock, "old") for sock in socks] == [404] * 4
    write_secret(keys_file, FIRST_KEYS)  # the keys in use: nothing to apply
