"""Holds, captures, voids, reversals and hold expiry through the pipeline on the fakes:
TransactionService records them pending (queue mode), the writers decide them under the
named journal's lock (FakeLedgerUnit.lock_targets/update_targets), and HoldExpiry voids
an expired hold once however many sweeps see it."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from core.ledger.errors import (
    BusinessRuleError,
    HoldNotPending,
    NotReversible,
    ReversalExceedsOriginal,
    WrongTarget,
)
from core.ledger.linked import VOID
from core.ledger.models import Leg, Transaction
from core.ledger.status import COMPLETED, FAILED, HELD, PROCESSING, VOIDED
from core.pipeline.expiry import EXPIRED, EXPIRY_SCOPE, HoldExpiry
from core.pipeline.links import LinkedRequests
from core.pipeline.submission import Finished, Submitted
from tests.fakes import FakeJournalStore
from tests.unit.conftest import Pipeline, PipelineFactory, deposit, submission, transfer


def hold(amount: int, expires_in_s: int = 60, source: str = "alice",
         destination: str = "bob") -> Transaction:
    return msgspec.structs.replace(transfer(amount, source, destination),
                                   hold_expires_in_s=expires_in_s)


async def decided(p: Pipeline, tx: Transaction, key: str | None = None) -> tuple[str, str, str | None]:
    """Submit and wait: (receipt, status, error code); a refusal at the accept is
    ("", "refused", its code)."""
    try:
        answer: Submitted = await p.service.submit(submission(tx, key=key, wait=True))
    except BusinessRuleError as exc:
        return "", "refused", exc.code
    assert isinstance(answer, Finished), answer
    error = answer.outcome.error
    return answer.receipt_code, answer.outcome.status, error.code if error else None


async def settled(store: FakeJournalStore, code: str) -> str:
    """The journal's status once a writer finished it."""
    async with asyncio.timeout(5):
        while store.journal(code).status == PROCESSING:
            await asyncio.sleep(0.005)
    return store.journal(code).status


async def held(p: Pipeline, amount: int, expires_in_s: int = 60) -> str:
    code, status, error = await decided(p, hold(amount, expires_in_s))
    assert (status, error) == (HELD, None)
    return code


async def test_a_hold_is_recorded_pending_and_reserves(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    p.store.now = 1000.0
    code = await held(p, 60, expires_in_s=30)
    row = p.store.journal(code)
    assert row.status == HELD and not row.recorded_finished  # the writers applied it
    assert row.hold_expires_at == 1030.0 and row.is_hold and row.entries == []
    assert (p.store.balance("alice"), p.store.held("alice")) == (100, 60)
    assert (p.store.balance("bob"), p.store.held("bob")) == (0, 0)
    # 40 is available: a transfer of 50 is refused (at the accept, or by the writer).
    _, status, error = await decided(p, transfer(50))
    assert status in ("refused", FAILED) and error == "insufficient_funds"
    _, status, _ = await decided(p, transfer(40))
    assert status == COMPLETED and p.store.balance("alice") == 60
    # A second hold beyond what is available fails; what is held is untouched.
    _, status, error = await decided(p, hold(1))
    assert status in ("refused", FAILED) and error == "insufficient_funds"
    assert p.store.held("alice") == 60


async def test_a_partial_capture_posts_and_releases(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    links = LinkedRequests(p.store)
    code = await held(p, 60)
    capture, status, error = await decided(p, await links.capture(code, 25))
    assert (status, error) == (COMPLETED, None)
    assert [(e.account, e.direction, e.amount) for e in p.store.journal(capture).entries] == [
        ("alice", "debit", 25), ("bob", "credit", 25)]
    assert p.store.journal(code).status == COMPLETED
    assert (p.store.balance("alice"), p.store.held("alice"), p.store.balance("bob")) == (75, 0, 25)
    with pytest.raises(HoldNotPending):
        await links.capture(code, None)


async def test_a_full_capture_of_everything_available(make_pipeline: PipelineFactory) -> None:
    """A hold of the whole balance captured whole: what it reserved pays for it."""
    p = await make_pipeline()
    code = await held(p, 100)
    _, status, error = await decided(p, await LinkedRequests(p.store).capture(code, None))
    assert (status, error) == (COMPLETED, None)
    assert (p.store.balance("alice"), p.store.held("alice"), p.store.balance("bob")) == (0, 0, 100)


async def test_two_captures_of_one_hold_one_wins(make_pipeline: PipelineFactory) -> None:
    """Both built while the hold was pending (the early check passed for each): the
    writers decide under the hold's lock, and the second fails hold_not_pending."""
    p = await make_pipeline()
    links = LinkedRequests(p.store)
    code = await held(p, 60)
    first, second = await links.capture(code, 60), await links.capture(code, 10)
    results = await asyncio.gather(decided(p, first), decided(p, second))
    assert sorted(r[1:] for r in results) == [(COMPLETED, None), (FAILED, "hold_not_pending")]
    assert p.store.held("alice") == 0 and p.store.journal(code).status == COMPLETED
    assert p.store.balance("alice") + p.store.balance("bob") == 100


async def test_a_void_releases_and_a_later_capture_fails(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    links = LinkedRequests(p.store)
    code = await held(p, 70)
    capture = await links.capture(code, None)  # built while pending
    void_code, status, error = await decided(p, await links.void(code))
    assert (status, error) == (VOIDED, None)
    assert p.store.journal(void_code).entries == []
    assert p.store.journal(code).status == VOIDED
    assert (p.store.balance("alice"), p.store.held("alice")) == (100, 0)
    _, status, error = await decided(p, capture)
    assert (status, error) == (FAILED, "hold_not_pending")
    assert (p.store.balance("alice"), p.store.balance("bob")) == (100, 0)
    with pytest.raises(HoldNotPending):
        await links.void(code)


async def test_reversals_add_up_to_at_most_the_original(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    links = LinkedRequests(p.store)
    original, status, _ = await decided(p, transfer(40))
    assert status == COMPLETED and (await decided(p, deposit(100, "bob")))[1] == COMPLETED
    _, status, error = await decided(p, await links.reverse(original, 15, "partial"))
    assert (status, error) == (COMPLETED, None)
    assert p.store.journal(original).reversed == 15
    # Two reversals of 20 built against the same 25 left: the writers let one through.
    first, second = (await links.reverse(original, 20, None), await links.reverse(original, 20, None))
    results = [await decided(p, first), await decided(p, second)]
    assert [r[1:] for r in results] == [(COMPLETED, None), (FAILED, "reversal_exceeds_original")]
    assert p.store.journal(original).reversed == 35
    assert (p.store.balance("alice"), p.store.balance("bob")) == (95, 105)


@pytest.mark.parametrize("early", [True, False], ids=["no-key", "key"])
async def test_a_reversal_above_the_original_is_reversal_exceeds_original(
        make_pipeline: PipelineFactory, early: bool) -> None:
    """Issue 18 D7: any amount above what is left, above the original itself included, is
    409 reversal_exceeds_original (it was 400 invalid_request above the original), early or
    decided by the writers, whole or partial, single or multi-leg."""
    p = await make_pipeline()
    links = LinkedRequests(p.store)
    original, status, _ = await decided(p, transfer(40))
    assert status == COMPLETED
    with pytest.raises(ReversalExceedsOriginal):
        await links.reverse(original, 41, None, early=early)
    multi = Transaction("transfer", "USD", (Leg("alice", "bob", 10), Leg("alice", "carol", 5)))
    two, status, _ = await decided(p, multi)
    assert status == COMPLETED
    with pytest.raises(ReversalExceedsOriginal):
        await links.reverse(two, 16, None, early=early)
    with pytest.raises(WrongTarget):  # below the whole of a multi-leg one: not allowed (422)
        await links.reverse(two, 14, None, early=early)
    _, status, _ = await decided(p, await links.reverse(original, 30, None, early=early))
    assert status == COMPLETED
    # 11 is within the original but above the 10 left: early 409, or the writers' 409.
    try:
        _, status, error = await decided(p, await links.reverse(original, 11, None, early=early))
    except ReversalExceedsOriginal:
        assert early
    else:
        assert not early and (status, error) == (FAILED, "reversal_exceeds_original")
    assert p.store.journal(original).reversed == 30


async def test_a_captured_hold_is_reversed_through_its_capture(make_pipeline: PipelineFactory
                                                               ) -> None:
    """The hold itself posted nothing: reversing it (as well as its capture) would give
    back what was never moved."""
    p = await make_pipeline()
    links = LinkedRequests(p.store)
    code = await held(p, 60)
    capture, _, _ = await decided(p, await links.capture(code, 30))
    try:
        _, status, error = await decided(p, await links.reverse(code, 30, None))
    except NotReversible:  # refused early
        status, error = FAILED, "invalid_request"
    assert (status, error) == (FAILED, "invalid_request")
    assert p.store.journal(code).reversed == 0
    _, status, _ = await decided(p, await links.reverse(capture, 30, None))
    assert status == COMPLETED
    assert (p.store.balance("alice"), p.store.balance("bob")) == (100, 0)


def expiry_journals(store: FakeJournalStore, hold_code: str) -> list[str]:
    return [r.receipt_code for r in store.journals.values()
            if (r.scope, r.key) == (EXPIRY_SCOPE, f"expire:{hold_code}")]


@pytest.mark.parametrize("idempotency", [True, False], ids=["cache", "database-key"])
async def test_an_expired_hold_is_voided_once_by_two_sweeps(
        make_pipeline: PipelineFactory, idempotency: bool) -> None:
    """Two sweeps (two processes) see the hold before its void is applied: the second
    void is a replay of the key `expire:<hold>`, by the idempotency cache or, without
    it, by the database's unique key."""
    p = await make_pipeline(idempotency=idempotency)
    code = await held(p, 60, expires_in_s=30)
    expiry = HoldExpiry(p.store, p.service, interval_s=1)
    p.store.now += 29
    assert await expiry.sweep() == 0
    p.store.now += 1  # the deadline itself: expired
    async with p.store.paused():  # the void is not applied before the second sweep
        assert await expiry.sweep() == 1
        assert await expiry.sweep() == 1  # still held: found again, submitted again
        voids = expiry_journals(p.store, code)
        assert len(voids) == 1
        assert p.store.journal(code).status == HELD
    assert await settled(p.store, voids[0]) == VOIDED
    assert p.store.journal(code).status == VOIDED
    assert p.store.journal(voids[0]).transaction.description == EXPIRED
    assert (p.store.balance("alice"), p.store.held("alice")) == (100, 0)
    assert await expiry.sweep() == 0
    assert expiry_journals(p.store, code) == voids


async def test_a_hold_captured_before_the_sweep_is_not_voided(make_pipeline: PipelineFactory
                                                               ) -> None:
    """The capture reaches the writer first; the expiry void, decided after it under the
    hold's lock, fails hold_not_pending."""
    p = await make_pipeline()
    code = await held(p, 60, expires_in_s=10)
    capture = await LinkedRequests(p.store).capture(code, 40)
    expiry = HoldExpiry(p.store, p.service, interval_s=1)
    async with p.store.paused():
        accepted = await p.service.submit(submission(capture))  # queued first
        p.store.now += 11
        assert await expiry.sweep() == 1  # the capture is not applied yet: still held
        (void,) = expiry_journals(p.store, code)
    assert await settled(p.store, accepted.receipt_code) == COMPLETED
    assert await settled(p.store, void) == FAILED
    error = p.store.journal(void).error
    assert error is not None and error.code == "hold_not_pending"
    assert p.store.journal(code).status == COMPLETED
    assert (p.store.balance("alice"), p.store.held("alice"), p.store.balance("bob")) == (60, 0, 40)
    assert await expiry.sweep() == 0


async def test_the_fake_store_reads_named_journals(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    code = await held(p, 10, expires_in_s=5)
    named = await p.store.named_journal(code)
    assert named is not None and named.is_hold and named.status == HELD and named.amount == 10
    assert await p.store.named_journal("RCP-20261202-0000000000000000") is None
    assert await p.store.expired_holds(10) == []
    p.store.now += 5
    assert [h.receipt_code for h in await p.store.expired_holds(10)] == [code]
    voided = await p.store.expired_holds(10)
    assert voided[0].legs == p.store.journal(code).transaction.legs and VOID == "void"
