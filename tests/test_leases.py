"""Leases and bounds of one process's pool against the real PostgreSQL: a journal queued
past its lease is neither claimed by its own sweeper nor run twice in one batch, and the
post-commit effects queue is bounded (a full one drops effects, never the commit)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from core.ledger.decide import Outcome
from core.pipeline.executor import Executed
from core.pipeline.isolation import deduplicated
from core.pipeline.pool import ProcessorPool
from core.pipeline.recovery import RecoverySweeper
from core.pipeline.tasks import Task
from server.adapters.postgres.journals import PgJournalStore
from tests.fixtures.pipeline import balance, pending
from tests.invariants import assert_invariants

pytestmark = pytest.mark.timeout(60)

LEASE_S = 0.2



def make_pool(store: PgJournalStore, executed: list[Executed], *, apply: bool = False,
              effect_queue_max: int = 100) -> ProcessorPool:
    async def effects(batch: Executed) -> None:
        executed.append(batch)

    return ProcessorPool(store, effects, queue_size_max=100, writers=1, batch_max=50,
                         workers=1, attempts_max=3, apply_at_accept=apply,
                         effect_queue_max=effect_queue_max)


async def queued(pool: ProcessorPool, amounts: list[int]) -> list[Task]:
    journals = [pending("deposit", amount, destination="alice") for amount in amounts]
    ids = await pool.record(journals)
    tasks = []
    for journal_id, journal in zip(ids, journals, strict=True):
        assert isinstance(journal_id, int)
        tasks.append(Task(journal_id, journal.receipt_code, journal.transaction, 0.0))
        with pool.admission() as room:
            room.put(tasks[-1])
    return tasks


async def test_queued_past_its_lease_a_journal_stays_ours_and_runs_once(
        db: asyncpg.Pool, pg_dsn: str) -> None:
    store = PgJournalStore(db, lease_s=LEASE_S)
    executed: list[Executed] = []
    pool = make_pool(store, executed)
    sweeper = RecoverySweeper(store, pool, owner="test-owner", lease_s=LEASE_S, interval_s=1)
    await queued(pool, [5, 7])  # the writers are not started: the tasks wait in the queue
    await asyncio.sleep(LEASE_S * 2)
    assert await sweeper.sweep() == 0, "its own queued journals are not claimed again"
    renewed = await db.fetchval("SELECT count(*) FROM journals WHERE lease_expires_at > now()")
    assert renewed == 2, "the sweep renewed the leases of the queued journals"
    other = RecoverySweeper(store, make_pool(store, []), owner="other", lease_s=LEASE_S,
                            interval_s=1)
    assert await other.sweep() == 0, "another process does not take renewed journals"
    pool.start()
    await pool.close(5)
    assert await balance(db, "alice") == 12
    assert sum(len(e.outcomes) for e in executed) == 2
    await assert_invariants(pg_dsn)


async def test_a_journal_is_never_twice_in_one_batch(db: asyncpg.Pool, pg_dsn: str) -> None:
    store = PgJournalStore(db, lease_s=30)
    executed: list[Executed] = []
    pool = make_pool(store, executed)
    (task,) = await queued(pool, [9])
    twin = Task(task.journal_id, task.receipt_code, task.transaction, 0.0,
                asyncio.get_running_loop().create_future())
    with pool.admission() as room:
        room.put(twin)  # e.g. claimed again by a sweeper: both wait in the queue
    pool.start()
    await pool.close(5)
    assert await balance(db, "alice") == 9, "posted once"
    assert [len(e.outcomes) for e in executed] == [1]
    assert twin.waiter is not None and twin.waiter.done()
    await assert_invariants(pg_dsn)


def test_deduplicated_keeps_the_first_task_of_each_journal() -> None:
    tx = pending("deposit", 1, destination="alice").transaction
    a, b, a2 = Task(1, "a", tx, 0.0), Task(2, "b", tx, 0.0), Task(1, "a", tx, 0.0)
    assert deduplicated([a, b, a2]) == ([a, b], [a2])


async def test_a_full_effect_queue_drops_effects_and_keeps_commits(db: asyncpg.Pool,
                                                                   pg_dsn: str) -> None:
    gate = asyncio.Event()
    seen: list[Executed] = []

    async def slow_effects(batch: Executed) -> None:
        await gate.wait()
        seen.append(batch)

    pool = ProcessorPool(PgJournalStore(db, lease_s=30), slow_effects, queue_size_max=100,
                         writers=1, batch_max=50, workers=1, attempts_max=3,
                         apply_at_accept=True, effect_queue_max=1)
    pool.start()
    for amount in (1, 2, 3, 4):
        (result,) = await pool.record([pending("deposit", amount, destination="bob")])
        assert isinstance(result, Outcome) and result.status == "completed"
        await asyncio.sleep(0.01)  # the effects worker takes the first batch and waits
    assert pool.effects_dropped == 2, "one batch in the worker, one queued, two dropped"
    gate.set()
    await pool.close(5)
    assert len(seen) == 2
    assert await balance(db, "bob") == 10, "every commit stands"
    await assert_invariants(pg_dsn)
