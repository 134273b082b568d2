"""Redis's answer to a readiness check (core/pipeline/read_ports.py: Ping)."""

from __future__ import annotations

import redis.asyncio as aioredis

from core.kit.breaker import CircuitBreaker
from server.adapters.redis.client import converted_errors


class RedisPing:
    def __init__(self, client: aioredis.Redis, breaker: CircuitBreaker | None = None) -> None:
        self._client = client
        self._breaker = breaker

    async def ping(self) -> None:
        """Through the breaker: an open one answers "down" at once, without a PING that
        would wait for the socket timeout of a stalled Redis."""
        async with converted_errors("ping", self._breaker):
            await self._client.ping()
