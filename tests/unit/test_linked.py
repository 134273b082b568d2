"""Holds, captures, voids and reversals decided against locked state (core/ledger/linked.py)."""

from __future__ import annotations

from core.ledger.decide import decide_batch
from core.ledger.linked import LedgerState, Target, decide_linked, decide_with_linked
from core.ledger.models import AccountSnapshot, Leg, Transaction
from core.ledger.status import COMPLETED, FAILED, HELD, PROCESSING, VOIDED

NOW = "2026-12-02T00:00:00.000000Z"


def state(balance: int = 1000, overdraft: int = 0, held: int = 0,
          targets: dict[str, Target] | None = None) -> LedgerState:
    accounts = {
        "a": AccountSnapshot("a", "USD", "active", balance, overdraft, held=held),
        "b": AccountSnapshot("b", "USD", "active", 0, 0),
    }
    return LedgerState.of(accounts, targets or {})


def hold_tx(amount: int) -> Transaction:
    return Transaction("transfer", "USD", (Leg("a", "b", amount),), hold_expires_in_s=60)


def linked(kind: str, target: str, amount: int, reverse: bool = False) -> Transaction:
    leg = Leg("b", "a", amount) if reverse else Leg("a", "b", amount)
    return Transaction(kind, "USD", (leg,), target=target)


def pending_hold(amount: int, code: str = "H") -> Target:
    return Target(code, 1, "transfer", HELD, (Leg("a", "b", amount),), is_hold=True)


def test_a_hold_reserves_the_available_balance_and_posts_nothing() -> None:
    s = state(balance=1000)
    result = decide_linked(2, "R2", hold_tx(600), s, NOW)
    assert result.outcome.status == HELD and result.outcome.entries == []
    assert s.held["a"] == 600 and s.balances["a"] == 1000
    second = decide_linked(3, "R3", hold_tx(600), s, NOW)
    assert second.outcome.status == FAILED
    assert second.outcome.error is not None and second.outcome.error.code == "insufficient_funds"
    assert s.held["a"] == 600


def test_a_hold_may_use_the_overdraft_limit() -> None:
    s = state(balance=100, overdraft=50)
    assert decide_linked(2, "R2", hold_tx(150), s, NOW).outcome.status == HELD
    assert decide_linked(3, "R3", hold_tx(1), s, NOW).outcome.status == FAILED


def test_a_partial_capture_posts_its_amount_and_releases_the_whole_hold() -> None:
    hold = pending_hold(600)
    s = state(balance=1000, held=600, targets={"H": hold})
    result = decide_linked(2, "C", linked("capture", "H", 250), s, NOW)
    assert result.outcome.status == COMPLETED
    assert [(e.account, e.direction, e.amount, e.balance_after) for e in result.outcome.entries] == [
        ("a", "debit", 250, 750), ("b", "credit", 250, 250)]
    assert s.held["a"] == 0 and hold.status == COMPLETED


def test_a_hold_is_captured_or_voided_once() -> None:
    hold = pending_hold(600)
    s = state(balance=1000, held=600, targets={"H": hold})
    assert decide_linked(2, "V", linked("void", "H", 600), s, NOW).outcome.status == VOIDED
    again = decide_linked(3, "C", linked("capture", "H", 600), s, NOW).outcome
    assert again.status == FAILED and again.error is not None
    assert again.error.code == "hold_not_pending"
    assert s.held["a"] == 0 and s.balances["a"] == 1000 and hold.status == VOIDED


def test_a_failed_capture_leaves_the_hold_pending() -> None:
    hold = pending_hold(600)
    s = state(balance=1000, held=600, targets={"H": hold})
    s.balances["a"] = 100  # the balance fell since: the capture cannot post
    result = decide_linked(2, "C", linked("capture", "H", 600), s, NOW).outcome
    assert result.status == FAILED
    assert s.held["a"] == 600 and hold.status == HELD and s.balances["a"] == 100


def test_reversals_add_up_to_at_most_the_original() -> None:
    original = Target("T", 1, "transfer", COMPLETED, (Leg("a", "b", 500),), is_hold=False)
    s = state(balance=500, targets={"T": original})
    s.balances["b"] = 500  # after the original moved 500 from a to b
    first = decide_linked(2, "R1", linked("reversal", "T", 300, reverse=True), s, NOW).outcome
    assert first.status == COMPLETED and original.reversed == 300
    over = decide_linked(3, "R2", linked("reversal", "T", 201, reverse=True), s, NOW).outcome
    assert over.error is not None and over.error.code == "reversal_exceeds_original"
    rest = decide_linked(4, "R3", linked("reversal", "T", 200, reverse=True), s, NOW).outcome
    assert rest.status == COMPLETED and original.reversed == 500
    assert s.balances == {"a": 1000, "b": 0}


def test_a_hold_or_failed_journal_cannot_be_reversed() -> None:
    hold = pending_hold(100)
    s = state(targets={"H": hold})
    result = decide_linked(2, "R", linked("reversal", "H", 100, reverse=True), s, NOW).outcome
    assert result.status == FAILED and result.error is not None
    assert result.error.code == "invalid_request"


def test_a_captured_hold_is_reversed_through_its_capture_only() -> None:
    captured = Target("H", 1, "transfer", COMPLETED, (Leg("a", "b", 100),), is_hold=True)
    s = state(targets={"H": captured})
    s.balances["b"] = 100
    result = decide_linked(2, "R", linked("reversal", "H", 100, reverse=True), s, NOW).outcome
    assert result.status == FAILED and result.error is not None
    assert result.error.code == "invalid_request" and s.balances["b"] == 100


def test_a_capture_cannot_post_more_than_its_hold() -> None:
    hold = pending_hold(100)
    s = state(balance=1000, held=100, targets={"H": hold})
    result = decide_linked(2, "C", linked("capture", "H", 101), s, NOW).outcome
    assert result.status == FAILED and hold.status == HELD and s.held["a"] == 100


def test_a_journal_named_in_its_own_batch_stands_as_that_batch_decided_it() -> None:
    """A reversal (or capture) queued right behind the journal it names may share its
    writer's batch, where the named journal was locked still processing: it is decided
    against the journal as the batch left it, as it would be one batch later (tests/sim,
    seed 19, found the reversal failing `not reversible` only when the two shared a batch)."""
    accounts = {
        "a": AccountSnapshot("a", "USD", "active", 1000, 0),
        "b": AccountSnapshot("b", "USD", "active", 0, 0),
    }
    original = Transaction("transfer", "USD", (Leg("a", "b", 300),))
    plain = decide_batch([(1, "T1", original)], accounts, NOW)
    processing = {"T1": Target("T1", 1, "transfer", PROCESSING, original.legs, is_hold=False),
                  "H2": Target("H2", 2, "transfer", PROCESSING, (Leg("a", "b", 100),),
                               is_hold=True)}
    decision = decide_with_linked(plain, [
        (2, "H2", hold_tx(100)),
        (3, "R3", Transaction("reversal", "USD", (Leg("b", "a", 120),), target="T1")),
        (4, "C4", linked("capture", "H2", 100)),
    ], accounts, processing, NOW)
    assert [o.status for o in decision.outcomes] == [COMPLETED, HELD, COMPLETED, COMPLETED]
    assert decision.balances == {"a": 720, "b": 280} and decision.held == {}
    assert {(t.receipt_code, t.status, t.reversed) for t in decision.targets} == {
        ("T1", COMPLETED, 120), ("H2", COMPLETED, 0)}
