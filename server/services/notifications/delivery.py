"""How one notification is delivered: its channel, its retries, and the configuration.

email goes over SMTP; sms and push are signed JSON POSTs to webhooks; a channel with
nothing configured falls back to the log, so a bare install still "delivers".
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib
import httpx
import msgspec

log = logging.getLogger("kassa.notifications")

CHANNELS = frozenset(("email", "sms", "push", "log"))


@dataclass(frozen=True)
class NotificationConfig:
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "kassa@localhost"
    sms_webhook_url: str | None = None
    push_webhook_url: str | None = None
    webhook_secret: str = ""
    attempts_max: int = 3
    backoff_ms: int = 50  # doubles after each failed attempt
    attempt_timeout_ms: int = 5000

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> NotificationConfig:
        """Read KASSA_* variables; an invalid value raises ValueError naming the variable."""
        return cls(
            smtp_host=env.get("KASSA_SMTP_HOST") or None,
            smtp_port=_int(env, "KASSA_SMTP_PORT", 25, 1, 65535),
            smtp_from=env.get("KASSA_SMTP_FROM") or cls.smtp_from,
            sms_webhook_url=_url(env, "KASSA_SMS_WEBHOOK_URL"),
            push_webhook_url=_url(env, "KASSA_PUSH_WEBHOOK_URL"),
            webhook_secret=env.get("KASSA_WEBHOOK_SECRET", ""),
            attempts_max=_int(env, "KASSA_NOTIFY_ATTEMPTS_MAX", 3, 1, 20),
            backoff_ms=_int(env, "KASSA_NOTIFY_BACKOFF_MS", 50, 0, 60_000),
            attempt_timeout_ms=_int(env, "KASSA_NOTIFY_TIMEOUT_MS", 5000, 1, 120_000),
        )

    def route(self, channel: str) -> str:
        """The channel actually used: `log` when nothing is configured for it."""
        configured = {
            "email": self.smtp_host, "sms": self.sms_webhook_url, "push": self.push_webhook_url,
        }
        return channel if configured.get(channel) else "log"


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name) or None
    if raw is not None and not raw.startswith(("http://", "https://")):
        raise ValueError(f"{name} must be an http:// or https:// URL, got {raw!r}")
    return raw


class WebhookPayload(msgspec.Struct):
    receipt_code: str
    channel: str
    recipient: str
    subject: str
    body: str


_encode = msgspec.json.Encoder().encode


def sign(secret: str, body: bytes) -> str:
    """The X-Kassa-Signature header value: receivers recompute it to trust the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


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
            timeout=self.config.attempt_timeout_ms / 1000,
        )

    async def _webhook(self, n: WebhookPayload, channel: str) -> None:
        url = self.config.sms_webhook_url if channel == "sms" else self.config.push_webhook_url
        assert url is not None
        body = _encode(n)
        response = await self._http.post(url, content=body, headers={
            "Content-Type": "application/json",
            "X-Kassa-Signature": sign(self.config.webhook_secret, body),
        })
        response.raise_for_status()
