"""Events and receipts built from a finished journal as the relay reads it
(core/ledger/events.py, core/pipeline/receipts.py)."""

from __future__ import annotations

import msgspec

from core.ledger.events import FinishedJournal, TargetNow, event_payload, transaction_event
from core.ledger.models import Entry, ErrorBody, Leg
from core.ledger.status import COMPLETED, FAILED, HELD, VOIDED
from core.pipeline.ports import ReceiptRecord
from core.pipeline.receipts import receipt_records

AT = "2026-12-07T20:00:00.000001Z"
LEGS = (Leg("alice", "bob", 30), Leg("alice", "carol", 12))


def journal(**fields: object) -> FinishedJournal:
    base: dict[str, object] = {
        "journal_id": 7, "receipt_code": "RCP-7", "type": "transfer", "status": COMPLETED,
        "currency": "USD", "legs": LEGS, "is_hold": False, "completed_at": AT,
        "entries": [Entry("alice", "debit", 30, 70), Entry("bob", "credit", 30, 30)]}
    return FinishedJournal(**(base | fields))  # type: ignore[arg-type]


def test_an_event_carries_the_amount_and_legs_of_its_journal() -> None:
    event = msgspec.json.decode(event_payload(journal()))
    assert event == {
        "event": "transaction.completed", "receipt_code": "RCP-7", "journal_id": 7,
        "type": "transfer", "currency": "USD", "amount": 42,
        "legs": [{"source": "alice", "destination": "bob", "amount": 30},
                 {"source": "alice", "destination": "carol", "amount": 12}],
        "entries": [{"account": "alice", "direction": "debit", "amount": 30, "balance_after": 70},
                    {"account": "bob", "direction": "credit", "amount": 30, "balance_after": 30}],
        "error": None, "occurred_at": AT}


def test_a_hold_is_held_in_its_event_whatever_became_of_it_since() -> None:
    for now in (HELD, COMPLETED, VOIDED):
        assert transaction_event(journal(is_hold=True, status=now, entries=[])).event == \
            "transaction.held"
    failed = journal(is_hold=True, status=FAILED, entries=[],
                     error=ErrorBody("insufficient_funds", "no"))
    assert transaction_event(failed).event == "transaction.failed"


def test_linked_journals_name_their_target_and_a_void_its_reason() -> None:
    capture = transaction_event(journal(type="capture", target="RCP-1"))
    assert (capture.captures, capture.voids, capture.reverses, capture.reason) == \
        ("RCP-1", None, None, None)
    void = transaction_event(journal(type="void", status=VOIDED, target="RCP-1", entries=[],
                                     description="expired"))
    assert (void.event, void.voids, void.reason) == ("transaction.voided", "RCP-1", "expired")
    assert transaction_event(journal(type="void", status=VOIDED, target="RCP-1")).reason == \
        "requested"
    assert transaction_event(journal(type="reversal", target="RCP-1")).reverses == "RCP-1"


def test_receipts_carry_the_status_now_and_the_target_a_linked_journal_changed() -> None:
    hold = TargetNow("RCP-1", "transfer", COMPLETED, "USD", (Leg("alice", "bob", 30),))
    capture = journal(type="capture", target="RCP-1", named=hold)
    failed_void = journal(journal_id=8, receipt_code="RCP-8", type="void", status=FAILED,
                          target="RCP-1", named=hold, entries=[],
                          error=ErrorBody("hold_not_pending", "no"))
    assert receipt_records([capture, failed_void]) == [
        ReceiptRecord("RCP-7", "capture", "USD", 42, ["alice", "bob", "carol"], COMPLETED, None),
        ReceiptRecord("RCP-1", "transfer", "USD", 30, ["alice", "bob"], COMPLETED, None),
        ReceiptRecord("RCP-8", "void", "USD", 42, ["alice", "bob", "carol"], FAILED,
                      "hold_not_pending")]
