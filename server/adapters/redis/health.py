"""Redis's answer to a readiness check (core/pipeline/read_ports.py: Ping)."""

from __future__ import annotations

import redis.asyncio as aioredis


class RedisPing:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def ping(self) -> None:
        await self._client.ping()
