"""Applying new journals in the accept's own commit (core.pipeline.executor.apply_pending through
ProcessorPool.record), against the real PostgreSQL: outcomes per item, idempotency keys
already recorded or sent twice in one group, racing groups, and the fallback to pending
journals while the writers have a backlog."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from core.ledger.decide import Outcome
from core.pipeline.executor import Executed
from core.pipeline.pool import ProcessorPool
from core.pipeline.ports import ExistingJournal
from core.pipeline.tasks import Task
from server.adapters.postgres.journals import PgJournalStore
from tests.fixtures.pipeline import balance, pending
from tests.invariants import assert_invariants

pytestmark = pytest.mark.timeout(60)



def make_pool(db: asyncpg.Pool, executed: list[Executed], *, apply: bool = True) -> ProcessorPool:
    async def effects(batch: Executed) -> None:
        executed.append(batch)

    return ProcessorPool(PgJournalStore(db, lease_s=30), effects, queue_size_max=100, writers=1,
                         batch_max=50, workers=1, attempts_max=3, apply_at_accept=apply)




async def test_a_group_is_decided_in_order_and_posted_in_one_commit(db: asyncpg.Pool,
                                                                    pg_dsn: str) -> None:
    executed: list[Executed] = []
    pool = make_pool(db, executed)
    pool.start()
    results = await pool.record([
        pending("deposit", 100, destination="alice"),
        pending("transfer", 70, source="alice", destination="bob"),
        pending("transfer", 70, source="alice", destination="carol"),  # only 30 left
        pending("withdrawal", 20, source="bob"),
    ])
    assert [r.status for r in results if isinstance(r, Outcome)] == [
        "completed", "completed", "failed", "completed"]
    failed = results[2]
    assert isinstance(failed, Outcome) and failed.error is not None
    assert failed.error.code == "insufficient_funds"
    assert (await balance(db, "alice"), await balance(db, "bob"), await balance(db, "carol")) == (
        30, 50, 0)
    statuses = await db.fetch("SELECT status, lease_owner, completed_at IS NOT NULL AS done "
                              "FROM journals ORDER BY id")
    assert [r["status"] for r in statuses] == ["completed", "completed", "failed", "completed"]
    assert all(r["lease_owner"] is None and r["done"] for r in statuses), "written once, finished"
    await pool.close(5)
    assert sum(len(e.outcomes) for e in executed) == 4, "the effects see every applied journal"
    await assert_invariants(pg_dsn)


async def test_idempotency_keys_recorded_before_or_twice_in_one_group(db: asyncpg.Pool,
                                                                      pg_dsn: str) -> None:
    pool = make_pool(db, [])
    first = await pool.record([pending("deposit", 5, destination="alice", key="k1")])
    assert isinstance(first[0], Outcome)
    again = await pool.record([
        pending("deposit", 5, destination="alice", key="k1"),   # recorded by the group before
        pending("deposit", 7, destination="bob", key="k2"),
        pending("deposit", 7, destination="bob", key="k2"),     # the same key twice now
    ])
    assert isinstance(again[0], ExistingJournal) and again[0].journal_id == first[0].journal_id
    assert isinstance(again[1], Outcome) and again[1].status == "completed"
    assert isinstance(again[2], ExistingJournal) and again[2].journal_id == again[1].journal_id
    assert again[2].request_hash == "hash-deposit-7"
    assert (await balance(db, "alice"), await balance(db, "bob")) == (5, 7), "each posted once"
    await assert_invariants(pg_dsn)


async def test_racing_groups_with_one_key_post_it_once(db: asyncpg.Pool, pg_dsn: str) -> None:
    pools = [make_pool(db, []) for _ in range(4)]
    results = await asyncio.gather(*(
        p.record([pending("deposit", 9, destination="carol", key="race"),
                  pending("deposit", 1, destination="alice")]) for p in pools))
    applied = [r[0] for r in results if isinstance(r[0], Outcome)]
    replayed = [r[0] for r in results if isinstance(r[0], ExistingJournal)]
    assert len(applied) == 1 and len(replayed) == 3
    assert {r.journal_id for r in replayed} == {applied[0].journal_id}
    assert await balance(db, "carol") == 9 and await balance(db, "alice") == 4
    await assert_invariants(pg_dsn)


async def test_a_backlog_records_pending_journals_for_the_writers(db: asyncpg.Pool,
                                                                  pg_dsn: str) -> None:
    pool = make_pool(db, [], apply=False)
    ids = await pool.record([pending("deposit", 3, destination="bob")])
    assert isinstance(ids[0], int)
    row = await db.fetchrow("SELECT status, lease_owner FROM journals WHERE id = $1", ids[0])
    assert (row["status"], row["lease_owner"]) == ("processing", "test-owner")


async def test_the_writers_finish_and_post_pending_journals(db: asyncpg.Pool, pg_dsn: str) -> None:
    executed: list[Executed] = []
    pool = make_pool(db, executed, apply=False)
    pool.start()
    journals = [pending("deposit", 50, destination="alice"),
                pending("transfer", 80, source="alice", destination="bob")]
    ids = await pool.record(journals)
    for journal_id, journal in zip(ids, journals, strict=True):
        assert isinstance(journal_id, int)
        with pool.admission() as room:
            room.put(Task(journal_id, journal.receipt_code, journal.transaction, 0.0))
    await pool.close(10)
    rows = await db.fetch("SELECT status, error_code FROM journals ORDER BY id")
    assert [(r["status"], r["error_code"]) for r in rows] == [
        ("completed", None), ("failed", "insufficient_funds")]
    assert await balance(db, "alice") == 50 and await balance(db, "bob") == 0
    await assert_invariants(pg_dsn)
