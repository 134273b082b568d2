"""The fakes keep the promises of the ports they stand for; otherwise the pipeline tests
built on them would prove nothing."""

from __future__ import annotations

import pytest

from core.ledger.decide import decide_batch
from core.ledger.errors import Rejected, TransientConflict, Unavailable
from core.ledger.status import COMPLETED, EXECUTING, PROCESSING
from core.pipeline.ports import ExistingJournal, JournalStatus
from tests.fakes import FakeIdempotencyCache, FakeJournalStore, FakeReceiptSource, FakeStatusStore
from tests.unit.conftest import pending, transfer


def store_with_alice(balance: int = 100) -> FakeJournalStore:
    store = FakeJournalStore()
    store.add_account("alice", balance)
    store.add_account("bob", 0)
    return store


async def test_insert_pending_names_the_first_journal_of_a_key() -> None:
    store = store_with_alice()
    first, again = pending(transfer(1), key="k"), pending(transfer(1), key="k")
    [jid] = await store.insert_pending([first])
    [found] = await store.insert_pending([again])
    assert isinstance(found, ExistingJournal)
    assert (found.journal_id, found.receipt_code) == (jid, first.receipt_code)
    assert again.receipt_code not in store.by_code


async def test_a_key_twice_in_one_group_records_one_journal() -> None:
    store = store_with_alice()
    results = await store.insert_pending([pending(transfer(1), key="k"),
                                          pending(transfer(1), key="k")])
    assert isinstance(results[0], int) and isinstance(results[1], ExistingJournal)
    assert len(store.journals) == 1


async def test_insert_finished_refuses_a_key_taken_meanwhile() -> None:
    store = store_with_alice()
    await store.insert_pending([pending(transfer(1), key="k")])
    late = pending(transfer(1), key="k")
    with pytest.raises(TransientConflict):
        async with store.unit() as unit:
            accounts, ids = await unit.lock_for_new(["alice", "bob"], 1)
            decision = decide_batch([(ids[0], late.receipt_code, late.transaction)], accounts, "t")
            await unit.insert_finished([late], ids, decision)
    assert store.balance("alice") == 100


async def test_a_commit_below_the_floor_is_refused_and_rolled_back() -> None:
    store = store_with_alice()
    [jid] = await store.insert_pending([pending(transfer(500))])
    accounts = store.snapshots(["alice", "bob"])
    forged = decide_batch([(jid, "r", transfer(50))], accounts, "t")
    forged.balances["alice"] = -1  # what a wrong decision would write
    with pytest.raises(Rejected):
        async with store.unit() as unit:
            await unit.write(forged)
    assert store.balance("alice") == 100
    assert store.journals[jid].status == PROCESSING


async def test_a_unit_that_raises_commits_nothing() -> None:
    store = store_with_alice()
    [jid] = await store.insert_pending([pending(transfer(10))])
    with pytest.raises(RuntimeError):
        async with store.unit() as unit:
            accounts = await unit.lock_accounts(["alice", "bob"])
            await unit.write(decide_batch([(jid, "r", transfer(10))], accounts, "t"))
            raise RuntimeError("boom")
    assert store.balance("alice") == 100 and store.journals[jid].status == PROCESSING


async def test_the_store_down_raises_unavailable_everywhere() -> None:
    store = store_with_alice()
    store.down = True
    with pytest.raises(Unavailable):
        await store.insert_pending([pending(transfer(1))])
    with pytest.raises(Unavailable):
        await store.journal_status("RCP-x")
    with pytest.raises(Unavailable):
        await store.claim_expired("me", 1, 10, [])


async def test_receipt_codes_never_repeat_and_are_valid() -> None:
    from core.ledger.validation import check_receipt_code

    source = FakeReceiptSource()
    codes = await source.next_codes(5) + await source.next_codes(5)
    assert len(set(codes)) == 10
    assert all(check_receipt_code(c) == c for c in codes)


async def test_a_status_never_replaces_a_later_one() -> None:
    store = FakeStatusStore()
    await store.write_statuses([JournalStatus("r", COMPLETED, None, "t1")], 60)
    await store.write_statuses([JournalStatus("r", EXECUTING, None, "t2")], 60)
    found = await store.read_status("r")
    assert found is not None and found.status == COMPLETED


async def test_an_idempotency_key_is_owned_by_one_request_until_abandoned() -> None:
    cache = FakeIdempotencyCache()
    assert await cache.begin("s", "k", "h") is None
    found = await cache.begin("s", "k", "h")
    assert found is not None and found.receipt_code is None
    await cache.abandon("s", "k")
    assert await cache.begin("s", "k", "h") is None
