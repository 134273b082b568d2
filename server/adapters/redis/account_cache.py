"""The account cache for pre-validation: a process LRU in front of PostgreSQL, told of
account admin through Redis pub/sub.

Reads: LRU hits first; the misses of concurrent requests are loaded together, one query
per batch (the loader), and stored. `fresh=True` reads past the LRU and stores what it
read: TransactionService does so before it refuses on funds, because a cached balance
may be stale-low (a credit committed by another process) and must never refuse a valid
request. A stale-high balance only lets the request through to the executor, which
decides under row locks.

Balances: after every batch this process commits, `set_balances` writes the balances it
left into the LRU (PostCommit; a dict update, no I/O). Commits of other processes are
seen when the entry expires (`ttl_ms`), at a refusal's fresh read, or when this process
next commits on the account (the balances of every locked account are written, so one
failed overdraft corrects the view).

Facts (existence, currency, status, overdraft limit, contact) change only by account
admin: `invalidate` drops the ids here and publishes them on CHANNEL, and every process
drops them from its LRU as the message arrives, so a PATCH reaches every process's
pre-validation within one pub/sub delivery (milliseconds). A process caches only while
its subscription is confirmed: before the first confirmation and after losing Redis it
reads PostgreSQL and stores nothing (the LRU is cleared when the loss is noticed), and
each (re)confirmation clears the LRU again, since messages may have been missed (redis-py
also reconnects by itself inside `get_message` after a short outage; its renewed
subscription is confirmed the same way). A failed publish is retried every POLL_S; the
TTL is left to bound one that never happens (the admin process died first).

Redis holds no account data: with commits updating the LRU in place, the misses left
are first touches and admin changes, and a Redis tier in front of PostgreSQL did not pay
for them. Measured with real servers, 64 concurrent lookups of 2 accounts, worker CPU per
account: a Redis hit (MGET) 11-16 µs, the batched PostgreSQL read it saves 11-14 µs, a
Redis miss (MGET, SELECT, SET NX write-back) 38-52 µs; the old invalidation after every
commit (tombstones and a publish for 26 accounts) 850-990 µs per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import msgspec
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from core.kit.account_cache import CacheStats, LocalAccountCache
from core.kit.batcher import Batcher
from core.kit.rate_limit import Throttle
from core.ledger.errors import Unavailable
from core.ledger.models import AccountSnapshot
from server.adapters.redis.client import converted_errors

log = logging.getLogger("kassa.account_cache")

CHANNEL = "kassa:accounts:invalidate"
UNSENT_MAX = 10_000  # invalidations kept for retry while Redis is down
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 2.0
POLL_S = 1.0
WARN_INTERVAL_S = 5.0
# Misses of concurrent requests are loaded together; a flush waits at most this long.
LOAD_BATCH_MAX, LOAD_FLUSH_MS, LOAD_IN_FLIGHT_MAX = 256, 0.5, 2

REQUESTS = Counter("kassa_account_cache_requests_total",
                   "Account lookups for pre-validation: hit (LRU), miss (PostgreSQL), "
                   "refresh (PostgreSQL again before refusing on funds)", ["result"])
BALANCE_UPDATES = Counter("kassa_account_cache_balance_updates_total",
                          "Cached balances set by this process's commits")
LOOKUPS = Gauge("kassa_account_cache_lookups",
                "Account lookups by this process since it started (how the workers share them)",
                multiprocess_mode="liveall")
_HIT, _MISS, _REFRESH = (REQUESTS.labels(r) for r in ("hit", "miss", "refresh"))

_encode = msgspec.msgpack.Encoder().encode
_decode_ids = msgspec.msgpack.Decoder(list[str]).decode


class DatabaseReader(Protocol):
    async def get_accounts(self, account_ids: list[str]) -> dict[str, AccountSnapshot]:
        ...


class RedisAccountCache:
    """AccountReader with `set_balances`, `invalidate`, and `start()`/`close()` for the
    subscriber task (which must run for the LRU to be used at all)."""

    def __init__(self, client: aioredis.Redis, database: DatabaseReader, *, size: int,
                 ttl_ms: float) -> None:
        self._client = client
        self._database = database
        self.local = LocalAccountCache(size_max=size, ttl_ms=ttl_ms)
        self.stats = CacheStats()
        self.subscriptions = 0  # confirmed (re)subscriptions, for tests and logs
        self.subscribed = False  # the LRU is used only while True
        self._unsent: dict[str, None] = {}  # an ordered set
        self._task: asyncio.Task[None] | None = None
        self._warn = Throttle(WARN_INTERVAL_S)
        self._loader: Batcher[str, AccountSnapshot | None] = Batcher(
            "account-loader", self._load, batch_size_max=LOAD_BATCH_MAX,
            flush_interval_ms=LOAD_FLUSH_MS, in_flight_max=LOAD_IN_FLIGHT_MAX)

    # ---- reads ------------------------------------------------------------------------

    async def get_accounts(self, account_ids: list[str], *, fresh: bool = False
                           ) -> dict[str, AccountSnapshot]:
        """The accounts that exist; `fresh`: as PostgreSQL has them now, past the LRU."""
        if fresh or not self.subscribed:
            found: dict[str, AccountSnapshot] = {}
            missing = account_ids
        else:
            found, missing = self.local.get_many(account_ids)
        self._count(len(found), 0 if fresh else len(missing), len(missing) if fresh else 0)
        if missing:
            # Concurrent requests' misses share one query.
            self._loader.start()  # idempotent: a cache used before start() still loads
            loaded = await asyncio.gather(*(self._loader.submit(a) for a in missing))
            found |= {s.id: s for s in loaded if s is not None}
        return found

    async def _load(self, account_ids: list[str]) -> list[AccountSnapshot | None]:
        """The loader's sink: one batch of misses from the database, into the LRU."""
        epoch = self.local.epoch
        found = await self._database.get_accounts(list(dict.fromkeys(account_ids)))
        if self.subscribed:  # lost meanwhile: nothing stored; regained: clear() refuses it
            self.local.put_many(found.values(), epoch)
        return [found.get(a) for a in account_ids]

    def _count(self, hits: int, misses: int, refreshes: int) -> None:
        stats = self.stats
        stats.hits += hits
        stats.misses += misses
        stats.refreshes += refreshes
        for counter, n in ((_HIT, hits), (_MISS, misses), (_REFRESH, refreshes)):
            if n:
                counter.inc(n)
        LOOKUPS.set(stats.hits + stats.misses + stats.refreshes)

    # ---- what changes the cached view -------------------------------------------------

    def set_balances(self, balances: Mapping[str, int]) -> None:
        """After a commit of this process: the balances it left (PostCommit's hook)."""
        changed = self.local.set_balances(balances)
        if changed:
            self.stats.balance_updates += changed
            BALANCE_UPDATES.inc(changed)

    async def invalidate(self, account_ids: list[str]) -> None:
        """Drop the accounts here and in every subscribed process (account admin); never
        raises. Kept for a retry when the publish fails (subscribers that lost Redis too
        clear on reconnecting)."""
        self.local.drop(account_ids)
        for account_id in account_ids:
            self._unsent[account_id] = None
        while len(self._unsent) > UNSENT_MAX:  # bounded: the TTL still limits staleness
            del self._unsent[next(iter(self._unsent))]
        ids = list(self._unsent)
        if not ids:
            return
        try:
            async with converted_errors("account invalidate"):
                await self._client.publish(CHANNEL, _encode(ids))
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
        self.subscribed = False

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
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            while True:
                message = await pubsub.get_message(timeout=POLL_S)
                if message is not None:
                    await self._on_message(message)
                elif self._unsent:  # a publish that failed: retried while idle, every POLL_S
                    await self.invalidate([])
        finally:
            self.subscribed = False
            self.local.clear()
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _on_message(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":
            # Redis confirms the first subscription and each one redis-py renews after
            # a reconnect: from now on no message is missed, but some may have been.
            await self._subscribed()
        elif message["type"] == "message":
            try:
                ids = _decode_ids(message["data"])
            except msgspec.DecodeError:
                log.warning("account cache: ignored a malformed invalidation message")
                return
            self.local.drop(ids)

    async def _subscribed(self) -> None:
        self.local.clear()
        self.subscribed = True
        self.subscriptions += 1
        if self.subscriptions > 1:
            log.warning("account cache: subscriber reconnected; local cache cleared")
        if self._unsent:
            await self.invalidate([])

    def _warning(self, message: str, *args: object) -> None:
        if self._warn.ready():
            log.warning(message, *args)
