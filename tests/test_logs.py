"""Log lines: text by default, one JSON object per line with KASSA_LOG_FORMAT=json, both
naming the request (X-Request-Id) they were written for."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import httpx
import pytest
from gunicorn.config import Config

from server.process.gunicorn_app import JsonLogger
from server.process.logs import FORMAT, REQUEST_ID, JsonFormatter, RequestIdFilter, formatter
from tests.conftest import ADMIN_KEY, new_database
from tests.fixtures.kassa_server import start_kassa
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


@pytest.mark.slow
def test_kassa_serve_writes_json_lines(pg_server: PostgresServer, redis_server: RedisServer) -> None:
    dsn = asyncio.run(new_database(pg_server))
    kassa = start_kassa({**SERVE_ENV, "KASSA_DATABASE_URL": dsn, "KASSA_REDIS_URL": redis_server.url,
                         "KASSA_LOG_FORMAT": "json", "KASSA_LOG_LEVEL": "info"})
    try:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Request-Id": "json-log-e2e"}
        r = httpx.post(f"{kassa.url}/v1/accounts", json={"id": "a", "currency": "USD"},
                       headers=headers)
        assert r.status_code == 201, r.text
        r = httpx.post(f"{kassa.url}/v1/transactions?wait=true", headers=headers, json={
            "type": "deposit", "currency": "USD", "destination": "a", "amount": 5})
        assert r.status_code == 201, r.text
    finally:
        assert kassa.stop() == 0, kassa.log()
    lines = [line for line in kassa.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line: one JSON object
    assert any(e["request_id"] == "json-log-e2e" for e in entries), lines
    services = (kassa.data_dir / "receipt-service.log").read_text().splitlines()
    assert all(json.loads(line)["pid"] for line in services if line.strip())
