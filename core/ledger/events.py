"""A finished journal's Kafka event, built from the journal as stored (docs/api.md, Events).

The write path builds no event: the statement that finishes a journal marks it with its
transaction id (`event_xid`), and the relay (server/adapters/kafka/relay.py) reads the
marked journals with their ledger entries and builds each event here, from the row alone.
A journal's event is about the write that finished it, even when the journal moved on
since: a hold's event is `transaction.held` although a capture may have completed it by
the time the relay reads it.
"""

from __future__ import annotations

import msgspec

from core.ledger.models import Entry, ErrorBody, EventLeg, Leg, TransactionEvent
from core.ledger.status import FAILED, HELD

_encode = msgspec.json.Encoder().encode


class TargetNow(msgspec.Struct, frozen=True):
    """The journal a capture, void or reversal names, as it stands when the relay reads."""

    receipt_code: str
    type: str
    status: str
    currency: str
    legs: tuple[Leg, ...]


class FinishedJournal(msgspec.Struct, frozen=True):
    """A journal whose event is due, as the relay reads it."""

    journal_id: int
    receipt_code: str
    type: str
    status: str  # as it stands now: a hold's moves on when it is captured or voided
    currency: str
    legs: tuple[Leg, ...]
    is_hold: bool
    completed_at: str  # RFC 3339, UTC
    entries: list[Entry]
    error: ErrorBody | None = None
    description: str | None = None
    target: str | None = None
    named: TargetNow | None = None  # the target, when this journal names one
    traceparent: str | None = None  # stored at accept (tracing on): the relay's Kafka header

    @property
    def amount(self) -> int:
        return sum(leg.amount for leg in self.legs)

    @property
    def event_status(self) -> str:
        """The status the finishing write gave the journal: a hold that did not fail was
        `held` then, whatever its capture or void made of it since."""
        return HELD if self.is_hold and self.status != FAILED else self.status


def transaction_event(journal: FinishedJournal) -> TransactionEvent:
    links: dict[str, str] = {}
    if journal.target is not None:
        links = {"captures" if journal.type == "capture" else "voids" if journal.type == "void"
                 else "reverses": journal.target}
    if journal.type == "void":  # core/pipeline/expiry.py marks the voids the server makes
        links["reason"] = "expired" if journal.description == "expired" else "requested"
    return TransactionEvent(
        **links,
        event=f"transaction.{journal.event_status}",
        receipt_code=journal.receipt_code,
        journal_id=journal.journal_id,
        type=journal.type,
        currency=journal.currency,
        amount=journal.amount,
        legs=[EventLeg(*leg) for leg in journal.legs],
        entries=journal.entries,
        error=journal.error,
        occurred_at=journal.completed_at,
    )


def event_payload(journal: FinishedJournal) -> bytes:
    """The event's JSON, the Kafka record's value."""
    return _encode(transaction_event(journal))
