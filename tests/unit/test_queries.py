"""StatusQuery on the fakes: tracker → status store → journals → receipt service."""

from __future__ import annotations

import pytest

from core.ledger.errors import Unavailable
from core.ledger.models import ErrorBody
from core.ledger.status import COMPLETED, FAILED, PROCESSING
from core.pipeline.ports import JournalStatus, ReceiptRecord
from core.pipeline.queries import StatusQuery
from core.pipeline.tracker import StatusTracker
from tests.fakes import FakeJournalStore, FakeReceiptSource, FakeStatusStore
from tests.unit.conftest import pending, transfer


class Chain:
    def __init__(self) -> None:
        self.store = FakeJournalStore()
        self.status_store = FakeStatusStore()
        self.receipts = FakeReceiptSource()
        self.tracker = StatusTracker(self.status_store, flush_interval_ms=10, redis_ttl_s=60,
                                     memory_ttl_s=60)
        self.query = StatusQuery(self.tracker, self.status_store, self.receipts, self.store)

    async def recorded(self) -> str:
        journal = pending(transfer(1))
        await self.store.insert_pending([journal])
        return journal.receipt_code


async def test_the_tracker_answers_first() -> None:
    c = Chain()
    code = await c.recorded()
    c.tracker.finished([JournalStatus(code, COMPLETED, None, "t")])
    c.store.down = c.status_store.down = True
    found = await c.query.status(code)
    assert found is not None and found.status == COMPLETED
    assert c.status_store.reads == 0


async def test_a_final_status_in_the_status_store_answers_next() -> None:
    c = Chain()
    code = await c.recorded()
    await c.status_store.write_statuses([JournalStatus(code, FAILED, None, "t")], 60)
    c.store.down = True
    found = await c.query.status(code)
    assert found is not None and found.status == FAILED


async def test_a_non_final_status_in_the_status_store_defers_to_the_journals() -> None:
    c = Chain()
    code = await c.recorded()
    await c.status_store.write_statuses([JournalStatus(code, PROCESSING, None, "t")], 60)
    c.store.journal(code).status = COMPLETED
    found = await c.query.status(code)
    assert found is not None and found.status == COMPLETED


async def test_the_journals_answer_when_the_caches_do_not_know() -> None:
    c = Chain()
    code = await c.recorded()
    found = await c.query.status(code)
    assert found is not None and found.status == PROCESSING and c.status_store.reads == 1


async def test_the_status_store_down_is_skipped() -> None:
    c = Chain()
    code = await c.recorded()
    c.status_store.down = True
    found = await c.query.status(code)
    assert found is not None and found.status == PROCESSING


async def test_the_receipt_service_answers_while_the_journals_are_unavailable() -> None:
    c = Chain()
    code = await c.recorded()
    c.receipts.register([ReceiptRecord(code, "transfer", "USD", 1, ["alice", "bob"], FAILED,
                                       "insufficient_funds")])
    c.store.down = True
    found = await c.query.status(code)
    assert found is not None and found.status == FAILED
    assert found.error is not None and found.error.code == "insufficient_funds"


async def test_journals_unavailable_and_receipt_unknown_raises() -> None:
    c = Chain()
    c.store.down = True
    with pytest.raises(Unavailable):
        await c.query.status("RCP-20261202-0000000000000ZZZ")


async def test_an_unknown_receipt_is_none() -> None:
    c = Chain()
    assert await c.query.status("RCP-20261202-0000000000000ZZZ") is None


async def test_a_failed_journal_keeps_its_error() -> None:
    c = Chain()
    code = await c.recorded()
    row = c.store.journal(code)
    row.status, row.error = FAILED, ErrorBody("account_inactive", "account bob is frozen")
    found = await c.query.status(code)
    assert found is not None and found.error == ErrorBody("account_inactive",
                                                          "account bob is frozen")
