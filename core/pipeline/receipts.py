"""What the receipt service keeps of finished journals: the relay's receipts sink
(server/adapters/kafka/relay.py) registers these for each batch of journals it reads."""

from __future__ import annotations

from core.ledger.events import FinishedJournal, TargetNow
from core.ledger.models import Leg
from core.ledger.status import FAILED
from core.pipeline.ports import ReceiptRecord


def _accounts(legs: tuple[Leg, ...]) -> list[str]:
    return sorted({a for leg in legs for a in (leg.source, leg.destination)})


def receipt_records(journals: list[FinishedJournal]) -> list[ReceiptRecord]:
    """Each journal's receipt with the status it has now, and after a capture, void or
    reversal the named journal's receipt as it stands (a capture completes its hold). The
    receipt service keeps the furthest status of each code, so a status read later never
    goes backwards there. A linked journal that failed changed nothing it named."""
    records = []
    for j in journals:
        records.append(ReceiptRecord(j.receipt_code, j.type, j.currency, j.amount,
                                     _accounts(j.legs), j.status,
                                     j.error.code if j.error else None))
        if j.named is not None and j.status != FAILED:
            records.append(_named_record(j.named))
    return records


def _named_record(target: TargetNow) -> ReceiptRecord:
    return ReceiptRecord(target.receipt_code, target.type, target.currency,
                         sum(leg.amount for leg in target.legs), _accounts(target.legs),
                         target.status, None)
