"""The money rules both decisions apply, in one place: decide.py (plain batches, through
native.post_batch) and linked.py (holds, captures, voids, reversals) post with the same
range, floors, entry directions and errors.

A balance is a bigint column; a debit may take it down to its floor: what is held stays
reserved, below that the overdraft limit (none for `@world:<CUR>`, whose floor is the
bottom of the range).
"""

from __future__ import annotations

from collections.abc import Mapping

import native
from core.ledger.errors import AmountOverflow, BusinessRuleError, InsufficientFunds
from core.ledger.models import AccountSnapshot

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
DIRECTIONS = {native.DEBIT: "debit", native.CREDIT: "credit"}

# What native.post_batch's result codes stand for.
MESSAGES = {
    "insufficient_funds": "an account debited by this transaction lacks the available balance",
    "amount_overflow": "an account balance would leave the 64-bit range",
}


def floor(overdraft_limit: int | None, held: int) -> int:
    """The lowest balance a debit may reach."""
    return INT64_MIN if overdraft_limit is None else held - overdraft_limit


def floors_of(accounts: Mapping[str, AccountSnapshot]) -> dict[str, int]:
    return {a.id: floor(a.overdraft_limit, a.held) for a in accounts.values()}


def money_error(code: str, account_id: str | None) -> BusinessRuleError:
    """The error a native.post_batch code stands for, naming the account at fault."""
    kind = InsufficientFunds if code == "insufficient_funds" else AmountOverflow
    return kind(MESSAGES[code], param=account_id)


def insufficient(account_id: str) -> InsufficientFunds:
    """A debit or a new hold refused on this account's available balance."""
    return InsufficientFunds(f"account {account_id} lacks the available balance",
                             param=account_id)
