"""The processor pool of one process: the accept batcher's sink, a bounded queue, a few
batch writers, and the seed's many workers for post-commit effects.

New journals reach `record` in groups. While the writers have no backlog, a group is
decided and posted in its own commit (apply at accept: one commit per transaction);
otherwise it is recorded pending and its tasks are queued for the writers, which also
run what the recovery sweeper claims. Capacity is reserved before a request is made
durable and used after, so a full queue refuses (503) before anything is written and an
accepted task is never dropped. Writers take up to `batch_max` queued tasks and apply
them in one database transaction (`batch_max=1` is the seed's one-commit-per-transaction
design, kept as a baseline). Effects after commit (status, receipt registration,
notifications, cached balances) go to `workers` coroutines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from core.errors import Overloaded
from core.executor import Executed, Task, apply_pending, execute_batch
from core.ledger import Outcome
from core.observer import NullObserver, Observer
from core.ports import ExistingJournal, JournalStore, PendingJournal

log = logging.getLogger("kassa.pool")

Effects = Callable[[Executed], Awaitable[None]]


class ProcessorPool:
    def __init__(
        self,
        store: JournalStore,
        effects: Effects,
        *,
        queue_size_max: int,
        writers: int,
        batch_max: int,
        workers: int,
        attempts_max: int,
        retry_backoff_max_s: float = 2.0,
        apply_at_accept: bool = False,
        observer: Observer | None = None,
    ) -> None:
        self._store = store
        self._effects = effects
        self._capacity = queue_size_max
        self._writers_n = writers
        self._batch_max = batch_max
        self._workers_n = workers
        self._attempts_max = attempts_max
        self._backoff_max_s = retry_backoff_max_s
        self._apply_at_accept = apply_at_accept
        self._observer = observer or NullObserver()
        self._queue: asyncio.Queue[Task] = asyncio.Queue()
        self._effect_queue: asyncio.Queue[Executed] = asyncio.Queue()
        self._reserved = 0
        self._busy = 0
        self._busy_tasks = 0
        self._refused = 0
        self._refusal_logged_at = 0.0
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []

    # ---- admission ------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        return self._queue.qsize() + self._busy_tasks

    @property
    def room(self) -> int:
        if self._closing:
            return 0
        return self._capacity - self._queue.qsize() - self._reserved

    @property
    def has_room(self) -> bool:
        return self.room > 0

    def reserve(self, n: int = 1) -> None:
        """Hold room for n tasks about to be made durable, or refuse at once."""
        if self._closing:
            raise Overloaded("shutting down", retry_after_s=1)
        if self._queue.qsize() + self._reserved + n > self._capacity:
            self._refused += n
            now = time.monotonic()
            if now - self._refusal_logged_at >= 1.0:  # one line a second, not one per request
                log.critical("[CRITICAL] processor queue full (%d): refused %d requests",
                             self._capacity, self._refused)
                self._refusal_logged_at, self._refused = now, 0
            raise Overloaded("the processor queue is full", retry_after_s=1)
        self._reserved += n

    def release(self, n: int = 1) -> None:
        assert self._reserved >= n
        self._reserved -= n

    def put(self, task: Task) -> None:
        """Queue a task whose room was reserved; never refuses."""
        self.release()
        self._queue.put_nowait(task)
        self._report()

    def try_put(self, task: Task) -> bool:
        """Queue a recovered task if there is room (no reservation)."""
        if not self.has_room:
            return False
        self._queue.put_nowait(task)
        return True

    # ---- recording new journals (the accept batcher's sink) ---------------------------

    async def record(self, journals: list[PendingJournal]
                     ) -> Sequence[int | ExistingJournal | Outcome]:
        """Record a group of new journals in one commit: applied at once while the writers
        are idle (an Outcome each: one commit and one journal write per transaction), or
        as pending journals (ids) for the writers to apply, while they have a backlog."""
        if not (self._apply_at_accept and self.backlog == 0):
            return await self._store.insert_pending(journals)
        started = time.monotonic()
        results, executed = await apply_pending(self._store, journals, self._attempts_max)
        if executed.tasks:
            self._observer.batch_executed(len(executed.tasks), time.monotonic() - started)
            self._effect_queue.put_nowait(executed)
        return results

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._tasks += [asyncio.create_task(self._writer(n), name=f"writer-{n}")
                        for n in range(self._writers_n)]
        self._tasks += [asyncio.create_task(self._effect_worker(), name=f"effects-{n}")
                        for n in range(self._workers_n)]

    async def close(self, timeout_s: float) -> None:
        """Stop admitting, finish queued and in-flight work within the timeout, then stop.

        Whatever is left stays `processing` in the database with its lease, and the
        recovery sweeper of a live process (or of the next start) executes it.
        """
        self._closing = True
        try:
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
                await self._effect_queue.join()
        except TimeoutError:
            log.warning("shutdown: %d queued tasks left to recovery", self._queue.qsize())
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- the work -------------------------------------------------------------------

    async def _writer(self, number: int) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._busy_tasks += len(batch)
            self._busy += 1
            self._report()
            try:
                await self._run_batch(number, batch)
            finally:
                self._busy_tasks -= len(batch)
                self._busy -= 1
                self._report()
                for _ in batch:
                    self._queue.task_done()

    async def _run_batch(self, number: int, batch: list[Task]) -> None:
        started = time.monotonic()
        for task in batch:
            log.info("[TRANSACTION EXECUTING] Worker: %d | Receipt: %s", number, task.receipt_code)
        executed = await self._execute_with_backoff(batch)
        if executed is None:
            return
        self._observer.batch_executed(len(batch), time.monotonic() - started)
        for task, outcome in zip(executed.tasks, executed.outcomes, strict=True):
            if task.waiter is not None and not task.waiter.done():
                task.waiter.set_result(outcome)
        for task in executed.already_final:
            if task.waiter is not None and not task.waiter.done():
                task.waiter.set_result(None)
        self._effect_queue.put_nowait(executed)

    async def _execute_with_backoff(self, batch: list[Task]) -> Executed | None:
        """Retry while the database is unreachable; on shutdown leave the batch to recovery."""
        delay = 0.05
        while True:
            try:
                return await execute_batch(self._store, batch, self._attempts_max)
            except Exception as exc:  # noqa: BLE001 - logged; the journals stay recoverable
                log.error("[TRANSACTION ERROR] batch of %d not applied: %r", len(batch), exc)
                if self._closing:
                    for task in batch:
                        if task.waiter is not None and not task.waiter.done():
                            task.waiter.set_result(None)
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max_s)

    async def _effect_worker(self) -> None:
        while True:
            executed = await self._effect_queue.get()
            try:
                await self._effects(executed)
            except Exception:  # noqa: BLE001 - effects are best effort; the commit stands
                log.exception("post-commit effects failed")
            finally:
                self._effect_queue.task_done()

    def _report(self) -> None:
        self._observer.queue_changed(self._queue.qsize(), self._capacity, self._busy, self._writers_n)
