"""Pure pieces of per-key rate limiting; the token bucket itself runs in Redis (Lua).

The bucket lives in Redis so every worker process and host shares it, and its clock
is Redis server time so they all agree. What is left here is what needs no I/O:
the bucket's key (a digest, never the API key), turning the wait into a Retry-After,
and a throttle so a dependency outage logs once every few seconds, not per request.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.ledger.errors import RateLimited

KEY_PREFIX = "kassa:ratelimit:"


def bucket_key(api_key: str) -> str:
    """The Redis key of an API key's bucket: a digest, so Redis never holds the key."""
    return KEY_PREFIX + hashlib.sha256(api_key.encode()).hexdigest()[:32]


def retry_after_s(wait_ms: int) -> int:
    """Whole seconds to wait, rounded up, at least 1 (the Retry-After header's unit)."""
    return max(1, math.ceil(wait_ms / 1000))


@dataclass(frozen=True, slots=True)
class Quota:
    """An API key's bucket as one request left it, for the RateLimit-Policy and RateLimit
    answer headers: the policy (`limit` requests per `window_s` seconds, the bucket's size
    and the time it takes to refill from empty) and the state (`remaining` whole requests,
    `reset_s` seconds until the bucket is full again), None when unknown (Redis down: the
    limit fails open)."""

    limit: int
    window_s: int
    remaining: int | None = None
    reset_s: int | None = None


def quota(burst: int, refill_per_s: float, tokens: float | None) -> Quota:
    """The Quota of a bucket of `burst` tokens refilled at `refill_per_s` that holds
    `tokens` after this request (None: unknown)."""
    window_s = max(1, round(burst / refill_per_s))
    if tokens is None:
        return Quota(burst, window_s)
    tokens = min(max(tokens, 0.0), float(burst))
    return Quota(burst, window_s, math.floor(tokens), math.ceil((burst - tokens) / refill_per_s))


def refusal(wait_ms: int, state: Quota | None = None) -> RateLimited:
    seconds = retry_after_s(wait_ms)
    return RateLimited(f"rate limit exceeded for this API key; retry in {seconds}s",
                       retry_after_s=seconds, quota=state)


class Throttle:
    """Says yes at most once per `interval_s` (for warnings about an outage)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self._interval_s:
            return False
        self._last = now
        return True
