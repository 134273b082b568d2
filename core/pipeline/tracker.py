"""The status tracker: final statuses in memory first, written to Redis in batches.

Only final statuses are tracked: a `processing` receipt is answered by the database,
which is authoritative, so accepting a request costs the tracker nothing. Reads are
served from memory when the entry is known; anything else falls through the chain
(Redis, receipt service, database) in core/pipeline/queries.py, so any worker process sees
any receipt at once.

Memory is bounded twice: entries older than `memory_ttl_s` are dropped, and past
`entries_max` the oldest go first. Both walk the map from its oldest end (dicts keep
insertion order), so upkeep costs what it removes, not the size of the map. Statuses
waiting for Redis are bounded by the same `entries_max`: while Redis is down the
oldest are dropped with a warning (the database still has them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from itertools import islice, takewhile
from typing import Any

from core.ledger.status import is_final
from core.pipeline.ports import JournalStatus, StatusStore

log = logging.getLogger("kassa.tracker")


class StatusTracker:
    def __init__(
        self,
        store: StatusStore | None,
        *,
        flush_interval_ms: float,
        redis_ttl_s: int,
        memory_ttl_s: int,
        entries_max: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._interval_s = flush_interval_ms / 1000
        self._redis_ttl_s = redis_ttl_s
        self._memory_ttl_s = memory_ttl_s
        self._entries_max = entries_max
        self._clock = clock
        self._entries: dict[str, tuple[JournalStatus, float]] = {}
        self._dirty: dict[str, JournalStatus] = {}
        self.dropped = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def finished(self, records: list[JournalStatus]) -> None:
        """Record the final statuses of one executed batch; Redis gets them on the next flush."""
        now = self._clock()
        entries, dirty = self._entries, self._dirty
        for record in records:
            assert is_final(record.status), "only final statuses are tracked"
            entries[record.receipt_code] = (record, now)
            dirty[record.receipt_code] = record
        self._bound(entries, lambda _: None)
        self._bound(dirty, self._drop_unsent)

    def get(self, code: str) -> JournalStatus | None:
        entry = self._entries.get(code)
        if entry is not None:
            self.hits += 1
            return entry[0]
        self.misses += 1
        return None

    async def flush(self) -> int:
        """Write the pending statuses to Redis in one pipeline; keep them on failure."""
        if self._store is None:
            self._dirty.clear()
            return 0
        if not self._dirty:
            return 0
        batch, self._dirty = self._dirty, {}
        try:
            await self._store.write_statuses(list(batch.values()), self._redis_ttl_s)
        except Exception as exc:  # noqa: BLE001 - Redis down: retry on the next tick
            batch.update(self._dirty)
            self._dirty = batch
            self._bound(self._dirty, self._drop_unsent)
            log.warning("[STATUS TRACKER] Redis write failed, %d statuses kept: %r",
                        len(self._dirty), exc)
            return 0
        log.info("[STATUS TRACKER] Flushed %d status updates to Redis", len(batch))
        return len(batch)

    def cleanup(self) -> int:
        """Forget in-memory entries older than the memory TTL (they stay in Redis)."""
        cutoff = self._clock() - self._memory_ttl_s
        old = [code for code, _ in takewhile(lambda item: item[1][1] < cutoff,
                                             self._entries.items())]
        for code in old:
            del self._entries[code]
        return len(old)

    async def run(self) -> None:
        """Flush every interval until cancelled; the caller flushes once more on shutdown."""
        while True:
            await asyncio.sleep(self._interval_s)
            await self.flush()
            self.cleanup()

    def _bound(self, entries: dict[str, Any], on_drop: Callable[[int], None]) -> None:
        excess = len(entries) - self._entries_max
        if excess > 0:
            for code in list(islice(entries, excess)):
                del entries[code]
            on_drop(excess)

    def _drop_unsent(self, count: int) -> None:
        self.dropped += count
        log.warning("[STATUS TRACKER] %d statuses not sent to Redis: over %d waiting "
                    "(the database has them)", count, self._entries_max)
