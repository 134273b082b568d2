"""A lost COMMIT acknowledgement against the real PostgreSQL: the group is looked up on
another connection; landed → the normal answers, not landed → 503 `unavailable`,
cannot tell in time → 503 `outcome_unknown`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from core.ledger.decide import Outcome
from core.ledger.errors import CommitUnknown, OutcomeUnknown, Unavailable
from core.pipeline.executor import Executed
from core.pipeline.pool import ProcessorPool
from core.pipeline.ports import PendingJournal, RecordedJournal
from server.adapters.postgres.journals import PgJournalStore, PgLedgerUnit
from server.http.errors import from_exception
from tests.fixtures.pipeline import balance, pending
from tests.invariants import assert_invariants

pytestmark = pytest.mark.timeout(60)


class _RolledBack(Exception):
    pass


class LostAck:
    """The real store, but a commit's acknowledgement is lost after the commit happened
    (`landed`) or without it happening; `blind`: the check cannot reach the database."""

    def __init__(self, real: PgJournalStore, *, landed: bool, blind: bool = False) -> None:
        self._real = real
        self.landed = landed
        self.blind = blind

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[PgLedgerUnit]:
        with contextlib.suppress(_RolledBack):
            async with self._real.unit() as unit:
                yield unit
                if not self.landed:
                    raise _RolledBack
        raise CommitUnknown("the commit was not acknowledged", session=None)

    async def insert_pending(self, journals: list[PendingJournal]) -> list[Any]:
        if self.landed:
            await self._real.insert_pending(journals)
        raise CommitUnknown("the commit was not acknowledged", session=None)

    async def recorded(self, receipt_codes: list[str], session: object | None
                       ) -> dict[str, RecordedJournal]:
        if self.blind:
            raise Unavailable("the database is unavailable")
        return await self._real.recorded(receipt_codes, session)



def make_pool(store: Any, executed: list[Executed], *, apply: bool = True) -> ProcessorPool:
    async def effects(batch: Executed) -> None:
        executed.append(batch)

    return ProcessorPool(store, effects, queue_size_max=100, writers=1, batch_max=50,
                         workers=1, attempts_max=3, apply_at_accept=apply,
                         commit_check_timeout_s=0.3)


def group() -> list[PendingJournal]:
    return [pending("deposit", 10, destination="alice"),
            pending("transfer", 30, source="alice", destination="bob")]


async def test_a_landed_group_gets_its_normal_answers(db: asyncpg.Pool, pg_dsn: str) -> None:
    executed: list[Executed] = []
    pool = make_pool(LostAck(PgJournalStore(db, lease_s=30), landed=True), executed)
    pool.start()
    journals = group()
    results = await pool.record(journals)
    assert isinstance(results[0], Outcome) and results[0].status == "completed"
    assert [(e.account, e.balance_after) for e in results[0].entries][-1] == ("alice", 10)
    assert isinstance(results[1], Outcome) and results[1].status == "failed"
    assert results[1].error is not None and results[1].error.code == "insufficient_funds"
    assert [r.receipt_code for r in results if isinstance(r, Outcome)] == [
        j.receipt_code for j in journals]
    await pool.close(5)
    assert [o.status for e in executed for o in e.outcomes] == ["completed", "failed"]
    assert await balance(db, "alice") == 10
    await assert_invariants(pg_dsn)


async def test_a_landed_pending_group_gets_its_journal_ids(db: asyncpg.Pool) -> None:
    pool = make_pool(LostAck(PgJournalStore(db, lease_s=30), landed=True), [], apply=False)
    results = await pool.record(group())
    ids = [r["id"] for r in await db.fetch("SELECT id FROM journals ORDER BY id")]
    assert list(results) == ids and len(ids) == 2


async def test_a_group_that_did_not_land_is_unavailable(db: asyncpg.Pool) -> None:
    pool = make_pool(LostAck(PgJournalStore(db, lease_s=30), landed=False), [])
    with pytest.raises(Unavailable):
        await pool.record(group())
    assert await db.fetchval("SELECT count(*) FROM journals") == 0


async def test_a_group_nobody_can_check_is_outcome_unknown(db: asyncpg.Pool) -> None:
    pool = make_pool(LostAck(PgJournalStore(db, lease_s=30), landed=True, blind=True), [])
    with pytest.raises(OutcomeUnknown) as caught:
        await pool.record(group())
    response = from_exception(caught.value)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert b'"outcome_unknown"' in response.body


async def test_the_check_fences_the_old_session_first(db: asyncpg.Pool) -> None:
    old = await asyncpg.connect(dsn=db._connect_args[0])  # noqa: SLF001 - the same database
    try:
        store = PgJournalStore(db, lease_s=30)
        assert await store.recorded(["RCP-none"], old.get_server_pid()) == {}
        assert not await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                                     old.get_server_pid()), "the old session was ended"
    finally:
        old.terminate()


SLOW_COMMIT = """
CREATE FUNCTION test_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(5); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER test_slow_commit AFTER INSERT ON journals
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_slow_commit();
"""


async def test_a_commit_timing_out_is_fenced_and_found_not_landed(db: asyncpg.Pool,
                                                                  pg_dsn: str) -> None:
    """The real adapter: COMMIT outlives `command_timeout`; the check ends the old session
    (so it can no longer land) and finds nothing: 503 `unavailable`, not a late landing."""
    await db.execute(SLOW_COMMIT)
    short = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4, command_timeout=0.5)
    try:
        pool = make_pool(PgJournalStore(short, lease_s=30), [])
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Unavailable):
            await pool.record(group())
        assert loop.time() - started < 3, "decided by fencing, not by waiting for the sleep"
        await asyncio.sleep(0.2)
        assert await db.fetchval("SELECT count(*) FROM journals") == 0
    finally:
        await short.close()
