"""The ledger's domain shapes: plain, immutable, money in integer minor units."""

from __future__ import annotations

from functools import cached_property
from typing import Any, NamedTuple

import msgspec

AMOUNT_MAX = 2**53 - 1
LEGS_MAX = 64
HOLD_EXPIRES_DEFAULT_S = 604_800  # a week
HOLD_EXPIRES_MAX_S = 2_592_000  # thirty days
WORLD_PREFIX = "@world:"


def world_account(currency: str) -> str:
    """The system counterparty of deposits and withdrawals in `currency`."""
    return f"{WORLD_PREFIX}{currency}"


class Leg(NamedTuple):
    source: str
    destination: str
    amount: int


class Transaction(msgspec.Struct, frozen=True, dict=True):
    """A validated, normalised transaction request: every form becomes legs.

    `amount` and `account_ids` are computed once per transaction, on first use, and kept
    (`dict=True` gives the struct the `__dict__` that cached_property stores them in): the
    accept path reads them several times (the cached view, pre-validation, log lines, the
    executor's locks). The list is shared: callers do not change it."""

    type: str
    currency: str
    legs: tuple[Leg, ...]
    description: str | None = None
    metadata: dict[str, Any] = {}
    # A hold (transfer or withdrawal): seconds until the server voids it.
    hold_expires_in_s: int | None = None
    # The receipt code a capture or void names (the hold) or a reversal (the original).
    target: str | None = None

    @cached_property
    def amount(self) -> int:
        return sum(leg.amount for leg in self.legs)

    @cached_property
    def account_ids(self) -> list[str]:
        """Every account touched, sorted: the lock order."""
        return sorted({a for leg in self.legs for a in (leg.source, leg.destination)})


class AccountSnapshot(msgspec.Struct, frozen=True):
    """What pre-validation and the executor need to know about one account."""

    id: str
    currency: str
    status: str
    balance: int
    overdraft_limit: int | None  # None: unlimited (system accounts)
    contact: dict[str, str] | None = None
    held: int = 0  # sum of this account's pending holds as a source

    @property
    def floor(self) -> int | None:
        """The lowest balance a debit may reach: what is held stays reserved."""
        return None if self.overdraft_limit is None else self.held - self.overdraft_limit


class Entry(msgspec.Struct, frozen=True):
    account: str
    direction: str
    amount: int
    balance_after: int


class ErrorBody(msgspec.Struct, frozen=True):
    code: str
    message: str
    param: str | None = None  # a failed transaction's account at fault, when one is


class EventLeg(msgspec.Struct, frozen=True):
    source: str
    destination: str
    amount: int


class TransactionEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """The Kafka event of a finished transaction (docs/api.md, Events); the links appear
    only on the journals that name another one. Built from the journal row by the relay
    (core/ledger/events.py), never on the write path."""

    event: str
    receipt_code: str
    journal_id: int
    type: str
    currency: str
    amount: int  # the sum of the legs
    legs: list[EventLeg]
    entries: list[Entry]
    error: ErrorBody | None
    occurred_at: str
    captures: str | None = None
    voids: str | None = None
    reverses: str | None = None
    reason: str | None = None  # a void's: "requested" or "expired"
