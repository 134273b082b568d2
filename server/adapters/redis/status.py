"""Status records in Redis, written in batches, never moved backwards."""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis

from core.kit.breaker import CircuitBreaker
from core.ledger.status import RANK
from core.pipeline.ports import JournalStatus
from server.adapters.redis.client import converted_errors

KEY = "kassa:status:{}"
CHUNK = 500

# KEYS: status keys; ARGV[1]: ttl; ARGV[2i], ARGV[2i+1]: rank and record of KEYS[i].
# A record replaces the stored one only with a higher rank: statuses move forward only.
FORWARD_ONLY = """
for i, key in ipairs(KEYS) do
  local rank = tonumber(ARGV[2 * i])
  local current = redis.call('HGET', key, 'r')
  if (not current) or tonumber(current) < rank then
    redis.call('HSET', key, 'r', rank, 'v', ARGV[2 * i + 1])
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return #KEYS
"""

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(JournalStatus).decode


class RedisStatusStore:
    def __init__(self, client: aioredis.Redis, *, breaker: CircuitBreaker | None = None) -> None:
        self._client = client
        self._breaker = breaker
        self._script = client.register_script(FORWARD_ONLY)

    async def write_statuses(self, records: list[JournalStatus], ttl_s: int) -> None:
        async with converted_errors("status write", self._breaker):
            for start in range(0, len(records), CHUNK):
                chunk = records[start:start + CHUNK]
                args: list[object] = [ttl_s]
                for record in chunk:
                    args += [RANK[record.status], _encode(record)]
                await self._script(keys=[KEY.format(r.receipt_code) for r in chunk], args=args)

    async def read_status(self, receipt_code: str) -> JournalStatus | None:
        async with converted_errors("status read", self._breaker):
            raw = await self._client.hget(KEY.format(receipt_code), "v")
        return None if raw is None else _decode(raw)
