"""Read models: what the reads answer, field for field in the order docs/api.md shows
them (the HTTP layer encodes these structs as they are)."""

from __future__ import annotations

from typing import Any

import msgspec

from core.ledger.decide import Outcome
from core.ledger.models import Entry, ErrorBody, Transaction


class AccountView(msgspec.Struct, frozen=True):
    id: str
    currency: str
    balance: int
    overdraft_limit: int | None  # None: a system account, unbounded
    status: str
    contact: dict[str, Any] | None
    created_at: str | None
    metadata: dict[str, Any]


class EntryLine(msgspec.Struct, frozen=True):
    """One posting on an account's statement."""

    receipt_code: str
    journal_id: int
    direction: str
    amount: int
    balance_after: int
    created_at: str | None


class EntryPage(msgspec.Struct, frozen=True):
    entries: list[EntryLine]
    next_cursor: str | None  # None on the last page


class TransactionView(msgspec.Struct, frozen=True):
    """The full transaction of docs/api.md, as its journal stands."""

    receipt_code: str
    status: str
    type: str
    currency: str
    journal_id: int
    description: str | None
    metadata: dict[str, Any] | None
    entries: list[Entry]
    error: ErrorBody | None
    created_at: str | None
    completed_at: str | None


def decided_view(outcome: Outcome, tx: Transaction) -> TransactionView:
    """The full transaction of a journal recorded by the commit that decided it, as the
    database has it (both times are the decision's), without reading it back."""
    return TransactionView(
        outcome.receipt_code, outcome.status, tx.type, tx.currency, outcome.journal_id,
        tx.description, tx.metadata, list(outcome.entries), outcome.error,
        outcome.finished_at, outcome.finished_at)
