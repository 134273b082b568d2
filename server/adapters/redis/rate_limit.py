"""Per-API-key rate limit: a token bucket in Redis, shared by every process and host.

capacity = burst = the `<requests>` of KASSA_RATE_LIMIT, refilled at requests/seconds
per second. One Lua script reads, refills, takes and writes atomically, on Redis
server time (`TIME`), so no two clocks disagree about the refill.

Fail open: when Redis is down or slow the request is allowed (and a warning logged at
most every few seconds). A rate limit protects capacity; refusing all traffic because
the limiter's own store is down would turn a Redis outage into a full outage.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from core.kit.breaker import CircuitBreaker
from core.kit.rate_limit import Quota, Throttle, bucket_key, quota, refusal
from core.ledger.errors import Unavailable
from server.adapters.redis.client import converted_errors
from server.process.settings import Settings

log = logging.getLogger("kassa.rate_limit")

WARN_INTERVAL_S = 5.0
BREAKER_FAILURES_MAX, BREAKER_RESET_MS = 5, 1000

# KEYS[1]: the bucket; ARGV[1]: burst (tokens); ARGV[2]: refill (tokens per second).
# Returns {0 when a token was taken, else the milliseconds until one is available; the
# tokens left, in thousandths} (Redis truncates Lua numbers to integers).
# The bucket is a hash {t: tokens, us: Redis time in microseconds of the last update};
# a missing bucket is full. It expires once it would be full again anyway.
TOKEN_BUCKET = """
if redis.replicate_commands then redis.replicate_commands() end
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local time = redis.call('TIME')
local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
local state = redis.call('HMGET', KEYS[1], 't', 'us')
local tokens = tonumber(state[1]) or burst
local last_us = tonumber(state[2]) or now_us
tokens = math.min(burst, tokens + math.max(0, now_us - last_us) * rate / 1000000)
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait_ms = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'us', string.format('%.0f', now_us))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {wait_ms, math.floor(tokens * 1000)}
"""


class RedisRateLimiter:
    def __init__(self, client: aioredis.Redis, burst: int, refill_per_s: float) -> None:
        assert burst >= 1 and refill_per_s > 0
        self._burst = burst
        self._refill_per_s = refill_per_s
        self._script = client.register_script(TOKEN_BUCKET)
        self._warn = Throttle(WARN_INTERVAL_S)
        # A hung Redis would add a socket timeout to every request; open, it adds nothing.
        self._breaker = CircuitBreaker("redis_rate_limit", failures_max=BREAKER_FAILURES_MAX,
                                       reset_ms=BREAKER_RESET_MS)

    async def check(self, api_key: str) -> Quota:
        """Take one token from this key's bucket and say what is left; raises RateLimited
        (429, with the same Quota) when empty."""
        wait_ms, tokens = await self._take(api_key)
        state = quota(self._burst, self._refill_per_s, tokens)
        if wait_ms > 0:
            raise refusal(wait_ms, state)
        return state

    async def _take(self, api_key: str) -> tuple[int, float | None]:
        """(0 when a token was taken or Redis is down (fail open), else ms until one is;
        the tokens left, None when Redis could not say)."""
        if not self._breaker.allow():
            return 0, None  # fail open without waiting on a Redis known to be down
        try:
            async with converted_errors("rate limit"):
                wait_ms, milli_tokens = await self._script(
                    keys=[bucket_key(api_key)], args=[self._burst, repr(self._refill_per_s)])
        except Unavailable as exc:
            self._breaker.record_failure()
            if self._warn.ready():
                log.warning("rate limit not enforced (failing open) while Redis is down: %s", exc)
            return 0, None
        except BaseException:
            # Cancellation too: a half-open breaker's trial must end, or it stays half open.
            self._breaker.record_failure()
            raise
        self._breaker.record_success()
        return int(wait_ms), int(milli_tokens) / 1000


def rate_limiter(client: aioredis.Redis | None, settings: Settings) -> RedisRateLimiter | None:
    """The limiter KASSA_RATE_LIMIT asks for; None (no Redis call at all) when it is unset."""
    limit = settings.rate_limit_per_s
    if limit is None:
        return None
    if client is None:
        log.warning("KASSA_RATE_LIMIT is set but KASSA_REDIS_URL is not: no rate limit")
        return None
    burst, refill_per_s = limit
    return RedisRateLimiter(client, burst, refill_per_s)
