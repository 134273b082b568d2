"""Failure isolation against the real PostgreSQL: one item whose data the database refuses
(a NUL in text, a constraint) fails only itself, in the accept's group commit and in a
writer's batch, and a writer is never stuck on it."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import pytest

from core.ledger.decide import Outcome
from core.ledger.errors import Rejected
from core.pipeline.executor import Executed
from core.pipeline.pool import ProcessorPool
from core.pipeline.ports import PendingJournal
from core.pipeline.tasks import Task
from server.adapters.postgres.journals import PgJournalStore
from tests.fixtures.pipeline import balance, pending
from tests.invariants import assert_invariants

pytestmark = pytest.mark.timeout(60)



def make_pool(db: asyncpg.Pool, executed: list[Executed], *, apply: bool) -> ProcessorPool:
    async def effects(batch: Executed) -> None:
        executed.append(batch)

    return ProcessorPool(PgJournalStore(db, lease_s=30), effects, queue_size_max=100, writers=1,
                         batch_max=50, workers=1, attempts_max=3, apply_at_accept=apply)


def with_nul(journal: PendingJournal) -> PendingJournal:
    tx = msgspec.structs.replace(journal.transaction, description="bad\x00text")
    return msgspec.structs.replace(journal, transaction=tx)


def group() -> list[PendingJournal]:
    return [pending("deposit", 10, destination="alice"),
            pending("deposit", 20, destination="bob"),
            with_nul(pending("deposit", 40, destination="alice")),
            pending("deposit", 5, destination="alice"),
            pending("transfer", 3, source="alice", destination="bob")]


async def test_a_nul_fails_only_its_item_in_the_group_commit(db: asyncpg.Pool,
                                                             pg_dsn: str) -> None:
    executed: list[Executed] = []
    pool = make_pool(db, executed, apply=True)
    pool.start()
    results = await pool.record(group())
    assert isinstance(results[2], Rejected) and results[2].code == "invalid_request"
    assert "\x00" not in results[2].message
    others = [r for i, r in enumerate(results) if i != 2]
    assert all(isinstance(r, Outcome) and r.status == "completed" for r in others)
    assert (await balance(db, "alice"), await balance(db, "bob")) == (12, 23)
    assert await db.fetchval("SELECT count(*) FROM journals") == 4
    await pool.close(5)
    assert sum(len(e.outcomes) for e in executed) == 4
    await assert_invariants(pg_dsn)


async def test_a_nul_fails_only_its_item_when_recorded_pending(db: asyncpg.Pool) -> None:
    pool = make_pool(db, [], apply=False)
    results = await pool.record(group())
    assert isinstance(results[2], Rejected)
    assert all(isinstance(r, int) for i, r in enumerate(results) if i != 2)
    assert await db.fetchval("SELECT count(*) FROM journals WHERE status = 'processing'") == 4


async def test_a_constraint_violation_fails_only_its_item_in_the_group_commit(
        db: asyncpg.Pool, pg_dsn: str) -> None:
    await db.execute("ALTER TABLE ledgers ADD CONSTRAINT test_no_13 CHECK (amount <> 13)")
    pool = make_pool(db, [], apply=True)
    results = await pool.record([pending("deposit", 7, destination="alice"),
                                 pending("deposit", 13, destination="bob"),
                                 pending("deposit", 8, destination="bob")])
    assert isinstance(results[1], Rejected)
    assert isinstance(results[0], Outcome) and isinstance(results[2], Outcome)
    assert (await balance(db, "alice"), await balance(db, "bob")) == (7, 8)
    await assert_invariants(pg_dsn)


async def test_a_writer_isolates_a_refused_journal_and_moves_on(db: asyncpg.Pool,
                                                                pg_dsn: str) -> None:
    await db.execute("ALTER TABLE ledgers ADD CONSTRAINT test_no_13 CHECK (amount <> 13)")
    executed: list[Executed] = []
    pool = make_pool(db, executed, apply=False)
    journals = [pending("deposit", 50, destination="alice"),
                pending("deposit", 13, destination="bob", mode="sync"),
                pending("transfer", 20, source="alice", destination="bob")]
    ids = await pool.record(journals)
    tasks = []
    for journal_id, journal in zip(ids, journals, strict=True):
        assert isinstance(journal_id, int)
        waiter = asyncio.get_running_loop().create_future()
        tasks.append(Task(journal_id, journal.receipt_code, journal.transaction, 0.0, waiter))
        with pool.admission() as room:
            room.put(tasks[-1])
    pool.start()  # all three in one batch
    async with asyncio.timeout(10):
        outcomes = [await t.waiter for t in tasks if t.waiter is not None]
    assert [o.status if o else None for o in outcomes] == ["completed", "failed", "completed"]
    refused = outcomes[1]
    assert refused is not None and refused.error is not None
    assert refused.error.code == "invalid_request"
    await pool.close(5)
    rows = await db.fetch("SELECT status, error_code, lease_owner FROM journals ORDER BY id")
    assert [(r["status"], r["error_code"], r["lease_owner"]) for r in rows] == [
        ("completed", None, None), ("failed", "invalid_request", None), ("completed", None, None)]
    assert (await balance(db, "alice"), await balance(db, "bob")) == (30, 20)
    assert sorted(o.status for e in executed for o in e.outcomes) == [
        "completed", "completed", "failed"], "the effects see the refused journal failed"
    await assert_invariants(pg_dsn)

