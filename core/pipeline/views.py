"""Read models: what the reads answer, field for field in the order docs/api.md shows
them (the HTTP layer encodes these structs as they are)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, NamedTuple

import msgspec

from core.ledger.decide import Outcome
from core.ledger.models import Entry, ErrorBody, Leg, Transaction
from core.pipeline.ports import JournalStatus


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


# Both listings' `metadata[<key>]=<value>` filters: each key's value must be that string.
MetadataFilter = tuple[tuple[str, str], ...]


class TransactionFilter(msgspec.Struct, frozen=True):
    """GET /v1/transactions' filters, already checked; None: no filter. `statuses` are the
    journal statuses a row may have (`executing` is only ever recorded as `processing`)."""

    account: str | None = None
    statuses: tuple[str, ...] | None = None
    type: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    # metadata[<key>]=<value> filters: (key, value) pairs that must all hold.
    metadata: MetadataFilter = ()


class LegView(msgspec.Struct, frozen=True):
    """One leg of a transaction's money, whatever its status (deposits come from
    `@world:<CUR>`, withdrawals go to it)."""

    source: str
    destination: str
    amount: int


def legs_view(legs: Iterable[Leg]) -> list[LegView]:
    return [LegView(*leg) for leg in legs]


class TransactionView(msgspec.Struct, frozen=True, omit_defaults=True):
    """The full transaction of docs/api.md, as its journal stands; the links appear only
    where they are set, a hold's four fields only on holds (`voided_by` null until voided)."""

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
    amount: int  # its money, whatever its status: the sum of its legs
    legs: list[LegView]
    captures: str | None = None  # a capture's hold
    voids: str | None = None  # a void's hold
    reverses: str | None = None  # a reversal's original
    reversed_by: list[str] | None = None  # an original's completed reversals
    hold_expires_at: str | None = None  # a hold's deadline
    captured_by: list[str] | None = None  # a hold's completed capture (one at most)
    voided_by: str | None | msgspec.UnsetType = msgspec.UNSET  # a hold's void, or null
    captured_amount: int | None = None  # a hold's: what its capture posted
    released_amount: int | None = None  # a hold's: what was reserved and not posted


def link_fields(type_: str, target: str | None) -> dict[str, str]:
    """A journal's link to the one it names, under the name docs/api.md gives it."""
    if target is None:
        return {}
    return {{"capture": "captures", "void": "voids"}.get(type_, "reverses"): target}


class Naming(NamedTuple):
    """A finished journal that names another: a completed capture or reversal, or a void."""

    receipt_code: str
    type: str
    amount: int


def named_by_fields(is_hold: bool, amount: int, naming: list[Naming]) -> dict[str, Any]:
    """What a journal's view says of the journals naming it: an original's `reversed_by`;
    a hold's `captured_by`, `voided_by` and how much of its `amount` was captured and
    released (0 and 0 while pending; a capture releases the rest, a void all of it)."""
    reversed_by = [n.receipt_code for n in naming if n.type == "reversal"] or None
    if not is_hold:
        return {"reversed_by": reversed_by}
    captures = [n for n in naming if n.type == "capture"]
    voids = [n.receipt_code for n in naming if n.type == "void"]
    captured = sum(n.amount for n in captures)
    ended = bool(captures or voids)
    return {"reversed_by": reversed_by, "captured_by": [n.receipt_code for n in captures],
            "voided_by": voids[0] if voids else None, "captured_amount": captured,
            "released_amount": amount - captured if ended else 0}


class PendingView(msgspec.Struct, frozen=True):
    """A transaction not yet final, as GET /v1/transactions/{receipt_code} answers it: its
    status object with its money and no entries."""

    receipt_code: str
    status: str
    error: ErrorBody | None
    updated_at: str
    amount: int
    legs: list[LegView]
    entries: list[Entry]


def pending_view(view: TransactionView, found: JournalStatus | None) -> PendingView:
    """A `processing` journal as read, with its freshest status (memory and Redis may be
    ahead of the row; None: nothing fresher is known)."""
    if found is None:
        return PendingView(view.receipt_code, view.status, view.error, view.created_at or "",
                           view.amount, view.legs, [])
    return PendingView(found.receipt_code, found.status, found.error, found.updated_at,
                       view.amount, view.legs, [])


class JournalPage(msgspec.Struct, frozen=True):
    """A page of journals as the database has them (a `processing` one not yet refreshed)."""

    transactions: list[TransactionView]
    next_cursor: str | None


class TransactionPage(msgspec.Struct, frozen=True):
    transactions: list[TransactionView | PendingView]
    next_cursor: str | None  # None on the last page


def decided_view(outcome: Outcome, tx: Transaction) -> TransactionView:
    """The full transaction of a journal recorded by the commit that decided it, as the
    database has it (both times are the decision's), without reading it back. Only plain
    transactions are decided in their accept's commit: no hold, no link to show."""
    assert tx.hold_expires_in_s is None and tx.target is None, "a linked journal is read back"
    return TransactionView(
        outcome.receipt_code, outcome.status, tx.type, tx.currency, outcome.journal_id,
        tx.description, tx.metadata, list(outcome.entries), outcome.error,
        outcome.finished_at, outcome.finished_at, amount=tx.amount, legs=legs_view(tx.legs))
