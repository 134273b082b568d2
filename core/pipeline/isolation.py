"""When a group's commit fails: isolate the items whose data the database refuses, and
find out whether a commit whose acknowledgement was lost landed.

A group (the accept's, or a writer's batch) commits all or nothing, so one bad item
would fail every client in it. The database says which group failed, not which item:
`bisected` splits the group in halves until the refused items stand alone. A COMMIT
whose connection failed may have landed: `landed` fences the old session and looks the
journals up by receipt code, within a bounded time, and answers as the commit did.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from core.ledger.decide import Outcome
from core.ledger.errors import CommitUnknown, KassaError, OutcomeUnknown, Rejected, Unavailable
from core.ledger.status import PROCESSING
from core.pipeline.executor import Executed
from core.pipeline.ports import ExistingJournal, JournalStore, PendingJournal, RecordedJournal
from core.pipeline.tasks import Task

log = logging.getLogger("kassa.isolation")
T = TypeVar("T")
X = TypeVar("X")
Recorded = int | ExistingJournal | Outcome


async def bisected(items: list[X], run: Callable[[list[X]], Awaitable[Sequence[T]]]
                   ) -> list[T | KassaError]:
    """Run a group in one commit; when the database refuses it (Rejected), split it in
    halves until the refused items stand alone, so a bad item fails only itself: k bad
    items cost about 2k·log2(n) more commits. Once the group is split, a failure of one
    part (the database went away) answers that part only: another part may have landed."""
    try:
        return list(await run(items))
    except Rejected as exc:
        if len(items) == 1:
            log.error("[TRANSACTION REJECTED] the database refused an item: %s", exc.message)
            return [exc]
        log.warning("[TRANSACTION REJECTED] a group of %d is split to isolate refused data",
                    len(items))
    half = len(items) // 2
    return [*await _part(items[:half], run), *await _part(items[half:], run)]


async def _part(items: list[X], run: Callable[[list[X]], Awaitable[Sequence[T]]]
                ) -> list[T | KassaError]:
    try:
        return await bisected(items, run)
    except KassaError as exc:
        return [exc] * len(items)


def merged(first: Executed, second: Executed) -> Executed:
    """Two batches committed one after the other, as one (later account views win)."""
    return Executed(first.tasks + second.tasks, first.outcomes + second.outcomes,
                    first.accounts | second.accounts, first.already_final + second.already_final)


async def landed(store: JournalStore, journals: list[PendingJournal], lost: CommitUnknown,
                 timeout_s: float) -> tuple[list[Recorded | KassaError], Executed]:
    """After a lost COMMIT acknowledgement: the group's answers if it landed (and what it
    executed, for the effects); Unavailable if it did not; OutcomeUnknown if that could
    not be found out within `timeout_s`."""
    log.error("[COMMIT UNKNOWN] group of %d: %s; checking", len(journals), lost.message)
    try:
        async with asyncio.timeout(timeout_s):
            found = await _recorded(store, [j.receipt_code for j in journals], lost.session)
    except TimeoutError:
        log.critical("[COMMIT UNKNOWN] could not tell within %.1fs whether %d journals landed",
                     timeout_s, len(journals))
        raise OutcomeUnknown("the outcome of this request is unknown; retry it with the same "
                             "Idempotency-Key", retry_after_s=1) from lost
    if not found:
        raise Unavailable("the transaction could not be recorded", retry_after_s=1) from lost
    return landed_results(journals, found)


async def _recorded(store: JournalStore, codes: list[str], session: object | None
                    ) -> dict[str, RecordedJournal]:
    delay = 0.02
    while True:  # the caller bounds the time
        try:
            return await store.recorded(codes, session)
        except Unavailable:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


def deduplicated(batch: list[Task]) -> tuple[list[Task], list[Task]]:
    """The batch with each journal once (the first task of it), and the other tasks."""
    seen: set[int] = set()
    unique: list[Task] = []
    twins: list[Task] = []
    for task in batch:
        (twins if task.journal_id in seen else unique).append(task)
        seen.add(task.journal_id)
    return unique, twins


def resolve(tasks: list[Task], outcome: Outcome | None) -> None:
    for task in tasks:
        if task.waiter is not None and not task.waiter.done():
            task.waiter.set_result(outcome)


def landed_results(journals: list[PendingJournal], found: dict[str, RecordedJournal]
                   ) -> tuple[list[Recorded | KassaError], Executed]:
    """The answers of a group found recorded after its commit's acknowledgement was lost:
    an Outcome for a journal applied in it, the id of one recorded pending. A journal not
    found (a repeat of an idempotency key: nothing new was recorded for it) is retriable."""
    results: list[Recorded | KassaError] = []
    now = time.monotonic()
    executed = Executed([], [])
    for journal in journals:
        row = found.get(journal.receipt_code)
        if row is None:
            results.append(Unavailable("retry with the same Idempotency-Key", retry_after_s=1))
        elif row.status == PROCESSING:
            results.append(row.journal_id)
        else:
            outcome = Outcome(row.journal_id, row.receipt_code, row.status, row.entries, row.error)
            executed.tasks.append(Task(row.journal_id, row.receipt_code, journal.transaction,
                                       now, request_id=journal.request_id))
            executed.outcomes.append(outcome)
            results.append(outcome)
    return results, executed
