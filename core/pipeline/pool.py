"""The processor pool of one process: the accept batcher's sink, a bounded queue, a few
batch writers, and many workers for post-commit effects.

New journals reach `record` in groups. While the writers have no backlog, a group is
decided and posted in its own commit (apply at accept: one commit per transaction);
otherwise it is recorded pending and its tasks are queued for the writers, which also
run what the recovery sweeper claims. Capacity is reserved before a request is made
durable and used after (`with pool.admission(n) as room: ... room.put(task)`), so a full queue refuses (503) before anything is written and an
accepted task is never dropped. Writers take up to `batch_max` queued tasks and apply
them in one database transaction (`batch_max=1` is the one-commit-per-transaction
design, kept as a baseline). Effects after commit (status, receipt registration,
notifications, cached balances) go to `workers` coroutines, through a bounded queue:
when it is full a batch's effects are dropped and counted (best effort; the commit stands).

Failures are isolated. A group or batch whose data the database refuses (Rejected) is
split until the refused items stand alone: only they fail (400 at accept; a queued
journal is finished `failed`). A commit whose acknowledgement was lost (CommitUnknown) is
checked on another connection within `commit_check_timeout_s`: landed → the normal
answers; not landed → Unavailable; cannot tell → OutcomeUnknown. A journal is never twice
in one batch, and the journals this process holds are not claimed by its own sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from core.kit.spans import NO_SPANS, Spans
from core.ledger.errors import CommitUnknown, KassaError, Overloaded
from core.ledger.linked import is_linked
from core.pipeline.effect_queue import EffectQueue, Effects
from core.pipeline.executor import Executed, apply_pending
from core.pipeline.isolation import Recorded, bisected, deduplicated, landed, resolve
from core.pipeline.observer import NullObserver, Observer
from core.pipeline.ports import JournalStore, PendingJournal
from core.pipeline.tasks import Task
from core.pipeline.writers import BatchWriter

log = logging.getLogger("kassa.pool")


class Admission:
    """Room reserved in the pool's queue for tasks being made durable (reserve and release
    as one context manager, so that no path can forget its half): `put` queues a task in
    one unit of it and never refuses; `__exit__` gives back the units not put, also on an
    exception or a cancellation. An item that ends without a task (refused, applied in its
    accept commit, a replay) keeps its unit until the block ends."""

    __slots__ = ("_pool", "left")

    def __init__(self, pool: ProcessorPool, n: int) -> None:
        self._pool = pool
        self.left = n  # units neither put nor given back

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.left:
            self._pool._release(self.left)
            self.left = 0

    def put(self, task: Task) -> None:
        """Queue a task in a unit of this room."""
        assert self.left > 0, "more tasks put than room was reserved for"
        self.left -= 1
        self._pool._put_reserved(task)


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
        effect_queue_max: int = 10_000,
        commit_check_timeout_s: float = 2.0,
        spans: Spans = NO_SPANS,
    ) -> None:
        self._store = store
        self._capacity = queue_size_max
        self._writers_n = writers
        self._batch_max = batch_max
        self._workers_n = workers
        self._attempts_max = attempts_max
        self._apply_at_accept = apply_at_accept
        self._observer = observer or NullObserver()
        self._queue: asyncio.Queue[Task] = asyncio.Queue()
        self._effect_queue = EffectQueue(effects, effect_queue_max)
        self._batch_writer = BatchWriter(store, attempts_max=attempts_max,
                                         backoff_max_s=retry_backoff_max_s,
                                         observer=self._observer, closing=lambda: self._closing,
                                         spans=spans)
        self._spans = spans
        self._commit_check_s = commit_check_timeout_s
        self._held: dict[int, int] = {}  # journal id → tasks queued or running here
        self._reserved = 0
        self._busy = 0
        self._busy_tasks = 0
        self._refused = 0
        self._refusal_logged_at = 0.0
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def effects_dropped(self) -> int:
        """Batches whose post-commit effects found the effect queue full."""
        return self._effect_queue.dropped

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

    def admission(self, n: int = 1) -> Admission:
        """Room for n tasks about to be made durable, or Overloaded at once; used as
        `with pool.admission(n) as room:`, each `room.put(task)` queues one task in it and
        leaving the block gives back what was not put, whatever the way out."""
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
        return Admission(self, n)

    def _release(self, n: int) -> None:
        assert self._reserved >= n
        self._reserved -= n

    def _put_reserved(self, task: Task) -> None:
        self._reserved -= 1
        self._hold(task)
        self._queue.put_nowait(task)
        self._report()

    def try_put(self, task: Task) -> bool:
        """Queue a recovered task if there is room (no reservation); one this process
        already holds is not queued twice."""
        if task.journal_id in self._held:
            return True
        if not self.has_room:
            return False
        self._hold(task)
        self._queue.put_nowait(task)
        return True

    @property
    def held(self) -> list[int]:
        """The journals queued or running in this process (their leases are ours)."""
        return list(self._held)

    def _hold(self, task: Task) -> None:
        self._held[task.journal_id] = self._held.get(task.journal_id, 0) + 1

    def _unhold(self, task: Task) -> None:
        left = self._held[task.journal_id] - 1
        if left:
            self._held[task.journal_id] = left
        else:
            del self._held[task.journal_id]

    # ---- recording new journals (the accept batcher's sink) ---------------------------

    async def record(self, journals: list[PendingJournal]) -> Sequence[Recorded | KassaError]:
        """Record a group of new journals in one commit: applied at once while the writers
        are idle (an Outcome each: one commit and one journal write per transaction), or
        as pending journals (ids) for the writers to apply, while they have a backlog.
        Items whose data the database refuses get Rejected; the others are recorded."""
        return await bisected(journals, self._record_group)

    async def _record_group(self, journals: list[PendingJournal]
                            ) -> Sequence[Recorded | KassaError]:
        started = time.monotonic()
        results: Sequence[Recorded | KassaError]
        try:
            # Holds and the journals naming one are applied by the writers, which lock
            # the named journals too; a group holding one is recorded pending whole.
            if not (self._apply_at_accept and self.backlog == 0) or any(
                    is_linked(j.transaction) for j in journals):
                return await self._store.insert_pending(journals)
            with self._spans.batch("kassa.executor.batch", (j.traceparent for j in journals)):
                results, executed = await apply_pending(self._store, journals,
                                                        self._attempts_max)
            if executed.tasks:
                self._observer.batch_executed(len(executed.tasks), time.monotonic() - started)
        except CommitUnknown as lost:
            results, executed = await landed(self._store, journals, lost, self._commit_check_s)
        if executed.tasks:
            self._post_effects(executed)
        return results

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._tasks += [asyncio.create_task(self._writer(n), name=f"writer-{n}")
                        for n in range(self._writers_n)]
        self._tasks += [asyncio.create_task(self._effect_queue.work(), name=f"effects-{n}")
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
                unique, twins = deduplicated(batch)
                await self._run_batch(number, unique)
            finally:
                resolve(twins, None)  # a twin's journal ran once, in this batch
                self._busy_tasks -= len(batch)
                self._busy -= 1
                self._report()
                for task in batch:
                    self._unhold(task)
                    self._queue.task_done()

    async def _run_batch(self, number: int, batch: list[Task]) -> None:
        executed = await self._batch_writer.run(number, batch)
        if executed is not None:
            self._post_effects(executed)

    def _post_effects(self, executed: Executed) -> None:
        self._effect_queue.post(executed)

    def _report(self) -> None:
        self._observer.queue_changed(self._queue.qsize(), self._capacity, self._busy, self._writers_n)

