"""SMTP AUTH with the password read from KASSA_SMTP_PASSWORD_FILE: the notification
delivery logs in to a real SMTP server (aiosmtpd) that requires it; a wrong password is a
failed delivery, never a message sent unauthenticated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from server.process.embedded import free_port
from server.process.settings import ConfigError, load_settings
from server.services.notifications.delivery import (
    Deliverer,
    DeliveryFailed,
    NotificationConfig,
    WebhookPayload,
)
from tests.test_notifications import SmtpSink

# aiosmtpd warns when AUTH is allowed without TLS: this loopback server has no certificate.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

USER, PASSWORD = "kassa", "pa55word"


class Authenticator:
    """Accepts USER / PASSWORD only, and keeps every login tried."""

    def __init__(self) -> None:
        self.tried: list[tuple[str, str]] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login = (auth_data.login.decode(), auth_data.password.decode())
        self.tried.append(login)
        return AuthResult(success=login == (USER, PASSWORD))


@pytest.fixture
def smtp_auth() -> Iterator[tuple[SmtpSink, Authenticator, int]]:
    sink, authenticator = SmtpSink(), Authenticator()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port(),
                            authenticator=authenticator, auth_required=True,
                            auth_require_tls=False)
    controller.start()
    yield sink, authenticator, controller.port
    controller.stop()


def config(port: int, password_file: Path) -> NotificationConfig:
    return NotificationConfig.from_settings(load_settings({
        "KASSA_SMTP_HOST": "127.0.0.1", "KASSA_SMTP_PORT": str(port),
        "KASSA_SMTP_USERNAME": USER, "KASSA_SMTP_PASSWORD_FILE": str(password_file),
        "KASSA_NOTIFY_ATTEMPTS_MAX": "1"}))


EMAIL = WebhookPayload(receipt_code="R-1", channel="email", recipient="a@example.com",
                       subject="Receipt R-1", body="paid")


async def test_the_password_file_logs_in(smtp_auth: Any, tmp_path: Path) -> None:
    sink, authenticator, port = smtp_auth
    password_file = tmp_path / "smtp_password"
    password_file.write_text(PASSWORD + "\n")
    deliverer = Deliverer(config(port, password_file))
    try:
        assert await deliverer.deliver(EMAIL) == 1
    finally:
        await deliverer.aclose()
    assert authenticator.tried == [(USER, PASSWORD)]
    assert [to for _, to, _ in sink.messages] == [["a@example.com"]]


async def test_a_wrong_password_is_a_failed_delivery(smtp_auth: Any, tmp_path: Path) -> None:
    sink, authenticator, port = smtp_auth
    password_file = tmp_path / "smtp_password"
    password_file.write_text("wrong\n")
    deliverer = Deliverer(config(port, password_file))
    try:
        with pytest.raises(DeliveryFailed):
            await deliverer.deliver(EMAIL)
    finally:
        await deliverer.aclose()
    assert authenticator.tried == [(USER, "wrong")]
    assert sink.messages == []


def test_a_user_without_a_password_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="KASSA_SMTP_USERNAME and KASSA_SMTP_PASSWORD go"):
        load_settings({"KASSA_SMTP_USERNAME": USER})
