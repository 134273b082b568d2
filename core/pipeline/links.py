"""Captures, voids and reversals as requests: each names an earlier journal, and becomes a
transaction of its own (legs taken from the journal it names) submitted through the same
durable pipeline as any other, with its own receipt and Idempotency-Key.

These checks answer early and clearly (404, 409 `hold_not_pending`, 409
`reversal_exceeds_original`) on the journal as it stands; the writers decide again under
the named journal's row lock (core/ledger/linked.py), which is what keeps two concurrent
captures, or reversals adding up past the original, from both succeeding.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from core.ledger.errors import (
    HoldNotPending,
    NotFound,
    NotReversible,
    ReversalExceedsOriginal,
    WrongTarget,
)
from core.ledger.linked import CAPTURE, REVERSAL, REVERSIBLE_TYPES, VOID
from core.ledger.models import Leg, Transaction
from core.ledger.status import COMPLETED, HELD


class NamedJournal(msgspec.Struct, frozen=True):
    """What a capture, void or reversal needs to know of the journal it names."""

    receipt_code: str
    type: str
    status: str
    currency: str
    legs: tuple[Leg, ...]
    is_hold: bool
    reversed: int  # the sum of its completed reversals

    @property
    def amount(self) -> int:
        return sum(leg.amount for leg in self.legs)


class NamedJournalReader(Protocol):
    async def named_journal(self, receipt_code: str) -> NamedJournal | None:
        """The journal under this receipt code, or None."""
        ...


class LinkedRequests:
    """Builds the transaction of a capture, void or reversal from the journal it names.

    The transaction depends only on what never changes about that journal (its legs,
    currency, type, whether it is a hold), so a retry under the same Idempotency-Key
    builds the same request and is answered as a replay by the pipeline. The checks on
    what does change (is the hold still pending, how much is reversed) are answered
    early only when there is no key to replay: with a key, the writers decide them.
    """

    def __init__(self, reader: NamedJournalReader) -> None:
        self._reader = reader

    async def capture(self, receipt_code: str, amount: int | None, *, early: bool = True
                      ) -> Transaction:
        """Post `amount` (default: all) of a pending hold; the rest is released."""
        hold = await self._hold(receipt_code, early)
        legs = _scaled(hold, amount, "a multi-leg hold is captured whole")
        return Transaction(CAPTURE, hold.currency, legs, target=receipt_code)

    async def void(self, receipt_code: str, *, early: bool = True) -> Transaction:
        hold = await self._hold(receipt_code, early)
        return Transaction(VOID, hold.currency, hold.legs, target=receipt_code)

    async def reverse(self, receipt_code: str, amount: int | None, description: str | None,
                      *, early: bool = True) -> Transaction:
        """The original's entries the other way: `amount` of a single-leg one (default:
        all of it), a multi-leg one whole."""
        original = await self._named(receipt_code)
        if original.is_hold or original.type not in REVERSIBLE_TYPES:
            raise NotReversible(f"{receipt_code} is not a transfer, deposit, withdrawal or "
                                "capture (a captured hold is reversed through its capture)")
        if early and original.status != COMPLETED:
            raise NotReversible(f"{receipt_code} is {original.status}, not completed")
        if amount is not None and amount > original.amount:
            # More than the original itself is never allowed, whatever happens to it: 409 like
            # any amount above what is left, even with a key (nothing to replay; a retry is
            # refused the same way).
            raise ReversalExceedsOriginal(
                f"reversals of {receipt_code} add up to at most its amount, {original.amount}")
        legs = _scaled(original, amount, "a multi-leg transaction is reversed whole")
        if early:
            if original.reversed + sum(leg.amount for leg in legs) > original.amount:
                raise ReversalExceedsOriginal(
                    f"reversals of {receipt_code} would add up to more than its amount")
        inverse = tuple(Leg(leg.destination, leg.source, leg.amount) for leg in legs)
        return Transaction(REVERSAL, original.currency, inverse, description=description,
                           target=receipt_code)

    async def _hold(self, receipt_code: str, early: bool) -> NamedJournal:
        hold = await self._named(receipt_code)
        if not hold.is_hold:
            raise WrongTarget(f"{receipt_code} is not a hold")
        if early and hold.status != HELD:
            raise HoldNotPending(f"{receipt_code} is {hold.status}, not a pending hold")
        return hold

    async def _named(self, receipt_code: str) -> NamedJournal:
        found = await self._reader.named_journal(receipt_code)
        if found is None:
            raise NotFound(f"no transaction {receipt_code}")
        return found


def _scaled(journal: NamedJournal, amount: int | None, whole_only: str) -> tuple[Leg, ...]:
    """The journal's legs for `amount` of it: all of them when None."""
    if amount is None or amount == journal.amount:
        return journal.legs
    if len(journal.legs) > 1:
        raise WrongTarget(whole_only, param="amount")
    if not 1 <= amount <= journal.amount:
        raise WrongTarget(f"amount must be 1 to {journal.amount}", param="amount")
    (leg,) = journal.legs
    return (Leg(leg.source, leg.destination, amount),)
