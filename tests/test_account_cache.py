"""The account cache: LRU/TTL logic with a fake clock, then the reader chain and the
cross-process invalidation against the real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from core.account_cache import CacheStats, LocalAccountCache
from core.models import AccountSnapshot
from server.postgres.journals import PgJournalStore
from server.postgres.pool import create_pool
from server.redis.account_cache import KEY, TOMBSTONE, RedisAccountCache
from server.redis.client import create_client
from tests.fixtures.servers import free_port, start_redis

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def snap(account_id: str, balance: int = 0) -> AccountSnapshot:
    return AccountSnapshot(account_id, "USD", "active", balance, 0)


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


# ---- the local tier: pure logic -------------------------------------------------------

def test_hit_then_expires_after_ttl() -> None:
    clock = FakeClock()
    cache = LocalAccountCache(size_max=10, ttl_ms=1000, clock=clock)
    cache.put_many([snap("a", 5)], cache.epoch)
    assert cache.get_many(["a", "b"]) == ({"a": snap("a", 5)}, ["b"])
    clock.now += 0.999
    assert "a" in cache.get_many(["a"])[0]
    clock.now += 0.001
    assert cache.get_many(["a"]) == ({}, ["a"])
    assert len(cache) == 0


def test_least_recently_used_is_evicted() -> None:
    cache = LocalAccountCache(size_max=2, ttl_ms=1000, clock=FakeClock())
    cache.put_many([snap("a"), snap("b")], cache.epoch)
    cache.get_many(["a"])  # b is now the least recently used
    cache.put_many([snap("c")], cache.epoch)
    assert "a" in cache and "c" in cache and "b" not in cache


def test_read_older_than_a_drop_is_not_stored() -> None:
    cache = LocalAccountCache(size_max=10, ttl_ms=1000, clock=FakeClock())
    before = cache.epoch
    cache.drop(["a"])
    stored = cache.put_many([snap("a", 1), snap("b", 2)], before)
    assert stored == [snap("b", 2)]
    assert "a" not in cache and "b" in cache
    cache.put_many([snap("a", 3)], cache.epoch)  # a read begun after the drop is fine
    assert cache.get_many(["a"])[0] == {"a": snap("a", 3)}


def test_clear_refuses_reads_under_way() -> None:
    cache = LocalAccountCache(size_max=10, ttl_ms=1000, clock=FakeClock())
    cache.put_many([snap("a")], cache.epoch)
    before = cache.epoch
    cache.clear()
    assert len(cache) == 0
    assert cache.put_many([snap("b")], before) == []
    assert cache.put_many([snap("b")], cache.epoch) == [snap("b")]


def test_forgotten_tombstones_make_old_reads_store_nothing() -> None:
    cache = LocalAccountCache(size_max=10, ttl_ms=1000, tombstones_max=2, clock=FakeClock())
    before = cache.epoch
    cache.drop(["x"])
    cache.drop(["y"])
    cache.drop(["z"])  # forgets x's tombstone: a read from before it cannot be trusted
    assert cache.put_many([snap("a")], before) == []
    assert cache.put_many([snap("a")], cache.epoch) == [snap("a")]


def test_hit_rate_counts_both_cache_tiers() -> None:
    assert CacheStats().hit_rate == 0.0
    assert CacheStats(local_hits=2, redis_hits=1, misses=1).hit_rate == 0.75


# ---- the chain: local → Redis → database ----------------------------------------------

class CountingDatabase:
    def __init__(self, accounts: dict[str, AccountSnapshot]) -> None:
        self.accounts = accounts
        self.calls: list[list[str]] = []

    async def get_accounts(self, account_ids: list[str]) -> dict[str, AccountSnapshot]:
        self.calls.append(list(account_ids))
        return {a: self.accounts[a] for a in account_ids if a in self.accounts}


async def test_reads_local_then_redis_then_database(clients: Callable[[], aioredis.Redis]) -> None:
    db = CountingDatabase({"a": snap("a", 10), "b": snap("b", 20)})
    first = RedisAccountCache(clients(), db, size=100, ttl_ms=60_000)
    assert await first.get_accounts(["a", "b", "ghost"]) == {"a": snap("a", 10), "b": snap("b", 20)}
    assert db.calls == [["a", "b", "ghost"]]
    assert await first.get_accounts(["a", "b"]) == {"a": snap("a", 10), "b": snap("b", 20)}
    assert db.calls == [["a", "b", "ghost"]]  # local hits
    second = RedisAccountCache(clients(), db, size=100, ttl_ms=60_000)
    assert await second.get_accounts(["a", "b"]) == {"a": snap("a", 10), "b": snap("b", 20)}
    assert db.calls == [["a", "b", "ghost"]]  # Redis hits, written back by the first
    assert first.stats == CacheStats(local_hits=2, redis_hits=0, misses=3)
    assert second.stats == CacheStats(local_hits=0, redis_hits=2, misses=0)
    await first.get_accounts(["ghost"])  # unknown accounts are never cached
    assert db.calls[-1] == ["ghost"]


async def test_redis_down_reads_the_database() -> None:
    client = create_client(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    db = CountingDatabase({"a": snap("a", 10)})
    cache = RedisAccountCache(client, db, size=100, ttl_ms=60_000)
    try:
        assert await cache.get_accounts(["a"]) == {"a": snap("a", 10)}
        await cache.invalidate(["a"])  # never raises; kept for a retry
        db.accounts["a"] = snap("a", 11)
        assert await cache.get_accounts(["a"]) == {"a": snap("a", 11)}
        assert len(db.calls) == 2
    finally:
        await client.aclose()


async def test_real_database_reader(pg_dsn: str, clients: Callable[[], aioredis.Redis]) -> None:
    pool = await create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        await pool.execute("INSERT INTO accounts (id, currency, overdraft_limit, balance) "
                           "VALUES ('alice', 'EUR', 0, 500), ('@world:EUR', 'EUR', NULL, -500)")
        cache = RedisAccountCache(clients(), PgJournalStore(pool, lease_s=30), size=100,
                                  ttl_ms=60_000)
        found = await cache.get_accounts(["@world:EUR", "alice", "bob"])
        assert found == {"alice": AccountSnapshot("alice", "EUR", "active", 500, 0),
                         "@world:EUR": AccountSnapshot("@world:EUR", "EUR", "active", -500, None)}
        await pool.execute("UPDATE accounts SET balance = 400 WHERE id = 'alice'")
        assert (await cache.get_accounts(["alice"]))["alice"].balance == 500  # cached
        await cache.invalidate(["alice"])
        assert (await cache.get_accounts(["alice"]))["alice"].balance == 400
    finally:
        await pool.close()


# ---- invalidation across processes ----------------------------------------------------

@pytest.fixture
async def started() -> AsyncIterator[Callable[[RedisAccountCache], Awaitable[RedisAccountCache]]]:
    caches: list[RedisAccountCache] = []

    async def start(cache: RedisAccountCache) -> RedisAccountCache:
        caches.append(cache)
        await cache.start()
        await eventually(lambda: cache.subscriptions >= 1)
        return cache

    yield start
    for cache in caches:
        await cache.close()


async def test_invalidation_reaches_the_other_process(
        clients: Callable[[], aioredis.Redis], started: Callable[..., Awaitable[RedisAccountCache]],
) -> None:
    db = CountingDatabase({"a": snap("a", 10), "b": snap("b", 1)})
    one = await started(RedisAccountCache(clients(), db, size=100, ttl_ms=60_000))
    two = await started(RedisAccountCache(clients(), db, size=100, ttl_ms=60_000))
    await one.get_accounts(["a", "b"])
    await two.get_accounts(["a", "b"])
    assert "a" in two.local
    db.accounts["a"] = snap("a", 7)  # committed by process one
    await one.invalidate(["a"])
    await eventually(lambda: "a" not in two.local, timeout_s=1.0)
    assert "b" in two.local  # only the invalidated account is dropped
    assert (await two.get_accounts(["a"]))["a"].balance == 7
    assert (await one.get_accounts(["a"]))["a"].balance == 7


async def test_read_racing_an_invalidation_writes_nothing_stale(
        clients: Callable[[], aioredis.Redis], started: Callable[..., Awaitable[RedisAccountCache]],
) -> None:
    """A reader fetched the old row; the commit and its invalidation land before it stores it."""
    release = asyncio.Event()
    fetched = asyncio.Event()

    class SlowDatabase(CountingDatabase):
        async def get_accounts(self, account_ids: list[str]) -> dict[str, AccountSnapshot]:
            old = await super().get_accounts(account_ids)
            fetched.set()
            await release.wait()
            return old

    redis = clients()
    slow = await started(RedisAccountCache(redis, SlowDatabase({"a": snap("a", 10)}), size=100,
                                           ttl_ms=60_000))
    other = await started(RedisAccountCache(clients(), CountingDatabase({}), size=100,
                                            ttl_ms=60_000))
    reading = asyncio.create_task(slow.get_accounts(["a"]))
    await asyncio.wait_for(fetched.wait(), 5)
    epoch = slow.local.epoch
    await other.invalidate(["a"])
    await eventually(lambda: slow.local.epoch > epoch, timeout_s=1.0)  # the message arrived
    release.set()
    assert (await asyncio.wait_for(reading, 5))["a"].balance == 10  # its answer, not cached
    assert "a" not in slow.local
    assert await redis.get(KEY.format("a")) == TOMBSTONE


# Short: redis-py reconnects inside get_message (our connect callback); long: its retries
# give up and our loop resubscribes with backoff.
@pytest.mark.parametrize("down_s", [0.3, 3.0])
async def test_subscriber_reconnects_and_clears_its_cache(down_s: float) -> None:
    server = start_redis()
    url = server.url
    db = CountingDatabase({"a": snap("a", 10), "b": snap("b", 1)})
    one = RedisAccountCache(create_client(url), db, size=100, ttl_ms=60_000)
    two = RedisAccountCache(create_client(url), db, size=100, ttl_ms=60_000)
    try:
        for cache in (one, two):
            await cache.start()
            await eventually(lambda c=cache: c.subscriptions == 1)  # type: ignore[misc]
        await two.get_accounts(["a", "b"])
        server.stop()
        await asyncio.sleep(down_s)
        assert "a" in two.local  # the LRU keeps serving (its TTL bounds staleness)
        server = start_redis(server.port)
        await eventually(lambda: two.subscriptions >= 2 and one.subscriptions >= 2, timeout_s=15)
        assert len(two.local) == 0  # messages may have been missed: everything forgotten
        await two.get_accounts(["a", "b"])
        await one.invalidate(["b"])
        await eventually(lambda: "b" not in two.local, timeout_s=1.0)
        assert "a" in two.local
    finally:
        for cache in (one, two):
            await cache.close()
            await cache._client.aclose()
        server.stop()


async def test_close_is_prompt_while_redis_is_down() -> None:
    client = create_client(f"redis://127.0.0.1:{free_port()}/0")
    cache = RedisAccountCache(client, CountingDatabase({}), size=10, ttl_ms=1000)
    await cache.start()
    await asyncio.sleep(0.2)
    await asyncio.wait_for(cache.close(), 2)
    assert cache.subscriptions == 0
    await client.aclose()



async def test_write_back_never_replaces_a_tombstone(clients: Callable[[], aioredis.Redis]) -> None:
    """The invalidation message has not reached the reader yet: Redis alone must refuse."""
    redis = clients()
    db = CountingDatabase({"a": snap("a", 10)})
    reader = RedisAccountCache(redis, db, size=100, ttl_ms=60_000)  # not subscribed
    writer = RedisAccountCache(clients(), CountingDatabase({}), size=100, ttl_ms=60_000)
    await writer.invalidate(["a"])
    await reader.get_accounts(["a"])  # misses Redis (tombstone), reads the database
    assert await redis.get(KEY.format("a")) == TOMBSTONE
    assert len(db.calls) == 1
    await RedisAccountCache(clients(), db, size=100, ttl_ms=60_000).get_accounts(["a"])
    assert len(db.calls) == 2  # a tombstone is a miss, not a hit


async def test_hung_redis_stops_costing_time() -> None:
    """A Redis that accepts connections but never answers: after a few timeouts the
    breaker opens and reads go straight to the database."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)  # the kernel completes connections; nobody ever reads them
        client = create_client(f"redis://127.0.0.1:{hung.getsockname()[1]}/0")
        db = CountingDatabase({"a": snap("a", 1)})
        cache = RedisAccountCache(client, db, size=10, ttl_ms=60_000)
        try:
            for _ in range(5):  # each waits a socket timeout, then reads the database
                await cache.invalidate(["a"])
                assert await cache.get_accounts(["a"]) == {"a": snap("a", 1)}
            started = time.monotonic()
            for _ in range(20):
                await cache.invalidate(["a"])
                assert await cache.get_accounts(["a"]) == {"a": snap("a", 1)}
            assert time.monotonic() - started < 0.2
            assert len(db.calls) == 25
        finally:
            await client.aclose()


CHILD = """
import asyncio, sys, time
from core.models import AccountSnapshot
from server.redis.account_cache import RedisAccountCache
from server.redis.client import create_client

class Database:
    async def get_accounts(self, ids):
        return {i: AccountSnapshot(i, "USD", "active", 10, 0) for i in ids}

async def main():
    cache = RedisAccountCache(create_client(sys.argv[1]), Database(), size=10, ttl_ms=60_000)
    await cache.start()
    while not cache.subscriptions:
        await asyncio.sleep(0.01)
    await cache.get_accounts(["a", "b"])
    print("ready", flush=True)
    while "a" in cache.local:
        await asyncio.sleep(0.005)
    print("dropped", "b" in cache.local, flush=True)
    await cache.close()

asyncio.run(main())
"""


async def test_invalidation_reaches_another_os_process(
        redis_url: str, clients: Callable[[], aioredis.Redis]) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, redis_url, stdout=asyncio.subprocess.PIPE,
        cwd=ROOT)
    try:
        assert child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 10) == b"ready\n"
        cache = RedisAccountCache(clients(), CountingDatabase({}), size=10, ttl_ms=60_000)
        await cache.invalidate(["a"])
        assert await asyncio.wait_for(child.stdout.readline(), 1.0) == b"dropped True\n"
        assert await asyncio.wait_for(child.wait(), 5) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
