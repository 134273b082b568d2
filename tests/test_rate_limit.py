"""Per-key rate limiting: the Redis token bucket (real Redis), its pure helpers, and 429."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from core.kit.rate_limit import Throttle, bucket_key, retry_after_s
from core.ledger.errors import RateLimited
from server.adapters.redis.client import create_client
from server.adapters.redis.rate_limit import RedisRateLimiter, rate_limiter
from server.http.errors import from_exception
from server.process.settings import Settings
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.timeout(30)


async def take(limiter: RedisRateLimiter, key: str, n: int) -> list[int | None]:
    """Per request: None if allowed, else its retry_after_s."""
    results: list[int | None] = []
    for _ in range(n):
        try:
            await limiter.check(key)
            results.append(None)
        except RateLimited as exc:
            results.append(exc.retry_after_s)
    return results


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [retry_after_s(ms) for ms in (1, 999, 1000, 1001, 2500)] == [1, 1, 1, 2, 3]


def test_bucket_key_is_a_digest() -> None:
    assert "secret" not in bucket_key("secret")
    assert bucket_key("secret") == bucket_key("secret") != bucket_key("other")


def test_throttle_says_yes_once_per_interval() -> None:
    now = [0.0]
    throttle = Throttle(5.0, clock=lambda: now[0])
    assert throttle.ready() and not throttle.ready()
    now[0] = 4.9
    assert not throttle.ready()
    now[0] = 5.0
    assert throttle.ready()


async def test_burst_over_the_limit_is_refused_until_refilled(
        clients: Callable[[], aioredis.Redis]) -> None:
    limiter = RedisRateLimiter(clients(), burst=5, refill_per_s=5 / 0.5)  # KASSA_RATE_LIMIT=5/0.5
    assert await take(limiter, "key-a", 7) == [None] * 5 + [1, 1]
    with pytest.raises(RateLimited) as refused:
        await limiter.check("key-a")
    response = from_exception(refused.value)
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert b'"rate_limited"' in response.body
    await asyncio.sleep(0.5)  # the whole bucket refills in 0.5 s
    assert await take(limiter, "key-a", 6) == [None] * 5 + [1]


async def test_refill_is_gradual(clients: Callable[[], aioredis.Redis]) -> None:
    limiter = RedisRateLimiter(clients(), burst=2, refill_per_s=10)
    assert await take(limiter, "k", 3) == [None, None, 1]
    await asyncio.sleep(0.12)  # one token back, not two
    assert await take(limiter, "k", 2) == [None, 1]


async def test_retry_after_covers_a_slow_refill(clients: Callable[[], aioredis.Redis]) -> None:
    limiter = RedisRateLimiter(clients(), burst=1, refill_per_s=1 / 3)  # 1 request per 3 s
    assert await take(limiter, "slow", 2) == [None, 3]


async def test_two_limiters_share_one_bucket(clients: Callable[[], aioredis.Redis]) -> None:
    one = RedisRateLimiter(clients(), burst=4, refill_per_s=0.01)
    two = RedisRateLimiter(clients(), burst=4, refill_per_s=0.01)
    results = await asyncio.gather(take(one, "shared", 3), take(two, "shared", 3))
    allowed = [r for batch in results for r in batch if r is None]
    assert len(allowed) == 4


async def test_keys_have_their_own_buckets(clients: Callable[[], aioredis.Redis]) -> None:
    redis = clients()
    limiter = RedisRateLimiter(redis, burst=2, refill_per_s=0.01)
    assert await take(limiter, "alpha", 3) == [None, None, 100]
    assert await take(limiter, "beta", 2) == [None, None]
    keys = [k.decode() for k in await redis.keys("*")]
    assert sorted(keys) == sorted([bucket_key("alpha"), bucket_key("beta")])
    assert all("alpha" not in k and "beta" not in k for k in keys)  # never the API key
    assert 0 < await redis.pttl(bucket_key("alpha")) <= 201_000  # expires when full again


async def test_redis_down_fails_open() -> None:
    client = create_client(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        limiter = RedisRateLimiter(client, burst=1, refill_per_s=0.01)
        assert await take(limiter, "key", 3) == [None, None, None]
    finally:
        await client.aclose()


async def test_unset_rate_limit_means_no_limiter(clients: Callable[[], aioredis.Redis]) -> None:
    assert rate_limiter(clients(), Settings()) is None
    assert rate_limiter(None, Settings(rate_limit="10/1")) is None
    limiter = rate_limiter(clients(), Settings(rate_limit="3/2"))
    assert limiter is not None
    assert await take(limiter, "k", 4) == [None, None, None, 1]


async def test_hung_redis_stops_costing_time() -> None:
    """A Redis that accepts connections but never answers: after a few timeouts, the
    breaker opens and requests pass at once (still failing open)."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)  # the kernel completes connections; nobody ever reads them
        client = create_client(f"redis://127.0.0.1:{hung.getsockname()[1]}/0")
        try:
            limiter = RedisRateLimiter(client, burst=1, refill_per_s=0.01)
            assert await take(limiter, "key", 5) == [None] * 5  # each waits a socket timeout
            started = time.monotonic()
            assert await take(limiter, "key", 20) == [None] * 20
            assert time.monotonic() - started < 0.2
        finally:
            await client.aclose()
