"""RecoverySweeper on the fakes: expired leases are claimed and executed; held ones renewed."""

from __future__ import annotations

from core.ledger.errors import Overloaded
from core.ledger.status import COMPLETED, PROCESSING
from core.pipeline.recovery import RecoverySweeper
from core.pipeline.tasks import Task
from tests.unit.conftest import OWNER, PipelineFactory, pending, transfer

LEASE_S = 30


def sweeper_of(p) -> RecoverySweeper:  # type: ignore[no-untyped-def]
    return RecoverySweeper(p.store, p.pool, owner=OWNER, lease_s=LEASE_S, interval_s=1)


async def test_an_expired_journal_of_a_dead_process_is_claimed_and_executed(
        make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    journal = pending(transfer(30), owner="dead-node")
    await p.store.insert_pending([journal])
    p.store.now += LEASE_S + 1
    assert await sweeper_of(p).sweep() == 1
    await p.drain()
    assert p.store.journal(journal.receipt_code).status == COMPLETED
    assert p.store.balance("bob") == 30


async def test_a_live_lease_is_not_claimed(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False)
    journal = pending(transfer(30), owner="other-node")
    await p.store.insert_pending([journal])
    p.store.now += LEASE_S - 1
    assert await sweeper_of(p).sweep() == 0
    assert p.store.journal(journal.receipt_code).lease_owner == "other-node"


async def test_a_claim_takes_over_the_lease(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False)
    journal = pending(transfer(30), owner="dead-node")
    await p.store.insert_pending([journal])
    p.store.now += LEASE_S + 1
    await sweeper_of(p).sweep()
    row = p.store.journal(journal.receipt_code)
    assert row.lease_owner == OWNER and row.lease_expires_at == p.store.now + LEASE_S
    assert p.pool.held == [row.id]


async def test_held_journals_are_renewed_not_claimed(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False)
    sweeper = sweeper_of(p)
    journal = pending(transfer(30), owner="dead-node")
    await p.store.insert_pending([journal])
    p.store.now += LEASE_S + 1
    assert await sweeper.sweep() == 1
    p.store.now += LEASE_S + 1  # our own lease ran out while the task waits in our queue
    assert await sweeper.sweep() == 0
    row = p.store.journal(journal.receipt_code)
    assert row.lease_expires_at == p.store.now + LEASE_S and p.pool.backlog == 1


async def test_claims_are_bounded_by_the_queue_room(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False, queue_size_max=2)
    await p.store.insert_pending([pending(transfer(1), owner="dead-node") for _ in range(3)])
    p.store.now += LEASE_S + 1
    assert await sweeper_of(p).sweep() == 2
    assert sorted(p.store.statuses().values()) == [PROCESSING] * 3
    assert p.pool.room == 0


async def test_a_full_queue_claims_nothing(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False, queue_size_max=1)
    with p.pool.admission():  # the one place, reserved by a request being accepted
        await p.store.insert_pending([pending(transfer(1), owner="dead-node")])
        p.store.now += LEASE_S + 1
        assert await sweeper_of(p).sweep() == 0
        assert p.pool.held == []


async def test_accepts_filling_the_queue_during_a_claim_leave_no_claimed_journal_out(
        make_pipeline: PipelineFactory) -> None:
    """The room is reserved before the claim is read: accepts meanwhile are refused
    (Overloaded) rather than taking it, so every claimed journal is queued (tests/sim found
    the sweeper's `assert queued` failing when the queue filled during the claim)."""
    p = await make_pipeline(start=False, queue_size_max=2)
    journals = [pending(transfer(10), owner="dead-node") for _ in range(2)]
    await p.store.insert_pending(journals)
    p.store.now += LEASE_S + 1
    claim = p.store.claim_expired
    refused = []

    async def claim_while_accepting(*args):  # type: ignore[no-untyped-def]
        try:
            with p.pool.admission(1) as room:  # an accept meanwhile
                room.put(Task(99, "RCP-accepted-meanwhile", transfer(1), 0.0))
        except Overloaded:
            refused.append(True)
        return await claim(*args)

    p.store.claim_expired = claim_while_accepting  # type: ignore[method-assign]
    assert await sweeper_of(p).sweep() == 2
    assert refused == [True] and p.pool.backlog == 2
