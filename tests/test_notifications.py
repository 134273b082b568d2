"""The notification service and client: real SMTP server, real HTTP receivers, real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import asyncpg
import grpc
import pytest
from aiosmtpd.controller import Controller
from prometheus_client import REGISTRY
from standardwebhooks import Webhook

from core.pipeline.ports import Notification
from server.adapters.grpc.clients import NotificationClient
from server.adapters.grpc.gen.kassa.v1 import notifications_pb2 as pb
from server.adapters.grpc.gen.kassa.v1 import notifications_pb2_grpc as pb_grpc
from server.process.settings import ConfigError, load_settings
from server.services.notifications import service as notification_service
from server.services.notifications.delivery import NotificationConfig
from tests.fixtures.servers import free_port
from tests.grpc_helpers import serving

SECRET = "s3cret"
FAST = NotificationConfig(webhook_secret=SECRET, attempts_max=3, backoff_ms=10, attempt_timeout_ms=1000)


class SmtpSink:
    """aiosmtpd handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content.decode()))
        return "250 OK"


class WebhookReceiver:
    """A tiny HTTP/1.1 server on loopback that records requests and answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((head[0], headers, body))
        writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
def smtp() -> Any:
    sink = SmtpSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield sink, controller.port
    controller.stop()


@pytest.fixture
async def notifier(pg_dsn: str) -> AsyncIterator[Callable[[NotificationConfig], Any]]:
    """Start the service with a config; yields (client, stub) for it."""
    stack: list[Any] = []

    async def start(config: NotificationConfig) -> tuple[NotificationClient, pb_grpc.NotificationServiceStub]:
        port = free_port()
        address = f"127.0.0.1:{port}"
        context = serving(notification_service.serve(port, pg_dsn, config), address)
        await context.__aenter__()
        stack.append(context)
        client = NotificationClient(address, flush_interval_ms=10)
        client.start()
        channel = grpc.aio.insecure_channel(address)
        stack.extend([client, channel])
        return client, pb_grpc.NotificationServiceStub(channel)

    yield start
    for thing in reversed(stack):
        if isinstance(thing, NotificationClient | grpc.aio.Channel):
            await thing.close()
        else:
            await thing.__aexit__(None, None, None)


async def _until(predicate: Callable[[], bool], timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def _failed_total() -> float:
    return REGISTRY.get_sample_value("kassa_notifications_failed_total") or 0.0


def test_config_from_settings() -> None:
    config = NotificationConfig.from_settings(load_settings({
        "KASSA_SMTP_HOST": "mail", "KASSA_SMTP_PORT": "2525", "KASSA_SMTP_FROM": "k@x",
        "KASSA_SMS_WEBHOOK_URL": "http://h/sms", "KASSA_WEBHOOK_SECRET": "s",
        "KASSA_NOTIFY_ATTEMPTS_MAX": "5", "KASSA_NOTIFY_BACKOFF_MS": "0",
    }))
    assert (config.smtp_host, config.smtp_port, config.smtp_from) == ("mail", 2525, "k@x")
    assert (config.sms_webhook_url, config.push_webhook_url) == ("http://h/sms", None)
    assert (config.attempts_max, config.backoff_ms) == (5, 0)
    assert config.route("email") == "email" and config.route("push") == "log"
    assert NotificationConfig.from_settings(load_settings({})) == NotificationConfig()
    # A webhook URL needs a secret: refused at start-up, naming the variable, on one line.
    for url in ("KASSA_SMS_WEBHOOK_URL", "KASSA_PUSH_WEBHOOK_URL"):
        for empty in ({}, {"KASSA_WEBHOOK_SECRET": " "}):
            with pytest.raises(ConfigError, match="^KASSA_WEBHOOK_SECRET is empty[^\n]*$"):
                load_settings({url: "https://h/x", **empty})
    for name, bad in [("KASSA_SMTP_PORT", "x"), ("KASSA_NOTIFY_ATTEMPTS_MAX", "0"),
                      ("KASSA_NOTIFY_BACKOFF_MS", "-1"), ("KASSA_PUSH_WEBHOOK_URL", "ftp://x")]:
        with pytest.raises(ConfigError, match=name):
            load_settings({name: bad})


async def test_email_arrives_at_a_real_smtp_server(smtp: Any, notifier: Any) -> None:
    sink, port = smtp
    client, _ = await notifier(replace(FAST, smtp_host="127.0.0.1", smtp_port=port, smtp_from="kassa@test"))
    client.notify(Notification("RCP-1", "email", "alice@example.com", "Paid", "You paid 10.00 USD"))
    await _until(lambda: bool(sink.messages))
    mail_from, rcpt_tos, content = sink.messages[0]
    assert (mail_from, rcpt_tos) == ("kassa@test", ["alice@example.com"])
    assert "Subject: Paid" in content and "You paid 10.00 USD" in content
    assert "X-Kassa-Receipt: RCP-1" in content


async def test_webhooks_arrive_signed(
    receiver: WebhookReceiver, notifier: Any, caplog: pytest.LogCaptureFixture
) -> None:
    config = replace(FAST, sms_webhook_url=receiver.url("/sms"), push_webhook_url=receiver.url("/push"))
    client, _ = await notifier(config)
    with caplog.at_level(logging.INFO, logger="kassa.grpc.clients"):
        client.notify(Notification("RCP-2", "sms", "+15550100", "Paid", "10.00 USD"))
        client.notify(Notification("RCP-3", "push", "tok", "Paid", "20.00 USD"))
        await _until(lambda: len(receiver.requests) == 2)
        await _until(lambda: "[NOTIFICATION BATCHER] Sent 2 notifications" in caplog.text)
    by_path = {line.split()[1]: (headers, body) for line, headers, body in receiver.requests}
    for path, code in (("/sms", "RCP-2"), ("/push", "RCP-3")):
        headers, body = by_path[path]
        # Standard Webhooks, checked by a receiver no one here wrote (a secret that is not
        # `whsec_...` is its own key).
        Webhook(SECRET.encode()).verify(body, headers)
        assert headers["webhook-id"].startswith(f"msg_{code}_")
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["receipt_code"] == code


async def test_unconfigured_channel_falls_back_to_the_log(
    notifier: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, stub = await notifier(FAST)
    with caplog.at_level(logging.INFO, logger="kassa.notifications"):
        reply = await stub.SendNotifications(pb.SendNotificationsRequest(items=[
            pb.NotificationItem(receipt_code="RCP-4", channel="email", recipient="b@x", subject="S", body="B"),
            pb.NotificationItem(receipt_code="RCP-5", channel="pigeon", recipient="b", subject="S", body="B"),
        ]), timeout=5)
    assert [(r.delivered, r.attempts) for r in reply.results] == [(True, 1), (False, 0)]
    assert "unknown channel" in reply.results[1].error and not reply.results[1].dead_lettered
    assert "RCP-4 to b@x via log" in caplog.text


async def test_dead_receiver_ends_in_dead_letters_after_retries(
    pg_dsn: str, receiver: WebhookReceiver, notifier: Any
) -> None:
    receiver.status = 500
    refused_url = f"http://127.0.0.1:{free_port()}/sms"  # nothing listens there
    client, stub = await notifier(replace(FAST, sms_webhook_url=refused_url,
                                          push_webhook_url=receiver.url("/push")))
    started = time.monotonic()
    reply = await stub.SendNotifications(pb.SendNotificationsRequest(items=[
        pb.NotificationItem(receipt_code="RCP-6", channel="sms", recipient="+1", subject="S", body="B"),
        pb.NotificationItem(receipt_code="RCP-7", channel="push", recipient="t", subject="S", body="B"),
    ]), timeout=10)
    assert time.monotonic() - started >= 0.03  # backoff 10 ms then 20 ms
    assert [(r.delivered, r.attempts, r.dead_lettered) for r in reply.results] == [(False, 3, True)] * 2
    assert "ConnectError" in reply.results[0].error and "500" in reply.results[1].error
    assert len(receiver.requests) == 3
    conn = await asyncpg.connect(pg_dsn)
    rows = await conn.fetch("SELECT * FROM notification_dead_letters ORDER BY receipt_code")
    await conn.close()
    assert [(r["receipt_code"], r["channel"], r["attempts"]) for r in rows] == [
        ("RCP-6", "sms", 3), ("RCP-7", "push", 3)]
    assert json.loads(rows[0]["payload"])["recipient"] == "+1"

    failed_before = _failed_total()
    client.notify(Notification("RCP-8", "sms", "+1", "S", "B"))  # through the client: counted
    await _until(lambda: _failed_total() == failed_before + 1)


async def test_client_never_raises_when_the_service_is_down() -> None:
    client = NotificationClient(f"127.0.0.1:{free_port()}", flush_interval_ms=5,
                                breaker_failures_max=1, breaker_reset_ms=60_000)
    client.start()
    failed_before = _failed_total()
    client.notify(Notification("RCP-9", "log", "x", "S", "B"))
    await _until(lambda: client.breaker.state == "open")
    client.notify(Notification("RCP-10", "log", "x", "S", "B"))  # refused at once
    assert _failed_total() == failed_before + 2
    await client.close()
