"""The unit of work queued in one process: an accepted journal awaiting its writer.

Its own module because accept, the pool, isolation, recovery and the executor all pass
it around, and none of them owns it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from core.ledger.decide import Outcome
from core.ledger.models import Transaction


@dataclass(slots=True, eq=False)
class Task:
    """One accepted journal waiting for execution in this process."""

    journal_id: int
    receipt_code: str
    transaction: Transaction
    accepted_at: float  # monotonic seconds
    waiter: asyncio.Future[Outcome | None] | None = None
    # The X-Request-Id of the request that submitted it, for its outcome's log line (the
    # writers and effect workers serve no request); `-` for recovered journals.
    request_id: str = "-"
    # Its request's W3C traceparent (tracing on), linked by the executor batch that runs it.
    traceparent: str | None = None
