"""What one writer does with a batch of queued tasks: apply it in one database
transaction, retrying while the database is unreachable and splitting off the tasks whose
data the database refuses, so that only they fail (core/pipeline/pool.py runs the writers)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from core.kit.rate_limit import Throttle
from core.kit.request_context import log_info_for
from core.kit.spans import NO_SPANS, Spans
from core.ledger.decide import Outcome
from core.ledger.errors import KassaError, Rejected, Unavailable
from core.ledger.models import ErrorBody
from core.ledger.status import FAILED
from core.pipeline.executor import Executed, execute_batch
from core.pipeline.isolation import merged, resolve
from core.pipeline.observer import Observer
from core.pipeline.ports import JournalStore
from core.pipeline.tasks import Task

log = logging.getLogger("kassa.pool")

OUTAGE_WARNING_INTERVAL_S = 5.0  # while the database is down, one line this often


class BatchWriter:
    def __init__(self, store: JournalStore, *, attempts_max: int, backoff_max_s: float,
                 observer: Observer, closing: Callable[[], bool], spans: Spans = NO_SPANS
                 ) -> None:
        self._store = store
        self._attempts_max = attempts_max
        self._backoff_max_s = backoff_max_s
        self._observer = observer
        self._closing = closing  # on shutdown a batch is left to recovery, not retried
        self._outage_warning = Throttle(OUTAGE_WARNING_INTERVAL_S)  # shared by the writers
        self._spans = spans

    async def run(self, number: int, batch: list[Task]) -> Executed | None:
        """Apply the batch and resolve its waiters; what was executed (for the effects),
        or None when it is left to recovery."""
        started = time.monotonic()
        for task in batch:
            log_info_for(task.request_id, log, "[TRANSACTION EXECUTING] Worker: %d | Receipt: %s",
                         number, task.receipt_code)
        with self._spans.batch("kassa.executor.batch", (t.traceparent for t in batch)):
            executed = await self._execute_isolated(batch)
        if executed is None:
            resolve(batch, None)
            return None
        self._observer.batch_executed(len(batch), time.monotonic() - started)
        for task, outcome in zip(executed.tasks, executed.outcomes, strict=True):
            resolve([task], outcome)
        resolve(executed.already_final, None)
        return executed

    async def _execute_isolated(self, batch: list[Task]) -> Executed | None:
        """The batch applied, with the tasks whose data the database refuses split off and
        finished failed; None when it is left to recovery."""
        try:
            return await self._execute_with_backoff(batch)
        except Rejected as exc:
            if len(batch) == 1:
                return await self._fail(batch[0], exc)
            log.warning("[TRANSACTION REJECTED] batch of %d split to isolate refused data",
                        len(batch))
        half = len(batch) // 2
        first = await self._execute_isolated(batch[:half])
        second = await self._execute_isolated(batch[half:])
        if first is None or second is None:
            resolve(batch[:half] if first is None else batch[half:], None)
            return first or second
        return merged(first, second)

    async def _fail(self, task: Task, exc: Rejected) -> Executed | None:
        log.critical("[TRANSACTION REJECTED] journal %d (%s) refused by the database: %s",
                     task.journal_id, task.receipt_code, exc.message)
        error = ErrorBody(exc.code, exc.message)
        try:
            finished = await self._store.mark_failed(task.journal_id, error)
        except KassaError as down:
            log.error("journal %d left to recovery: %s", task.journal_id, down.message)
            return None
        if not finished:
            return Executed([], [], already_final=[task])
        return Executed([task], [Outcome(task.journal_id, task.receipt_code, FAILED, [], error)])

    async def _execute_with_backoff(self, batch: list[Task]) -> Executed | None:
        """Retry while the database is unreachable; on shutdown leave the batch to recovery.
        Refused data (Rejected) is raised for the caller to isolate; an unexpected error
        leaves the batch to recovery at once rather than retrying it forever."""
        delay = 0.05
        while True:
            try:
                return await execute_batch(self._store, batch, self._attempts_max)
            except Rejected:
                raise
            except Unavailable as exc:
                # The database is down: one line every few seconds, not one per retry.
                if self._outage_warning.ready():
                    log.warning("[TRANSACTION ERROR] batch of %d not applied, retrying: %s",
                                len(batch), exc.message)
                if not exc.retriable:
                    return None
            except KassaError as exc:
                log.error("[TRANSACTION ERROR] batch of %d not applied: %r", len(batch), exc)
                if not exc.retriable:
                    return None
            except Exception:  # noqa: BLE001 - a bug: logged loudly, journals stay recoverable
                log.exception("[BUG] batch of %d not applied; left to recovery", len(batch))
                return None
            if self._closing():
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max_s)
