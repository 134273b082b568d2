"""Log lines: text by default, one JSON object per line with KASSA_LOG_FORMAT=json, both
naming the request (X-Request-Id) they were written for; gunicorn's and uvicorn's own lines
in the same format; at info, a transaction's start line before its outcome line, both
under its request's id (and a refused one's refusal line); a stop without
"Error while closing socket"; plain gunicorn refusing a configuration it cannot serve."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from gunicorn.config import Config

from server.process.gunicorn_app import JsonLogger, KassaLogger
from server.process.logs import FORMAT, REQUEST_ID, JsonFormatter, RequestIdFilter, formatter
from tests.conftest import ADMIN_KEY, new_database
from tests.fixtures.kassa_server import KassaProcess, serve_env, start_kassa
from tests.fixtures.servers import PostgresServer, RedisServer
from tests.load import SERVE_ENV


def _record(message: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    record = logging.getLogger("kassa.test").makeRecord(
        "kassa.test", logging.WARNING, __file__, 1, message, args,
        sys.exc_info() if exc_info else None)
    RequestIdFilter().filter(record)
    return record


def test_a_json_line_has_the_fields_and_the_request_id() -> None:
    token = REQUEST_ID.set("req-42")
    try:
        line = JsonFormatter().format(_record("paid %s\nin full", "10.00"))
    finally:
        REQUEST_ID.reset(token)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "paid 10.00\nin full" and entry["request_id"] == "req-42"
    assert (entry["level"], entry["logger"]) == ("WARNING", "kassa.test")
    assert isinstance(entry["pid"], int) and entry["time"].endswith("+00:00")
    assert "exception" not in entry


def test_a_json_line_carries_the_exception() -> None:
    try:
        raise ValueError("bad amount")
    except ValueError:
        entry = json.loads(JsonFormatter().format(_record("failed", exc_info=True)))
    assert entry["request_id"] == "-"
    assert "Traceback" in entry["exception"] and "ValueError: bad amount" in entry["exception"]


def test_text_stays_the_default() -> None:
    assert not isinstance(formatter("text"), JsonFormatter) and formatter("text")._fmt == FORMAT
    assert isinstance(formatter("json"), JsonFormatter)


def test_gunicorn_logs_as_json_when_asked() -> None:
    gunicorn_log = JsonLogger(Config())
    handlers = gunicorn_log.error_log.handlers
    assert handlers and all(isinstance(h.formatter, JsonFormatter) for h in handlers)


def test_gunicorn_logs_in_kassas_text_format_by_default() -> None:
    handlers = KassaLogger(Config()).error_log.handlers
    assert handlers and all(h.formatter._fmt == FORMAT for h in handlers)


# A line of FORMAT: time, level, [pid], [request id], logger: message.
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
                       r"\[\d+\] \[(?P<rid>[^\]]+)\] (?P<logger>[\w.]+): (?P<message>.*)")
# gunicorn's and uvicorn's own lines from a start and a SIGTERM, and their loggers.
SERVER_LINES = {"Booting worker with pid": "gunicorn.error",
                "Started server process": "uvicorn.error",
                "Application startup complete": "uvicorn.error",
                "Handling signal: term": "gunicorn.error",
                "Shutting down: Master": "gunicorn.error"}
CLOSING_ERROR = "Error while closing socket"


def _drive(kassa: KassaProcess, prefix: str) -> dict[str, str]:
    """Two accounts, a deposit waiting for its outcome, an async transfer and a transfer
    refused for funds, each under its own X-Request-Id; the receipt code of each of the
    first two by its request id."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for account in ("a", "b"):
        r = httpx.post(f"{kassa.url}/v1/accounts", json={"id": account, "currency": "USD"},
                       headers={**headers, "X-Request-Id": f"{prefix}-account-{account}"})
        assert r.status_code == 201, r.text
    codes = {}
    r = httpx.post(f"{kassa.url}/v1/transactions?wait=true", json={
        "type": "deposit", "currency": "USD", "destination": "a", "amount": 5},
        headers={**headers, "X-Request-Id": f"{prefix}-deposit"})
    assert r.status_code == 201, r.text
    codes[f"{prefix}-deposit"] = r.json()["receipt_code"]
    r = httpx.post(f"{kassa.url}/v1/transactions", json={
        "type": "transfer", "currency": "USD", "source": "a", "destination": "b", "amount": 2},
        headers={**headers, "X-Request-Id": f"{prefix}-transfer"})
    assert r.status_code == 202, r.text
    codes[f"{prefix}-transfer"] = r.json()["receipt_code"]
    r = httpx.post(f"{kassa.url}/v1/transactions?wait=true", json={
        "type": "transfer", "currency": "USD", "source": "b", "destination": "a", "amount": 50},
        headers={**headers, "X-Request-Id": f"{prefix}-refused"})
    assert r.status_code == 422, r.text
    return codes


def _assert_transaction_lines(entries: list[tuple[str, str]], codes: dict[str, str],
                              prefix: str) -> None:
    """`entries` (request id, message) in the order written. At info the lines a person
    follows a request by are its transaction's: [TRANSACTION START], then [TRANSACTION
    SUCCESS], both under its X-Request-Id and naming its receipt; a refused transaction's
    one [TRANSACTION REFUSED]. The per-request [REQUEST START]/[REQUEST END] are debug only."""
    assert not any(m.startswith("[REQUEST ") for _, m in entries), entries
    for rid, code in codes.items():
        mine = [message for r, message in entries if r == rid]
        assert len(mine) == 2, (rid, mine)
        assert mine[0].startswith(f"[TRANSACTION START] Receipt: {code} | "), (rid, mine)
        assert re.fullmatch(rf"\[TRANSACTION SUCCESS\] Receipt: {code} \| Journal ID: \d+ \| "
                            r"Status: completed \| Duration: [\d.]+ms", mine[1]), (rid, mine)
        assert sum(code in m for _, m in entries) == 2, (code, entries)  # none under another id
    assert [m for r, m in entries if r == f"{prefix}-refused"] == [
        "[TRANSACTION REFUSED] Type: transfer | Amount: 50 | Accounts: 2 | "
        "Error: insufficient_funds"], entries


@pytest.mark.slow
def test_kassa_serve_writes_text_lines_a_person_can_follow(
        pg_server: PostgresServer, redis_server: RedisServer) -> None:
    dsn = asyncio.run(new_database(pg_server))
    kassa = start_kassa({**SERVE_ENV, "KASSA_DATABASE_URL": dsn, "KASSA_REDIS_URL": redis_server.url,
                         "KASSA_LOG_LEVEL": "info"}, workers=1)
    try:
        codes = _drive(kassa, "text-log-e2e")
    finally:
        assert kassa.stop() == 0, kassa.log()  # SIGTERM
    log = kassa.log()
    assert "Errno 9" not in log and CLOSING_ERROR not in log, log
    lines = [line for line in log.splitlines() if line.strip()]
    parsed = [TEXT_LINE.fullmatch(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m]
    matches = [m for m in parsed if m is not None]
    for text, logger in SERVER_LINES.items():
        assert any(m["logger"] == logger and m["message"].startswith(text) for m in matches), \
            (text, log)
    _assert_transaction_lines([(m["rid"], m["message"]) for m in matches], codes, "text-log-e2e")


@pytest.mark.slow
def test_kassa_serve_writes_json_lines(pg_server: PostgresServer, redis_server: RedisServer) -> None:
    dsn = asyncio.run(new_database(pg_server))
    kassa = start_kassa({**SERVE_ENV, "KASSA_DATABASE_URL": dsn, "KASSA_REDIS_URL": redis_server.url,
                         "KASSA_LOG_FORMAT": "json", "KASSA_LOG_LEVEL": "info"})
    try:
        codes = _drive(kassa, "json-log-e2e")
    finally:
        assert kassa.stop() == 0, kassa.log()  # SIGTERM
    lines = [line for line in kassa.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line: one JSON object
    assert all(e.keys() >= {"time", "level", "logger", "pid", "request_id", "message"}
               for e in entries), lines
    for text, logger in SERVER_LINES.items():
        assert any(e["logger"] == logger and e["message"].startswith(text) for e in entries), \
            (text, lines)
    assert not any(CLOSING_ERROR in e["message"] for e in entries), lines
    _assert_transaction_lines([(e["request_id"], e["message"]) for e in entries], codes,
                              "json-log-e2e")
    services = (kassa.data_dir / "receipt-service.log").read_text().splitlines()
    assert all(json.loads(line)["pid"] for line in services if line.strip())


ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
_PLAIN_HINT = "use `kassa serve` for the embedded stack"
_DSN = "postgresql://kassa@127.0.0.1:1/kassa"  # never reached: the refusal comes first


@pytest.mark.parametrize(("env", "line"), [
    ({"KASSA_DATABASE_URL": _DSN},
     "kassa: configuration error: KASSA_KAFKA_BOOTSTRAP_SERVERS is required under plain "
     f"gunicorn (the outbox relay publishes events there); {_PLAIN_HINT}"),
    ({"KASSA_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
     "kassa: configuration error: KASSA_DATABASE_URL is required under plain gunicorn (run "
     f"`kassa migrate` on it first); {_PLAIN_HINT}"),
    ({"KASSA_DATABASE_URL": _DSN, "KASSA_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
      "KASSA_LOG_FORMAT": "yaml"},
     "kassa: configuration error: KASSA_LOG_FORMAT='yaml': use one of ('text', 'json')"),
], ids=["no-kafka", "no-database", "invalid-value"])
def test_plain_gunicorn_refuses_what_it_cannot_serve_in_one_line(
        env: dict[str, str], line: str) -> None:
    """The README's `gunicorn -c gunicorn.conf.py ...`: no embedded stack, so no broker means
    no outbox relay; it stops before binding, as `kassa serve` refuses a bad configuration."""
    result = subprocess.run(
        [str(GUNICORN), "-c", "gunicorn.conf.py", "server.process.asgi:create_app()"],
        cwd=ROOT, env=serve_env(env), capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr, result.stdout) == (2, line + "\n", ""), result
