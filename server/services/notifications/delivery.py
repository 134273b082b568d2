"""How one notification is delivered: its channel, its retries, and the configuration.

email goes over SMTP; sms and push are JSON POSTs to webhooks, signed per Standard Webhooks
like the event webhooks (core/ledger/webhooks.py) with KASSA_WEBHOOK_SECRET; a channel with
nothing configured falls back to the log, so a bare install still "delivers".
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib
import httpx
import msgspec

from core.ledger.webhooks import headers, secret_key
from server.process.settings import Settings

log = logging.getLogger("kassa.notifications")
_DEFAULTS = Settings()

CHANNELS = frozenset(("email", "sms", "push", "log"))


@dataclass(frozen=True)
class NotificationConfig:
    """The delivery part of Settings (KASSA_SMTP_*, KASSA_*_WEBHOOK_URL, KASSA_NOTIFY_*):
    parsed and validated there, copied here so delivery depends on these fields only."""

    smtp_host: str | None = None
    smtp_port: int = _DEFAULTS.smtp_port
    smtp_from: str = _DEFAULTS.smtp_from
    smtp_username: str | None = None
    smtp_password: str | None = None
    sms_webhook_url: str | None = None
    push_webhook_url: str | None = None
    webhook_secret: str = _DEFAULTS.webhook_secret
    attempts_max: int = _DEFAULTS.notify_attempts_max
    backoff_ms: int = _DEFAULTS.notify_backoff_ms  # doubles after each failed attempt
    attempt_timeout_ms: int = _DEFAULTS.notify_timeout_ms

    @classmethod
    def from_settings(cls, settings: Settings) -> NotificationConfig:
        return cls(
            smtp_host=settings.smtp_host,
            smtp_port=settings.smtp_port,
            smtp_from=settings.smtp_from,
            smtp_username=settings.smtp_username,
            smtp_password=settings.smtp_password,
            sms_webhook_url=settings.sms_webhook_url,
            push_webhook_url=settings.push_webhook_url,
            webhook_secret=settings.webhook_secret,
            attempts_max=settings.notify_attempts_max,
            backoff_ms=settings.notify_backoff_ms,
            attempt_timeout_ms=settings.notify_timeout_ms,
        )

    def route(self, channel: str) -> str:
        """The channel actually used: `log` when nothing is configured for it."""
        configured = {
            "email": self.smtp_host, "sms": self.sms_webhook_url, "push": self.push_webhook_url,
        }
        return channel if configured.get(channel) else "log"


class WebhookPayload(msgspec.Struct):
    receipt_code: str
    channel: str
    recipient: str
    subject: str
    body: str


_encode = msgspec.json.Encoder().encode


def message_id(n: WebhookPayload) -> str:
    """The `webhook-id` of a notification: the same on every attempt, one per receipt,
    channel and recipient (receivers deduplicate on it)."""
    recipient = hashlib.sha256(n.recipient.encode()).hexdigest()[:16]
    return f"msg_{n.receipt_code}_{n.channel}_{recipient}"


class DeliveryFailed(Exception):
    def __init__(self, attempts: int, last_error: str) -> None:
        super().__init__(last_error)
        self.attempts = attempts
        self.last_error = last_error


class Deliverer:
    """Delivers one notification with bounded retries; owns the shared HTTP client."""

    def __init__(self, config: NotificationConfig) -> None:
        self.config = config
        self._http = httpx.AsyncClient(timeout=config.attempt_timeout_ms / 1000)
        # Settings refuse a webhook URL with an empty secret; without a URL it is unused.
        self._key = secret_key(config.webhook_secret)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def deliver(self, n: WebhookPayload) -> int:
        """Attempts used on success; raises DeliveryFailed after the last attempt."""
        last_error = ""
        for attempt in range(1, self.config.attempts_max + 1):
            try:
                await self._attempt(n)
                return attempt
            except (OSError, aiosmtplib.SMTPException, httpx.HTTPError, TimeoutError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                log.info("notification %s via %s, attempt %d failed: %s",
                         n.receipt_code, n.channel, attempt, last_error)
            if attempt < self.config.attempts_max:
                await asyncio.sleep(self.config.backoff_ms / 1000 * 2 ** (attempt - 1))
        raise DeliveryFailed(self.config.attempts_max, last_error)

    async def _attempt(self, n: WebhookPayload) -> None:
        channel = self.config.route(n.channel)
        if channel == "email":
            await self._email(n)
        elif channel in ("sms", "push"):
            await self._webhook(n, channel)
        else:
            log.info("notification %s to %s via log (%s): %s: %s",
                     n.receipt_code, n.recipient, n.channel, n.subject, n.body)

    async def _email(self, n: WebhookPayload) -> None:
        message = EmailMessage()
        message["From"] = self.config.smtp_from
        message["To"] = n.recipient
        message["Subject"] = n.subject
        message["X-Kassa-Receipt"] = n.receipt_code
        message.set_content(n.body)
        await aiosmtplib.send(
            message, hostname=self.config.smtp_host, port=self.config.smtp_port,
            username=self.config.smtp_username, password=self.config.smtp_password,
            timeout=self.config.attempt_timeout_ms / 1000,
        )

    async def _webhook(self, n: WebhookPayload, channel: str) -> None:
        url = self.config.sms_webhook_url if channel == "sms" else self.config.push_webhook_url
        assert url is not None
        body = _encode(n)
        assert self._key, "KASSA_WEBHOOK_SECRET is required with a webhook URL (settings.py)"
        response = await self._http.post(url, content=body, headers=headers(
            self._key, message_id(n), int(time.time()), body))
        response.raise_for_status()
