"""Read models: what the reads answer, field for field in the order docs/api.md shows
them (the HTTP layer encodes these structs as they are)."""

from __future__ import annotations

import datetime as dt
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
    held: int = 0  # sum of the pending holds with this account as a source
    available: int = 0  # balance - held: what debits and new holds are checked against


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


class AccountPage(msgspec.Struct, frozen=True):
    accounts: list[AccountView]
    next_cursor: str | None  # None on the last page


class AccountAtView(msgspec.Struct, frozen=True):
    """An account with `balance` as it stood at an instant (GET /v1/accounts/{id}?at=):
    the fields of AccountView, never `held` or `available`."""

    id: str
    currency: str
    balance: int
    overdraft_limit: int | None
    status: str
    contact: dict[str, Any] | None
    created_at: str | None
    metadata: dict[str, Any]


class TransactionFilter(msgspec.Struct, frozen=True):
    """GET /v1/transactions' filters, already checked; None: no filter. `statuses` are the
    journal statuses a row may have (`executing` is only ever recorded as `processing`)."""

    account: str | None = None
    statuses: tuple[str, ...] | None = None
    type: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


class TransactionView(msgspec.Struct, frozen=True, omit_defaults=True):
    """The full transaction of docs/api.md, as its journal stands; the links appear only
    where they are set."""

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
    captures: str | None = None  # a capture's hold
    voids: str | None = None  # a void's hold
    reverses: str | None = None  # a reversal's original
    reversed_by: list[str] | None = None  # an original's completed reversals
    hold_expires_at: str | None = None  # a hold's deadline


def link_fields(type_: str, target: str | None) -> dict[str, str]:
    """A journal's link to the one it names, under the name docs/api.md gives it."""
    if target is None:
        return {}
    return {{"capture": "captures", "void": "voids"}.get(type_, "reverses"): target}


class PendingView(msgspec.Struct, frozen=True):
    """A transaction not yet final, as GET /v1/transactions/{receipt_code} answers it: its
    status object with no entries."""

    receipt_code: str
    status: str
    error: ErrorBody | None
    updated_at: str
    entries: list[Entry]


class JournalPage(msgspec.Struct, frozen=True):
    """A page of journals as the database has them (a `processing` one not yet refreshed)."""

    transactions: list[TransactionView]
    next_cursor: str | None


class TransactionPage(msgspec.Struct, frozen=True):
    transactions: list[TransactionView | PendingView]
    next_cursor: str | None  # None on the last page


def decided_view(outcome: Outcome, tx: Transaction) -> TransactionView:
    """The full transaction of a journal recorded by the commit that decided it, as the
    database has it (both times are the decision's), without reading it back."""
    return TransactionView(
        outcome.receipt_code, outcome.status, tx.type, tx.currency, outcome.journal_id,
        tx.description, tx.metadata, list(outcome.entries), outcome.error,
        outcome.finished_at, outcome.finished_at)
