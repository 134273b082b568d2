"""Post-commit effects (status, receipt registration, notifications, cached balances) run
by a few worker coroutines behind a bounded queue. Best effort: when the queue is full a
batch's effects are dropped and counted, and the commit stands."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from core.pipeline.executor import Executed

log = logging.getLogger("kassa.pool")

Effects = Callable[[Executed], Awaitable[None]]


class EffectQueue:
    def __init__(self, effects: Effects, size_max: int) -> None:
        self._effects = effects
        self._queue: asyncio.Queue[Executed] = asyncio.Queue(size_max)
        self.dropped = 0  # batches whose effects found the queue full
        self._dropped_logged_at = 0.0

    def post(self, executed: Executed) -> None:
        try:
            self._queue.put_nowait(executed)
        except asyncio.QueueFull:
            self.dropped += 1
            now = time.monotonic()
            if now - self._dropped_logged_at >= 1.0:  # one line a second, not one per batch
                log.warning("effect queue full (%d): post-commit effects of %d batches dropped "
                            "so far", self._queue.maxsize, self.dropped)
                self._dropped_logged_at = now

    async def join(self) -> None:
        await self._queue.join()

    async def work(self) -> None:
        """One worker: run queued effects until cancelled."""
        while True:
            executed = await self._queue.get()
            try:
                await self._effects(executed)
            except Exception:  # noqa: BLE001 - effects are best effort; the commit stands
                log.exception("post-commit effects failed")
            finally:
                self._queue.task_done()
