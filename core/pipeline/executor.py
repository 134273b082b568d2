"""Apply a batch of transactions in one database transaction, exactly once.

Two ways in. `apply_pending` records new journals already decided: accounts locked,
decided, journals inserted finished and posted, all in the accept's group commit, so
a transaction costs one commit and its journal row is written once. `execute_batch`
applies journals recorded earlier as pending (queued ones, or recovered after a
crash): the journal rows are locked first (id order) and only those still unfinished
are executed, so a journal claimed twice (a slow process and a recovery sweeper) is
still applied once. Accounts are always locked in id order, which keeps concurrent
writers free of deadlocks; the rare transient conflict is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from core.kit.clock import utc_now_iso
from core.ledger.decide import BatchDecision, Outcome, decide_batch
from core.ledger.errors import TransientConflict
from core.ledger.linked import Target, decide_with_linked, is_linked
from core.ledger.models import AccountSnapshot
from core.pipeline.ports import ExistingJournal, JournalStore, PendingJournal
from core.pipeline.tasks import Task

log = logging.getLogger("kassa.executor")
T = TypeVar("T")


@dataclass
class Executed:
    """What one committed batch did; accounts carry contacts for notifications."""

    tasks: list[Task]
    outcomes: list[Outcome]
    accounts: dict[str, AccountSnapshot] = field(default_factory=dict)
    already_final: list[Task] = field(default_factory=list)
    # Journals named by this batch's captures, voids and reversals, as they now stand.
    targets: list[Target] = field(default_factory=list)


async def execute_batch(store: JournalStore, tasks: list[Task], attempts_max: int) -> Executed:
    """Run the batch's database transaction, retrying transient conflicts with backoff."""
    return await _retried(lambda: _execute_once(store, tasks), attempts_max)


Applied = tuple[list["Outcome | ExistingJournal"], Executed]


async def apply_pending(store: JournalStore, journals: list[PendingJournal],
                        attempts_max: int) -> Applied:
    """Record and apply new journals in one transaction: per journal its outcome, or the
    journal its idempotency key already names; and what was executed, for the effects."""
    return await _retried(lambda: _apply_once(store, journals), attempts_max)


async def _retried(run: Callable[[], Awaitable[T]], attempts_max: int) -> T:
    for attempt in range(1, attempts_max + 1):
        try:
            return await run()
        except TransientConflict as exc:
            if attempt == attempts_max:
                raise
            log.warning("[TRANSACTION RETRY] attempt %d of %d: %s", attempt, attempts_max, exc)
            await asyncio.sleep(0.005 * 2**attempt)
    raise AssertionError("unreachable")


async def _apply_once(store: JournalStore, journals: list[PendingJournal]) -> Applied:
    async with store.unit() as unit:
        keyed = [j for j in journals if j.idempotency_key is not None]
        found = await unit.existing(keyed) if keyed else {}
        fresh, repeats = split_repeats(journals, found)
        account_ids = sorted({a for j in fresh for a in j.transaction.account_ids})
        accounts, ids = await unit.lock_for_new(account_ids, len(fresh))
        decision = decide_batch([(i, j.receipt_code, j.transaction) for i, j in zip(ids, fresh, strict=True)],
                                accounts, utc_now_iso(), recorded_with_decision=True)
        await unit.insert_finished(fresh, ids, decision)
    outcomes = dict(zip((j.receipt_code for j in fresh), decision.outcomes, strict=True))
    for first, repeat in repeats:  # a key sent twice in one batch: the first one stands
        found[_key(repeat)] = _existing_of(first, outcomes[first.receipt_code])
    now = time.monotonic()
    tasks = [Task(o.journal_id, o.receipt_code, j.transaction, now, request_id=j.request_id,
                  traceparent=j.traceparent)
             for j, o in zip(fresh, decision.outcomes, strict=True)]
    results: list[Outcome | ExistingJournal] = [
        outcomes[j.receipt_code] if j.receipt_code in outcomes else found[_key(j)] for j in journals]
    return results, Executed(tasks, decision.outcomes, accounts)


def split_repeats(journals: list[PendingJournal], found: dict[tuple[str, str], ExistingJournal]
                  ) -> tuple[list[PendingJournal], list[tuple[PendingJournal, PendingJournal]]]:
    """The journals to record, and (first, repeat) pairs of keys sent twice in one batch."""
    fresh: list[PendingJournal] = []
    firsts: dict[tuple[str, str], PendingJournal] = {}
    repeats = []
    for journal in journals:
        if journal.idempotency_key is None:
            fresh.append(journal)
            continue
        key = _key(journal)
        if key in found:
            continue
        if key in firsts:
            repeats.append((firsts[key], journal))
            continue
        firsts[key] = journal
        fresh.append(journal)
    return fresh, repeats


def _key(journal: PendingJournal) -> tuple[str, str]:
    assert journal.idempotency_scope is not None and journal.idempotency_key is not None
    return journal.idempotency_scope, journal.idempotency_key


def _existing_of(first: PendingJournal, outcome: Outcome) -> ExistingJournal:
    return ExistingJournal(outcome.journal_id, first.receipt_code, first.request_hash, first.mode,
                           outcome.status, first.accept_time_us)


async def _execute_once(store: JournalStore, tasks: list[Task]) -> Executed:
    async with store.unit() as unit:
        live = await unit.lock_unfinished(sorted(t.journal_id for t in tasks))
        todo = [t for t in tasks if t.journal_id in live]
        ids = sorted({a for t in todo for a in t.transaction.account_ids})
        accounts = await unit.lock_accounts(ids) if ids else {}
        plain = [t for t in todo if not is_linked(t.transaction)]
        linked = [t for t in todo if is_linked(t.transaction)]
        now = utc_now_iso()
        decision: BatchDecision = decide_batch(
            [(t.journal_id, t.receipt_code, t.transaction) for t in plain], accounts, now)
        if linked:
            named = sorted({t.transaction.target for t in linked if t.transaction.target})
            targets = await unit.lock_targets(named) if named else {}
            decision = decide_with_linked(
                decision, [(t.journal_id, t.receipt_code, t.transaction) for t in linked],
                accounts, targets, now)
            todo = plain + linked  # the order of the decision's outcomes
        if todo:
            await unit.write(decision)
        if decision.targets:
            await unit.update_targets(decision.targets)
    done = [t for t in tasks if t.journal_id not in live]
    return Executed(todo, decision.outcomes, accounts, done, decision.targets)
