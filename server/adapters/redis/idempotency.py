"""The idempotency fast path: a Redis marker while a request is accepted, then its answer.

The journals' unique (scope, key) constraint stays the authority; this only answers
repeats quickly and detects a repeat that races the first request (409).
"""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis

from core.kit.breaker import CircuitBreaker
from core.pipeline.ports import IdempotencyRecord
from server.adapters.redis.client import converted_errors

KEY = "kassa:idem:{}:{}"
# How long a key stays "being accepted" when its process dies before finishing the accept
# (every later try gets 409 idempotency_in_progress meanwhile). An accept lasts at most a
# few seconds (KASSA_COMMIT_CHECK_TIMEOUT_MS, the receipt wait); past this, the database's
# unique key decides a repeat, so a short marker costs nothing in safety.
IN_FLIGHT_TTL_S = 10

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(IdempotencyRecord).decode


class RedisIdempotencyCache:
    def __init__(self, client: aioredis.Redis, *, ttl_s: int,
                 breaker: CircuitBreaker | None = None) -> None:
        self._client = client
        self._ttl_s = ttl_s
        # Open: Unavailable at once, and the gate lets the database's unique key decide.
        self._breaker = breaker

    async def begin(self, scope: str, key: str, request_hash: str) -> IdempotencyRecord | None:
        name = KEY.format(scope, key)
        marker = _encode(IdempotencyRecord(request_hash))
        async with converted_errors("idempotency", self._breaker):
            if await self._client.set(name, marker, nx=True, ex=IN_FLIGHT_TTL_S):
                return None
            raw = await self._client.get(name)
        # Expired between SET and GET: treat as a fresh key; the database still decides.
        return None if raw is None else _decode(raw)

    async def complete(self, scope: str, key: str, record: IdempotencyRecord) -> None:
        async with converted_errors("idempotency", self._breaker):
            await self._client.set(KEY.format(scope, key), _encode(record), ex=self._ttl_s)

    async def abandon(self, scope: str, key: str) -> None:
        async with converted_errors("idempotency", self._breaker):
            await self._client.delete(KEY.format(scope, key))
