"""Holds, captures, voids and reversals: the decisions of journals that name another one.

A hold reserves its amount on each source (`held` grows, nothing is posted); a capture
posts some or all of a pending hold and releases the rest; a void releases it; a
reversal posts a completed journal's entries the other way, at most its amount in all.
The adapter locks the accounts and the named journals (their `Target`s) inside the
database transaction; these functions decide against that locked state, one journal
at a time, and change the state in place so the next journal of the batch sees it.

Every decision is all or nothing: a journal that fails changes no balance, no hold and
no target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import native
from core.ledger.decide import (
    BatchDecision,
    Outcome,
    held_overflow,
    source_debits,
    static_error,
)
from core.ledger.errors import (
    BusinessRuleError,
    CaptureOutsideHold,
    HoldNotPending,
    HoldWithoutBalance,
    NotReversible,
    ReversalExceedsOriginal,
)
from core.ledger.faults import fault_of
from core.ledger.models import AccountSnapshot, Entry, ErrorBody, Leg, Transaction
from core.ledger.money import DIRECTIONS, INT64_MAX, floor, insufficient, money_error
from core.ledger.status import COMPLETED, FAILED, HELD, VOIDED, is_final

CAPTURE, VOID, REVERSAL = "capture", "void", "reversal"
LINKED_TYPES = frozenset({CAPTURE, VOID, REVERSAL})
REVERSIBLE_TYPES = frozenset({"transfer", "deposit", "withdrawal", CAPTURE})


@dataclass(slots=True)
class Target:
    """A journal named by a capture, void or reversal, as locked for this batch."""

    receipt_code: str
    journal_id: int
    type: str
    status: str
    legs: tuple[Leg, ...]
    is_hold: bool
    reversed: int = 0  # sum of the completed reversals of this journal
    currency: str = ""

    @property
    def amount(self) -> int:
        return sum(leg.amount for leg in self.legs)


def is_linked(tx: Transaction) -> bool:
    """Whether deciding `tx` needs more than balances: a hold, or a journal naming one."""
    return tx.hold_expires_in_s is not None or tx.type in LINKED_TYPES


@dataclass
class LedgerState:
    """Balances and holds of the locked accounts while a batch is decided."""

    accounts: dict[str, AccountSnapshot]
    balances: dict[str, int]
    held: dict[str, int]
    targets: dict[str, Target]
    changed_targets: dict[str, Target] = field(default_factory=dict)

    @classmethod
    def of(cls, accounts: dict[str, AccountSnapshot], targets: dict[str, Target]) -> LedgerState:
        return cls(accounts, {a.id: a.balance for a in accounts.values()},
                   {a.id: a.held for a in accounts.values()}, targets)

    def floor(self, account_id: str) -> int:
        """The lowest balance a debit may reach, with what this batch holds so far."""
        return floor(self.accounts[account_id].overdraft_limit, self.held[account_id])


@dataclass(frozen=True, slots=True)
class LinkedOutcome:
    outcome: Outcome
    target: Target | None  # the target as it stands after this journal, when one was named


def decide_linked(journal_id: int, receipt_code: str, tx: Transaction, state: LedgerState,
                  occurred_at: str) -> LinkedOutcome:
    """Decide one hold, capture, void or reversal against `state`, changing it on success."""
    target = state.targets.get(tx.target) if tx.target is not None else None
    try:
        status, entries = _decide(journal_id, tx, state, target)
    except BusinessRuleError as exc:
        failed = Outcome(journal_id, receipt_code, FAILED, [],
                         ErrorBody(exc.code, exc.message, exc.param), occurred_at)
        return LinkedOutcome(failed, target)
    if target is not None:
        state.changed_targets[target.receipt_code] = target
    return LinkedOutcome(Outcome(journal_id, receipt_code, status, entries, None, occurred_at),
                         target)


def _decide(journal_id: int, tx: Transaction, state: LedgerState, target: Target | None
            ) -> tuple[str, list[Entry]]:
    # A void releases a reservation whatever happened to the accounts since the hold (a
    # locked account must not keep funds held forever); everything else obeys the rules.
    error = static_error(tx, state.accounts) if tx.type != VOID else None
    if error is not None:
        raise error
    if tx.type == CAPTURE:
        return COMPLETED, _capture(journal_id, tx, state, _pending_hold(target, tx))
    if tx.type == VOID:
        hold = _pending_hold(target, tx)
        _release(hold, state)
        hold.status = VOIDED
        return VOIDED, []
    if tx.type == REVERSAL:
        return COMPLETED, _reverse(journal_id, tx, state, target)
    _reserve(tx, state)
    return HELD, []


def _pending_hold(target: Target | None, tx: Transaction) -> Target:
    if target is None or not target.is_hold or target.status != HELD:
        raise HoldNotPending(f"{tx.target} is not a pending hold")
    return target


def _reserve(tx: Transaction, state: LedgerState) -> None:
    """A new hold: no source without a floor (`@world:<CUR>` has no balance to reserve),
    and for each source `held` within int64 and the debit within its available balance."""
    debits = source_debits(tx.legs)
    for account_id in debits:
        if state.accounts[account_id].overdraft_limit is None:
            raise HoldWithoutBalance(f"{account_id} cannot be the source of a hold: a system "
                                     "account has no balance to reserve", param=account_id)
    for account_id, amount in debits.items():
        if state.held[account_id] + amount > INT64_MAX:
            raise held_overflow(account_id)
        if state.balances[account_id] - amount < state.floor(account_id):
            raise insufficient(account_id)
    for account_id, amount in debits.items():
        state.held[account_id] += amount


def _release(hold: Target, state: LedgerState) -> None:
    for account_id, amount in source_debits(hold.legs).items():
        state.held[account_id] -= amount


def _capture(journal_id: int, tx: Transaction, state: LedgerState, hold: Target) -> list[Entry]:
    """Release the whole hold, then post the captured legs; undo the release on failure."""
    if not _within(tx.legs, hold.legs):
        raise CaptureOutsideHold(f"a capture of {hold.receipt_code} must post its legs, at most")
    _release(hold, state)
    try:
        entries = _post(journal_id, tx.legs, state)
    except BusinessRuleError:
        for account_id, amount in source_debits(hold.legs).items():
            state.held[account_id] += amount
        raise
    hold.status = COMPLETED
    return entries


def _reverse(journal_id: int, tx: Transaction, state: LedgerState, original: Target | None
             ) -> list[Entry]:
    # A hold posts nothing: once captured it is `completed`, but its capture holds the
    # entries, and it is the capture that is reversed (never both).
    if (original is None or original.is_hold or original.status != COMPLETED
            or original.type not in REVERSIBLE_TYPES):
        raise NotReversible(f"{tx.target} is not a completed transaction that can be reversed")
    if original.reversed + tx.amount > original.amount:
        raise ReversalExceedsOriginal(
            f"reversals of {original.receipt_code} would add up to more than its amount")
    entries = _post(journal_id, tx.legs, state)
    original.reversed += tx.amount
    return entries


def _within(legs: tuple[Leg, ...], hold: tuple[Leg, ...]) -> bool:
    """The hold's legs themselves, or one leg of a single-leg hold for at most its amount."""
    if legs == hold:
        return True
    return (len(legs) == len(hold) == 1 and legs[0][:2] == hold[0][:2]
            and legs[0].amount <= hold[0].amount)


def _post(journal_id: int, legs: tuple[Leg, ...], state: LedgerState) -> list[Entry]:
    """Post legs against the current balances and floors, all or none (native's rules)."""
    names = {a for leg in legs for a in (leg.source, leg.destination)}
    floors = {a: state.floor(a) for a in names}
    errors, columns = native.post_batch(state.balances, floors, [(journal_id, list(legs))])
    if errors[0] is not None:  # native left the balances as they were: replay for the fault
        raise money_error(errors[0], fault_of(errors[0], legs, state.balances, floors))
    _, accounts, directions, amounts, after = columns
    return [Entry(a, DIRECTIONS[d], n, b)
            for a, d, n, b in zip(accounts, directions, amounts, after, strict=True)]


def decided_here(targets: dict[str, Target], outcomes: list[Outcome]) -> None:
    """A named journal decided earlier in this batch stands as decided for the journals
    after it: it was locked still unfinished (a reversal or capture queued right behind
    the journal it names, in one batch), and without this the outcome would depend on
    whether the two happened to share a batch (found by tests/sim)."""
    for outcome in outcomes:
        target = targets.get(outcome.receipt_code)
        if target is not None and not is_final(target.status) and target.status != HELD:
            target.status = outcome.status


def decide_with_linked(plain: BatchDecision, linked: list[tuple[int, str, Transaction]],
                       accounts: dict[str, AccountSnapshot], targets: dict[str, Target],
                       occurred_at: str) -> BatchDecision:
    """The batch's plain decision extended by its linked journals, decided after it in
    order against the balances it left: one decision for the adapter to write."""
    state = LedgerState.of(accounts, targets)
    state.balances.update(plain.balances)
    columns: list[list[int] | list[str]] = [list(c) for c in plain.ledger_columns]  # type: ignore[misc]
    outcomes = list(plain.outcomes)
    decided_here(targets, outcomes)
    for journal_id, code, tx in linked:
        outcome = decide_linked(journal_id, code, tx, state, occurred_at).outcome
        outcomes.append(outcome)
        decided_here(targets, [outcome])
        for entry in outcome.entries:
            row = (journal_id, entry.account, native.DEBIT if entry.direction == "debit"
                   else native.CREDIT, entry.amount, entry.balance_after)
            for col, value in zip(columns, row, strict=True):
                col.append(value)  # type: ignore[arg-type]
    held = {a: h for a, h in state.held.items() if h != accounts[a].held}
    balances = {a: b for a, b in state.balances.items()
                if b != accounts[a].balance or a in held}
    return BatchDecision(outcomes, balances, columns, held,
                         list(state.changed_targets.values()))
