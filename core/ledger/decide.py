"""The executor's pure decision: a batch of accepted transactions against locked accounts.

Given the accounts as locked inside one database transaction, decide each task in
order (one failure fails that task only), and return everything the adapter must
write: new balances, ledger rows as columns and journal outcomes. (No event: the relay
builds each journal's event from the journal row, core/ledger/events.py.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import native
from core.ledger.errors import (
    AccountInactive,
    AccountNotFound,
    AmountOverflow,
    BusinessRuleError,
    CurrencyMismatch,
)
from core.ledger.faults import money_faults
from core.ledger.models import AccountSnapshot, Entry, ErrorBody, Leg, Transaction
from core.ledger.money import (
    DIRECTIONS,
    INT64_MAX,
    INT64_MIN,
    MESSAGES,
    floors_of,
    insufficient,
    money_error,
)
from core.ledger.status import COMPLETED, FAILED
from core.ledger.validation import hold_source_error


@dataclass(frozen=True, slots=True)
class Outcome:
    journal_id: int
    receipt_code: str
    status: str
    entries: list[Entry]
    error: ErrorBody | None
    finished_at: str = ""  # RFC 3339, when decided; "" when not known here
    # Set when the journal was recorded by the commit that decided it (apply at accept):
    # then its created_at and completed_at are both `finished_at`.
    recorded_with_decision: bool = False


@dataclass
class BatchDecision:
    outcomes: list[Outcome]
    balances: dict[str, int]  # only accounts whose balance changed
    ledger_columns: list[list[int] | list[str]]  # journal ids, accounts, directions, amounts, after
    held: dict[str, int] = field(default_factory=dict)  # only accounts whose `held` changed
    targets: list[Any] = field(default_factory=list)  # linked.Target rows to update


def static_error(tx: Transaction, accounts: dict[str, AccountSnapshot]) -> BusinessRuleError | None:
    """Rules that do not depend on balances: existence, currency, status."""
    for account_id in tx.account_ids:
        account = accounts.get(account_id)
        if account is None:
            return AccountNotFound(f"account {account_id} does not exist", param=account_id)
        if account.currency != tx.currency:
            return CurrencyMismatch(f"account {account_id} holds {account.currency}, not {tx.currency}",
                                    param=account_id)
        if account.status != "active":
            return AccountInactive(f"account {account_id} is {account.status}", param=account_id)
    return None


def held_overflow(account_id: str) -> AmountOverflow:
    """A hold that would take an account's `held` past the 64-bit range."""
    return AmountOverflow(f"the amount held on account {account_id} would leave the 64-bit range",
                          param=account_id)


def source_debits(legs: tuple[Leg, ...]) -> dict[str, int]:
    """What each source account gives up across the legs (its part of a hold)."""
    debits: dict[str, int] = {}
    for leg in legs:
        debits[leg.source] = debits.get(leg.source, 0) + leg.amount
    return debits


def decide_batch(
    tasks: list[tuple[int, str, Transaction]],
    accounts: dict[str, AccountSnapshot],
    occurred_at: str,
    *,
    recorded_with_decision: bool = False,
) -> BatchDecision:
    """Decide (journal_id, receipt_code, transaction) tasks in order."""
    balances = {a.id: a.balance for a in accounts.values()}
    floors = floors_of(accounts)
    static = [static_error(tx, accounts) for _, _, tx in tasks]
    postable = [(jid, [tuple(leg) for leg in tx.legs]) for (jid, _, tx), err in zip(tasks, static, strict=True)
                if err is None]
    money_errors, columns = native.post_batch(balances, floors, postable)
    faults = iter(money_faults(accounts, postable, money_errors))
    entries = _entries_by_journal(columns)
    money = iter(money_errors)
    outcomes = []
    for (journal_id, receipt, _), err in zip(tasks, static, strict=True):
        error = ErrorBody(err.code, err.message, err.param) if err is not None else None
        if error is None:
            code, fault = next(money), next(faults)
            if code is not None:
                money_err = money_error(code, fault)
                error = ErrorBody(money_err.code, money_err.message, money_err.param)
        status = COMPLETED if error is None else FAILED
        outcomes.append(Outcome(journal_id, receipt, status, entries.get(journal_id, []), error,
                                occurred_at, recorded_with_decision))
    changed = {k: v for k, v in balances.items() if v != accounts[k].balance}
    return BatchDecision(outcomes, changed, columns)


def _entries_by_journal(columns: list[list[int] | list[str]]) -> dict[int, list[Entry]]:
    journal_ids, account_ids, directions, amounts, after = columns
    grouped: dict[int, list[Entry]] = {}
    for jid, acc, d, amount, bal in zip(journal_ids, account_ids, directions, amounts, after, strict=True):
        grouped.setdefault(jid, []).append(Entry(acc, DIRECTIONS[d], amount, bal))  # type: ignore[index,arg-type]
    return grouped


def prevalidate(tx: Transaction, accounts: dict[str, AccountSnapshot]) -> BusinessRuleError | None:
    """The early reject on the cached view: static rules, then the 64-bit range, then the
    available balance, as the executor decides them.

    Only an early answer: balances may be stale, and the executor decides again under lock.
    A void is never refused here (it releases what a hold reserved, whatever the accounts'
    status since), and a capture spends what its hold reserved: no funds check for it. A
    hold posts nothing: its sources' `held` grows (never on `@world:<CUR>`), within int64
    and their available balance. Anything else is posted leg by leg as native.post_batch
    posts it, every intermediate balance within int64 (`amount_overflow`).
    """
    if tx.type == "void":
        return None
    error = static_error(tx, accounts)
    if error is not None:
        return error
    if tx.hold_expires_in_s is not None:
        return _prevalidate_hold(tx, accounts)
    trial: dict[str, int] = {}
    for source, destination, amount in tx.legs:
        src = trial.get(source, accounts[source].balance) - amount
        trial[source] = src
        dst = trial.get(destination, accounts[destination].balance) + amount
        trial[destination] = dst
        if src < INT64_MIN or dst > INT64_MAX:
            return AmountOverflow(MESSAGES["amount_overflow"],
                                  param=source if src < INT64_MIN else destination)
    if tx.type == "capture":
        return None
    for account_id, balance in trial.items():
        account = accounts[account_id]
        if account.floor is not None and balance < account.floor and balance < account.balance:
            return insufficient(account_id)
    return None


def _prevalidate_hold(tx: Transaction, accounts: dict[str, AccountSnapshot]
                      ) -> BusinessRuleError | None:
    """A new hold, by the rules of linked._reserve: no system account as a source, then for
    each source `held` within int64 and the debit within its available balance."""
    error = hold_source_error(tx)
    if error is not None:
        return error
    for account_id, amount in source_debits(tx.legs).items():
        account = accounts[account_id]
        if account.held + amount > INT64_MAX:
            return held_overflow(account_id)
        if account.floor is not None and account.balance - amount < account.floor:
            return insufficient(account_id)
    return None
