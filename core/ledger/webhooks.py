"""Standard Webhooks (https://www.standardwebhooks.com): secrets, signatures, the event
filter and the retry schedule, as pure functions (docs/api.md, Webhooks).

A secret is `whsec_` + base64 of 24 random bytes; the key is those bytes. A message is
signed as `v1,` + base64(HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")).
Retries follow exponential backoff with full jitter (each wait drawn uniformly from zero
to `base * 2**(attempt - 1)`, capped), and stop at the first failure once the retry
window since the first attempt has passed: that delivery is then dead-lettered.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import random
import secrets
from dataclasses import dataclass

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24
EVENT_TYPES = ("transaction.completed", "transaction.failed", "transaction.held",
               "transaction.voided")


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret: the base64 part of `whsec_...`, decoded; any other
    non-empty value (KASSA_WEBHOOK_SECRET set by hand) is its own UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value."""
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt."""
    return {"content-type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, msg_id, timestamp, body)}


def matches(events: list[str] | None, event: str) -> bool:
    return events is None or event in events


@dataclass(frozen=True)
class RetryPolicy:
    """KASSA_WEBHOOK_RETRY_BASE_MS, _RETRY_CAP_S and _RETRY_WINDOW_S."""

    base_s: float = 5.0
    cap_s: float = 36_000.0  # 10 h, Standard Webhooks' longest suggested wait
    window_s: float = 86_400.0  # at least 24 h of retries before a delivery is dead-lettered

    def __post_init__(self) -> None:
        assert 0 < self.base_s <= self.cap_s and self.window_s >= 0


def retry_in(policy: RetryPolicy, attempts: int, window_left_s: float,
             rand: random.Random | None = None) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones, with `window_left_s`
    left of the delivery's retry window; None when it is to be dead-lettered."""
    if window_left_s <= 0:
        return None
    ceiling = min(policy.cap_s, policy.base_s * 2 ** min(attempts - 1, 40))
    return (rand or random).uniform(0.0, ceiling)
