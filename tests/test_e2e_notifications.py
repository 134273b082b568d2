"""Notifications through `kassa serve`: the account's contacts hear about completed and
failed transactions on real channels, and a dead channel never holds a transaction back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import msgspec
import pytest
from standardwebhooks import Webhook

from tests.conftest import new_database
from tests.fixtures.kassa_server import start_kassa
from tests.fixtures.servers import PostgresServer, RedisServer, free_port
from tests.invariants import assert_invariants
from tests.load import SERVE_ENV, Reply, drive
from tests.test_notifications import WebhookReceiver, receiver, smtp  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow
SECRET = "e2e-secret"


async def until(predicate: Any, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_contacts_are_notified_on_every_channel(
        pg_server: PostgresServer, redis_server: RedisServer, smtp: Any,  # noqa: F811
        receiver: WebhookReceiver) -> None:  # noqa: F811
    sink, smtp_port = smtp
    dsn = await new_database(pg_server)
    kassa = start_kassa({
        **SERVE_ENV, "KASSA_DATABASE_URL": dsn, "KASSA_REDIS_URL": redis_server.url,
        "KASSA_SMTP_HOST": "127.0.0.1", "KASSA_SMTP_PORT": str(smtp_port),
        "KASSA_SMTP_FROM": "kassa@example.com", "KASSA_SMS_WEBHOOK_URL": receiver.url("/sms"),
        # Nothing listens here: push deliveries fail and end in the dead-letter table.
        "KASSA_PUSH_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/push",
        "KASSA_WEBHOOK_SECRET": SECRET, "KASSA_NOTIFY_ATTEMPTS_MAX": "2",
        "KASSA_NOTIFY_BACKOFF_MS": "10"})
    try:
        replies = await drive(kassa.url, [
            ("POST", "/v1/accounts", {"id": "n1", "currency": "USD", "contact": {
                "email": "owner@example.com", "phone": "+15550100", "push_token": "tok-1"}}),
            ("POST", "/v1/transactions?wait=true", {"type": "deposit", "currency": "USD",
                                                    "destination": "n1", "amount": 100}),
            # One batch: both pass pre-validation, the executor fails the second.
            ("POST", "/v1/transactions/batch?wait=true", {"transactions": [
                {"type": "withdrawal", "currency": "USD", "source": "n1", "amount": 80}] * 2}),
        ], 1)
        assert [r.status for r in replies if isinstance(r, Reply)] == [201, 201, 201], replies
        results = replies[2].body["results"]  # type: ignore[union-attr]
        failed_receipt = results[1]["error"]["receipt_code"]

        async def three_emails() -> bool:
            return len(sink.messages) >= 3
        await until(three_emails)
        assert all(m[1] == ["owner@example.com"] for m in sink.messages)
        subjects = "\n".join(m[2] for m in sink.messages)
        assert f"Transaction {failed_receipt} failed" in subjects
        assert subjects.count(" completed") >= 2

        async def three_sms() -> bool:
            return len(receiver.requests) >= 3
        await until(three_sms)
        for _, headers, body in receiver.requests:
            Webhook(SECRET.encode()).verify(body, headers)  # Standard Webhooks
            assert msgspec.json.decode(body)["recipient"] == "+15550100"

        async def dead_letters() -> bool:
            conn = await asyncpg.connect(dsn)
            try:
                return bool(await conn.fetchval(
                    "SELECT count(*) >= 3 FROM notification_dead_letters WHERE channel = 'push' "
                    "AND attempts = 2"))
            finally:
                await conn.close()
        await until(dead_letters)
        balance = await drive(kassa.url, [("GET", "/v1/accounts/n1", None)], 1)
        assert balance[0].body["balance"] == 20  # type: ignore[union-attr]
        await assert_invariants(dsn)
    finally:
        kassa.stop()
