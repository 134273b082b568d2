"""ProcessorPool on the fakes: recording at accept, the writers' queue, admission, close."""

from __future__ import annotations

import asyncio

import pytest

from core.ledger.decide import Outcome
from core.ledger.errors import Overloaded, Rejected
from core.ledger.status import COMPLETED, FAILED, PROCESSING
from core.pipeline.ports import ExistingJournal
from core.pipeline.tasks import Task
from tests.unit.conftest import PipelineFactory, pending, transfer


def task_of(journal_id: int, code: str, amount: int, *, waits: bool = True) -> Task:
    waiter = asyncio.get_running_loop().create_future() if waits else None
    return Task(journal_id, code, transfer(amount), 0.0, waiter)


async def queued(p, amount: int) -> Task:  # type: ignore[no-untyped-def]
    """A journal recorded pending and queued, as the accept path does it in queue mode."""
    journal = pending(transfer(amount))
    [jid] = await p.store.insert_pending([journal])
    task = task_of(jid, journal.receipt_code, amount)
    with p.pool.admission() as room:
        room.put(task)
    return task


async def test_record_applies_at_accept_while_writers_are_idle(make_pipeline: PipelineFactory
                                                              ) -> None:
    p = await make_pipeline(apply_at_accept=True)
    journal = pending(transfer(30))
    [result] = await p.pool.record([journal])
    assert isinstance(result, Outcome) and result.status == COMPLETED
    assert result.recorded_with_decision
    assert p.store.journal(journal.receipt_code).status == COMPLETED
    assert p.store.balance("bob") == 30


async def test_record_leaves_journals_pending_while_writers_have_a_backlog(
        make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(apply_at_accept=True, start=False)
    await queued(p, 1)  # a backlog: nobody runs it
    journal = pending(transfer(30))
    [result] = await p.pool.record([journal])
    assert isinstance(result, int)
    assert p.store.journal(journal.receipt_code).status == PROCESSING


async def test_record_in_queue_mode_returns_journal_ids(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    journals = [pending(transfer(1)), pending(transfer(2))]
    results = await p.pool.record(journals)
    assert results == [p.store.by_code[j.receipt_code] for j in journals]
    assert p.store.balance("alice") == 100


async def test_record_names_the_existing_journal_of_a_key(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(apply_at_accept=True)
    first = pending(transfer(10), key="k")
    await p.pool.record([first])
    [again] = await p.pool.record([pending(transfer(10), key="k")])
    assert isinstance(again, ExistingJournal) and again.receipt_code == first.receipt_code
    assert p.store.balance("alice") == 90


async def test_refused_data_fails_only_its_own_item_at_accept(make_pipeline: PipelineFactory
                                                             ) -> None:
    p = await make_pipeline(apply_at_accept=True)
    journals = [pending(transfer(1)), pending(transfer(2)), pending(transfer(3))]
    p.store.reject.add(journals[1].receipt_code)
    results = await p.pool.record(journals)
    assert isinstance(results[1], Rejected)
    assert [isinstance(r, Outcome) for r in (results[0], results[2])] == [True, True]
    assert p.store.balance("bob") == 4


async def test_a_writer_executes_a_queued_task_and_resolves_its_waiter(
        make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    task = await queued(p, 30)
    assert task.waiter is not None
    outcome = await task.waiter
    assert outcome is not None and outcome.status == COMPLETED
    assert p.store.journal(task.receipt_code).status == COMPLETED


async def test_writers_take_queued_tasks_in_batches(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False, batch_max=10)
    tasks = [await queued(p, 1) for _ in range(5)]
    p.pool.start()
    await p.drain()
    assert p.observer.batches == [5]
    assert all(p.store.journal(t.receipt_code).status == COMPLETED for t in tasks)


async def test_a_task_short_of_funds_fails_and_posts_nothing(make_pipeline: PipelineFactory
                                                            ) -> None:
    p = await make_pipeline(start=False)
    first, second = await queued(p, 80), await queued(p, 80)
    p.pool.start()
    assert second.waiter is not None and first.waiter is not None
    outcomes = [await first.waiter, await second.waiter]
    assert [o.status for o in outcomes if o is not None] == [COMPLETED, FAILED]
    assert (p.store.balance("alice"), p.store.balance("bob")) == (20, 80)


async def test_a_journal_finished_elsewhere_is_not_applied_again(make_pipeline: PipelineFactory
                                                                ) -> None:
    p = await make_pipeline(start=False)
    task = await queued(p, 30)
    p.store.journal(task.receipt_code).status = FAILED  # another process finished it
    p.pool.start()
    assert task.waiter is not None
    assert await task.waiter is None
    assert p.store.balance("alice") == 100


async def test_refused_data_in_a_batch_fails_only_its_journal(make_pipeline: PipelineFactory
                                                             ) -> None:
    p = await make_pipeline(start=False)
    tasks = [await queued(p, 1) for _ in range(3)]
    p.store.reject.add(tasks[1].receipt_code)
    p.pool.start()
    await p.drain()
    assert [p.store.journal(t.receipt_code).status for t in tasks] == [COMPLETED, FAILED, COMPLETED]
    assert p.store.balance("bob") == 2


async def test_admission_refuses_past_the_capacity(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False, queue_size_max=3)
    await queued(p, 1)
    with p.pool.admission(2):
        assert p.pool.room == 0
        with pytest.raises(Overloaded):
            p.pool.admission()
    assert p.pool.room == 2  # room again once the block is left
    with p.pool.admission(2):
        pass


async def test_admission_gives_back_what_was_not_put(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False, queue_size_max=5)
    with p.pool.admission(3) as room:
        room.put(task_of(1, "RCP-a", 1))  # one of three used: queued, the two others back
        assert p.pool.room == 2 and p.pool.backlog == 1
    assert p.pool.room == 4 and p.pool.held == [1]


async def test_admission_is_given_back_on_an_exception(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False, queue_size_max=5)
    with pytest.raises(ValueError, match="after the reservation"), p.pool.admission(2) as room:
        room.put(task_of(1, "RCP-a", 1))
        raise ValueError("after the reservation")
    assert p.pool.room == 4 and p.pool.backlog == 1


async def test_admission_is_given_back_when_the_request_is_cancelled(
        make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False, queue_size_max=5)
    entered = asyncio.Event()

    async def request() -> None:
        with p.pool.admission(3):
            entered.set()
            await asyncio.Event().wait()  # e.g. waiting for its group commit

    task = asyncio.create_task(request())
    await entered.wait()
    assert p.pool.room == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert p.pool.room == 5


async def test_admission_refuses_a_put_past_its_room(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False, queue_size_max=5)
    with p.pool.admission(1) as room:
        room.put(task_of(1, "RCP-a", 1))
        with pytest.raises(AssertionError):
            room.put(task_of(2, "RCP-b", 1))
    assert p.pool.room == 4 and p.pool.held == [1]


async def test_recovered_work_is_queued_only_with_room_and_once(make_pipeline: PipelineFactory
                                                               ) -> None:
    p = await make_pipeline(start=False, queue_size_max=1)
    assert p.pool.try_put(task_of(7, "RCP-a", 1, waits=False))
    assert p.pool.try_put(task_of(7, "RCP-a", 1, waits=False))  # held already: not twice
    assert not p.pool.try_put(task_of(8, "RCP-b", 1, waits=False))
    assert p.pool.held == [7] and p.pool.backlog == 1


async def test_close_finishes_queued_work_then_refuses(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False)
    tasks = [await queued(p, 1) for _ in range(3)]
    p.pool.start()
    await p.pool.close(timeout_s=5)
    assert all(p.store.journal(t.receipt_code).status == COMPLETED for t in tasks)
    assert p.pool.room == 0
    with pytest.raises(Overloaded):
        p.pool.admission()


async def test_close_leaves_unfinished_work_to_recovery(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False)
    task = await queued(p, 1)
    await p.pool.close(timeout_s=0)
    row = p.store.journal(task.receipt_code)
    assert row.status == PROCESSING and row.lease_owner is not None


async def test_a_lost_ack_that_landed_answers_as_the_commit_did(make_pipeline: PipelineFactory
                                                               ) -> None:
    p = await make_pipeline(apply_at_accept=True)
    p.store.lose_acks = 1
    journal = pending(transfer(30))
    [result] = await p.pool.record([journal])
    assert isinstance(result, Outcome) and result.status == COMPLETED
    assert p.store.balance("bob") == 30 and len(p.store.journals) == 1
