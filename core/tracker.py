"""The status tracker: statuses in memory first, written to Redis in batches.

Reads are served from memory when the entry is final or fresh; anything else falls
through the chain (Redis, receipt service, database) in core/queries.py, so any
worker process sees any receipt at once. Statuses only move forward.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from core.models import ErrorBody
from core.ports import JournalStatus, StatusStore
from core.status import can_move, is_final

log = logging.getLogger("kassa.tracker")

# A non-final entry older than this may have moved on in another process (recovery).
FRESH_S = 2.0


class StatusTracker:
    def __init__(
        self,
        store: StatusStore | None,
        *,
        flush_interval_ms: float,
        redis_ttl_s: int,
        memory_ttl_s: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._interval_s = flush_interval_ms / 1000
        self._redis_ttl_s = redis_ttl_s
        self._memory_ttl_s = memory_ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[JournalStatus, float]] = {}
        self._dirty: dict[str, JournalStatus] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def set(self, code: str, status: str, error: ErrorBody | None, updated_at: str) -> bool:
        """Record a status if it moves forward; returns whether it did."""
        current = self._entries.get(code)
        if current is not None and not can_move(current[0].status, status):
            return False
        record = JournalStatus(code, status, error, updated_at)
        self._entries[code] = (record, self._clock())
        self._dirty[code] = record
        return True

    def get(self, code: str) -> JournalStatus | None:
        entry = self._entries.get(code)
        if entry is not None and (is_final(entry[0].status) or self._clock() - entry[1] < FRESH_S):
            self.hits += 1
            return entry[0]
        self.misses += 1
        return None

    async def flush(self) -> int:
        """Write the dirty statuses to Redis in one pipeline; keep them dirty on failure."""
        if self._store is None:
            self._dirty.clear()
            return 0
        if not self._dirty:
            return 0
        batch, self._dirty = self._dirty, {}
        try:
            await self._store.write_statuses(list(batch.values()), self._redis_ttl_s)
        except Exception as exc:  # noqa: BLE001 - Redis down: retry on the next tick
            for code, record in batch.items():
                self._dirty.setdefault(code, record)
            log.warning("[STATUS TRACKER] Redis write failed, %d statuses kept: %r", len(batch), exc)
            return 0
        log.info("[STATUS TRACKER] Flushed %d status updates to Redis", len(batch))
        return len(batch)

    def cleanup(self) -> int:
        """Forget in-memory entries older than the memory TTL (they stay in Redis)."""
        cutoff = self._clock() - self._memory_ttl_s
        old = [code for code, (_, at) in self._entries.items() if at < cutoff]
        for code in old:
            del self._entries[code]
        return len(old)

    async def run(self) -> None:
        """Flush every interval until cancelled; the caller flushes once more on shutdown."""
        while True:
            await asyncio.sleep(self._interval_s)
            await self.flush()
            self.cleanup()
