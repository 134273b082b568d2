"""Apply a batch of accepted transactions in one database transaction, exactly once.

The journal rows are locked first (id order) and only those still unfinished are
executed, so a journal claimed twice (a slow process and a recovery sweeper) is
still applied once. Accounts are then locked in id order, which keeps concurrent
executors free of deadlocks; the rare transient conflict is retried.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field

from core.errors import TransientConflict
from core.ledger import BatchDecision, Outcome, decide_batch
from core.models import AccountSnapshot, Transaction
from core.ports import JournalStore

log = logging.getLogger("kassa.executor")


@dataclass(slots=True, eq=False)
class Task:
    """One accepted journal waiting for execution in this process."""

    journal_id: int
    receipt_code: str
    transaction: Transaction
    accepted_at: float  # monotonic seconds
    waiter: asyncio.Future[Outcome | None] | None = None


@dataclass
class Executed:
    """What one committed batch did; accounts carry contacts for notifications."""

    tasks: list[Task]
    outcomes: list[Outcome]
    accounts: dict[str, AccountSnapshot] = field(default_factory=dict)
    already_final: list[Task] = field(default_factory=list)


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def execute_batch(store: JournalStore, tasks: list[Task], attempts_max: int) -> Executed:
    """Run the batch's database transaction, retrying transient conflicts with backoff."""
    for attempt in range(1, attempts_max + 1):
        try:
            return await _execute_once(store, tasks)
        except TransientConflict as exc:
            if attempt == attempts_max:
                raise
            log.warning("[TRANSACTION RETRY] attempt %d of %d: %s", attempt, attempts_max, exc)
            await asyncio.sleep(0.005 * 2**attempt)
    raise AssertionError("unreachable")


async def _execute_once(store: JournalStore, tasks: list[Task]) -> Executed:
    async with store.unit() as unit:
        live = await unit.lock_unfinished(sorted(t.journal_id for t in tasks))
        todo = [t for t in tasks if t.journal_id in live]
        ids = sorted({a for t in todo for a in t.transaction.account_ids})
        accounts = await unit.lock_accounts(ids) if ids else {}
        decision: BatchDecision = decide_batch(
            [(t.journal_id, t.receipt_code, t.transaction) for t in todo], accounts, utc_now_iso()
        )
        if todo:
            await unit.write(decision)
    done = [t for t in tasks if t.journal_id not in live]
    return Executed(todo, decision.outcomes, accounts, done)
