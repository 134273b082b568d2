"""One asyncio Redis client per process, with short timeouts so a dead Redis answers fast."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.ledger.errors import Unavailable

log = logging.getLogger("kassa.redis")


def create_client(url: str) -> aioredis.Redis:
    return aioredis.from_url(
        url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=10,
        max_connections=64,
    )


@contextlib.asynccontextmanager
async def converted_errors(what: str) -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        # The message may reach a client: the driver's text (host, port) goes to the log.
        log.warning("redis unavailable (%s): %r", what, exc)
        raise Unavailable(f"redis is unavailable ({what})", retry_after_s=1) from exc
