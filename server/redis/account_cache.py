"""The account cache for pre-validation: process LRU → Redis → PostgreSQL (AccountReader).

Reads: local hits first, the misses from Redis in one MGET, the rest from the
database reader in one query, written back to Redis (SET NX with a TTL) and the LRU.
Redis is only a fast path: when it fails, reads go to the database and invalidations
are retried later; a request never fails because of Redis.

Invalidation: `invalidate` replaces the Redis entries by short-lived tombstones and
publishes the ids on CHANNEL; every process subscribes and drops them from its LRU.
Tombstones rather than DEL because a reader that fetched the old row just before the
commit would otherwise write it back after the invalidation; SET NX cannot overwrite
a tombstone. A subscriber that loses Redis reconnects with backoff and clears its
whole LRU, since it may have missed messages meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import msgspec
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from core.account_cache import CacheStats, LocalAccountCache
from core.batcher import Batcher
from core.breaker import CircuitBreaker
from core.errors import Unavailable
from core.models import AccountSnapshot
from core.rate_limit import Throttle
from server.redis.client import converted_errors

log = logging.getLogger("kassa.account_cache")

KEY = "kassa:account:{}"
CHANNEL = "kassa:accounts:invalidate"
TOMBSTONE = b""
# Longer than any read that could race an invalidation (the DB query plus the write-back).
TOMBSTONE_MS = 5_000
UNSENT_MAX = 10_000  # invalidations kept for retry while Redis is down
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 2.0
POLL_S = 1.0
BREAKER_FAILURES_MAX, BREAKER_RESET_MS = 5, 1000
WARN_INTERVAL_S = 5.0
# Misses of concurrent requests are loaded together; a flush waits at most this long.
LOAD_BATCH_MAX, LOAD_FLUSH_MS, LOAD_IN_FLIGHT_MAX = 256, 0.5, 2

REQUESTS = Counter("kassa_account_cache_requests_total",
                   "Account lookups for pre-validation, by the tier that answered", ["result"])
HIT_RATE = Gauge("kassa_account_cache_hit_rate",
                 "Account lookups answered by the process LRU or Redis / all lookups",
                 multiprocess_mode="liveall")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(AccountSnapshot).decode
_decode_ids = msgspec.msgpack.Decoder(list[str]).decode


class DatabaseReader(Protocol):
    async def get_accounts(self, account_ids: list[str]) -> dict[str, AccountSnapshot]:
        ...


class RedisAccountCache:
    """AccountReader with `start()`/`close()` for the subscriber task and `invalidate`.

    `redis_ttl_ms` bounds how long Redis can serve a snapshot whose invalidation was lost
    (a process that died between its commit and `invalidate`).
    """

    def __init__(self, client: aioredis.Redis, database: DatabaseReader, *, size: int,
                 ttl_ms: float, redis_ttl_ms: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._database = database
        self._redis_ttl_ms = redis_ttl_ms
        self.local = LocalAccountCache(size_max=size, ttl_ms=ttl_ms, clock=clock)
        self.stats = CacheStats()
        self.subscriptions = 0  # successful (re)subscriptions, for tests and logs
        self._unsent: dict[str, None] = {}  # an ordered set
        self._task: asyncio.Task[None] | None = None
        self._warn = Throttle(WARN_INTERVAL_S)
        self._loader: Batcher[str, AccountSnapshot | None] = Batcher(
            "account-loader", self._load, batch_size_max=LOAD_BATCH_MAX,
            flush_interval_ms=LOAD_FLUSH_MS, in_flight_max=LOAD_IN_FLIGHT_MAX)
        # A hung Redis would cost every request a socket timeout; open, it costs nothing.
        self._breaker = CircuitBreaker("redis_account_cache", failures_max=BREAKER_FAILURES_MAX,
                                       reset_ms=BREAKER_RESET_MS, clock=clock)

    # ---- reads ------------------------------------------------------------------------

    async def get_accounts(self, account_ids: list[str]) -> dict[str, AccountSnapshot]:
        found, missing = self.local.get_many(account_ids)
        if found:
            self._count(len(found), 0, 0)
        if missing:
            # Concurrent requests' misses share one MGET, one query and one write-back.
            self._loader.start()  # idempotent: a cache used before start() still loads
            loaded = await asyncio.gather(*(self._loader.submit(a) for a in missing))
            found |= {s.id: s for s in loaded if s is not None}
        return found

    async def _load(self, account_ids: list[str]) -> list[AccountSnapshot | None]:
        """The loader's sink: one batch of local misses through Redis, then the database."""
        wanted = list(dict.fromkeys(account_ids))
        epoch = self.local.epoch
        found = await self._read_redis(wanted)
        self.local.put_many(found.values(), epoch)
        redis_hits = sum(1 for a in account_ids if a in found)
        rest = [a for a in wanted if a not in found]
        if rest:
            from_db = await self._database.get_accounts(rest)
            found |= from_db
            await self._write_back(self.local.put_many(from_db.values(), epoch))
        self._count(0, redis_hits, len(account_ids) - redis_hits)
        return [found.get(a) for a in account_ids]

    async def _read_redis(self, account_ids: list[str]) -> dict[str, AccountSnapshot]:
        try:
            async with self._redis("account cache read"):
                raws = await self._client.mget([KEY.format(a) for a in account_ids])
        except Unavailable as exc:
            self._warning("account cache: Redis read failed, reading PostgreSQL: %s", exc)
            return {}
        found = {}
        for account_id, raw in zip(account_ids, raws, strict=True):
            if isinstance(raw, bytes) and raw:  # None: not cached; TOMBSTONE: just invalidated
                with contextlib.suppress(msgspec.DecodeError):
                    found[account_id] = _decode(raw)
        return found

    async def _write_back(self, snapshots: list[AccountSnapshot]) -> None:
        if not snapshots:
            return
        try:
            async with self._redis("account cache write"):
                pipe = self._client.pipeline(transaction=False)
                for s in snapshots:
                    # NX: never over a tombstone, so a read older than an invalidation is lost.
                    pipe.set(KEY.format(s.id), _encode(s), px=self._redis_ttl_ms, nx=True)
                await pipe.execute()
        except Unavailable as exc:
            self._warning("account cache: Redis write failed: %s", exc)

    @contextlib.asynccontextmanager
    async def _redis(self, what: str) -> AsyncIterator[None]:
        """Redis errors as Unavailable, and no call at all while the breaker is open."""
        if not self._breaker.allow():
            raise Unavailable(f"redis skipped ({what}): circuit breaker open")
        try:
            async with converted_errors(what):
                yield
        except BaseException:
            # Cancellation too: a half-open breaker's trial must end, or it stays half open.
            self._breaker.record_failure()
            raise
        self._breaker.record_success()

    def _count(self, local_hits: int, redis_hits: int, misses: int) -> None:
        stats = self.stats
        stats.local_hits += local_hits
        stats.redis_hits += redis_hits
        stats.misses += misses
        for result, n in (("local_hit", local_hits), ("redis_hit", redis_hits), ("miss", misses)):
            if n:
                REQUESTS.labels(result).inc(n)
        HIT_RATE.set(stats.hit_rate)

    # ---- invalidation -----------------------------------------------------------------

    async def invalidate(self, account_ids: list[str]) -> None:
        """Drop the accounts here, in Redis and in every subscribed process; never raises."""
        self.local.drop(account_ids)
        for account_id in account_ids:
            self._unsent[account_id] = None
        while len(self._unsent) > UNSENT_MAX:  # bounded: the Redis TTL still limits staleness
            del self._unsent[next(iter(self._unsent))]
        ids = list(self._unsent)
        if not ids:
            return
        try:
            async with self._redis("account invalidate"):
                pipe = self._client.pipeline(transaction=False)
                for account_id in ids:
                    pipe.set(KEY.format(account_id), TOMBSTONE, px=TOMBSTONE_MS)
                pipe.publish(CHANNEL, _encode(ids))
                await pipe.execute()
        except Unavailable as exc:
            self._warning("account cache: invalidation kept for retry (%d ids): %s", len(ids), exc)
            return
        for account_id in ids:
            self._unsent.pop(account_id, None)

    # ---- the subscriber task ----------------------------------------------------------

    async def start(self) -> None:
        assert self._task is None, "started twice"
        self._task = asyncio.create_task(self._subscribe_forever(), name="account-cache")

    async def close(self) -> None:
        await self._loader.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _subscribe_forever(self) -> None:
        delay = BACKOFF_MIN_S
        while True:
            before = self.subscriptions
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                self._warning("account cache: subscriber lost Redis, retrying: %r", exc)
            except Exception:  # noqa: BLE001 - a bug here must not end invalidation for good
                log.exception("account cache: subscriber failed; restarting")
            # Back off while Redis stays down; start small again after it was reachable.
            delay = BACKOFF_MIN_S if self.subscriptions > before else min(delay * 2, BACKOFF_MAX_S)
            await asyncio.sleep(delay)

    async def _listen(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL)
            assert pubsub.connection is not None
            # redis-py may reconnect and resubscribe by itself inside get_message; this
            # callback (run after its resubscription) sees those reconnects too.
            pubsub.connection.register_connect_callback(self._on_reconnect)
            await self._subscribed()
            while True:
                message = await pubsub.get_message(timeout=POLL_S)
                if message is not None:
                    self._on_message(message["data"])
        finally:
            if pubsub.connection is not None:
                pubsub.connection.deregister_connect_callback(self._on_reconnect)
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _subscribed(self) -> None:
        # Messages may have been missed while not subscribed: forget everything.
        self.local.clear()
        self.subscriptions += 1
        if self.subscriptions > 1:
            log.warning("account cache: subscriber reconnected; local cache cleared")
        if self._unsent:
            await self.invalidate([])

    async def _on_reconnect(self, connection: object) -> None:
        await self._subscribed()

    def _on_message(self, data: bytes) -> None:
        try:
            ids = _decode_ids(data)
        except msgspec.DecodeError:
            log.warning("account cache: ignored a malformed invalidation message")
            return
        self.local.drop(ids)

    def _warning(self, message: str, *args: object) -> None:
        if self._warn.ready():
            log.warning(message, *args)
