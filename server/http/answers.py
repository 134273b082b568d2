"""What a submission's answer is over HTTP: core says what happened (accepted, finished,
replayed), this says which status and body that is (docs/api.md)."""

from __future__ import annotations

from typing import Any

from core.ledger.status import COMPLETED, FAILED, HELD, VOIDED
from core.pipeline.submission import Accepted, Finished, Submitted
from core.pipeline.transaction_query import TransactionQuery
from core.pipeline.views import decided_view
from server.http.errors import error_dict

# A transaction that failed on execution answers 422, but for the two conflicts with
# another journal (a hold no longer pending, reversals over their original): 409.
FAILED_STATUS = {"hold_not_pending": 409, "reversal_exceeds_original": 409}


def accepted_body(receipt_code: str, processing_time: str) -> bytes:
    """The 202 body, byte for byte what a replay returns."""
    return (b'{"receipt_code":"' + receipt_code.encode() + b'","status":"processing",'
            b'"processing_time":"' + processing_time.encode() + b'"}')


async def answer(queries: TransactionQuery, submitted: Submitted) -> tuple[int, Any]:
    """The HTTP status and body for one submission: a finished one from the outcome in
    memory (no read that could fail after the transaction was posted), a replayed
    `?wait=true` one from the journal as it stands."""
    code = submitted.receipt_code
    if isinstance(submitted, Accepted):
        return 202, submitted.stored_answer or accepted_body(code, submitted.processing_time)
    if isinstance(submitted, Finished) and submitted.outcome.recorded_with_decision:
        view = decided_view(submitted.outcome, submitted.transaction)
    else:
        found = await queries.transaction(code)
        assert found is not None, "a submitted journal is durable"
        view = found
    if view.status in (COMPLETED, HELD, VOIDED):
        return 201, view
    if view.status == FAILED:
        assert view.error is not None, "a failed journal carries its error"
        error = error_dict(view.error.code, view.error.message, param=view.error.param,
                           receipt_code=code)
        return FAILED_STATUS.get(view.error.code, 422), {**error, "receipt_code": code}
    return 202, accepted_body(code, submitted.processing_time)
