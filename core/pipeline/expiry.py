"""Hold expiry: every process looks for pending holds past their deadline and submits a
void for each, through the same pipeline as a client's void.

Exactly once, with any number of processes and instances: every expiry void carries the
Idempotency-Key `expire:<hold receipt>` in a scope of its own, so the database's unique
key lets one journal in and answers the others as repeats; and the writers decide the
void under the hold's row lock, so a capture that got there first makes it fail
`hold_not_pending` instead of voiding a captured hold. A process that dies after the
accept leaves a durable journal that recovery executes, like any other.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from core.kit.rate_limit import Throttle
from core.ledger.errors import KassaError, Unavailable
from core.ledger.linked import VOID
from core.ledger.models import Transaction
from core.pipeline.accept import TransactionService
from core.pipeline.idempotency import request_hash
from core.pipeline.links import NamedJournal
from core.pipeline.submission import Submission

log = logging.getLogger("kassa.expiry")

EXPIRY_SCOPE = "kassa:hold-expiry"  # never a key digest (24 hex characters)
EXPIRED = "expired"  # the description of a void the server made
OUTAGE_WARNING_INTERVAL_S = 5.0  # while the database is down, one line this often


class ExpiredHolds(Protocol):
    async def expired_holds(self, limit: int) -> list[NamedJournal]:
        """Pending holds past their deadline, oldest deadline first."""
        ...


def expiry_void(hold: NamedJournal) -> Submission:
    tx = Transaction(VOID, hold.currency, hold.legs, description=EXPIRED,
                     target=hold.receipt_code)
    return Submission(tx, EXPIRY_SCOPE, f"expire:{hold.receipt_code}", request_hash(tx),
                      cached_key=False)


class HoldExpiry:
    def __init__(self, holds: ExpiredHolds, service: TransactionService, *,
                 interval_s: float, batch_max: int = 100) -> None:
        self._holds = holds
        self._service = service
        self._interval_s = interval_s
        self._batch_max = batch_max
        self._outage_warning = Throttle(OUTAGE_WARNING_INTERVAL_S)

    async def sweep(self) -> int:
        """Submit a void for each expired hold found; returns how many were submitted."""
        expired = await self._holds.expired_holds(self._batch_max)
        submitted = 0
        for hold in expired:
            try:
                await self._service.submit(expiry_void(hold))
            except KassaError as exc:  # one hold's refusal must not stall the others
                log.warning("[HOLD EXPIRY] void of %s not accepted now: %s",
                            hold.receipt_code, exc)
            else:
                submitted += 1
        if submitted:
            log.info("[HOLD EXPIRY] voids submitted for %d expired holds", submitted)
        return submitted

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Unavailable as exc:  # the database is down: the next tick tries again
                # One line every few seconds for an outage, not one per tick.
                if self._outage_warning.ready():
                    log.warning("[HOLD EXPIRY] sweep failed: %s", exc.message)
            except KassaError as exc:
                log.error("[HOLD EXPIRY] sweep failed: %r", exc)
            except Exception:
                log.exception("[HOLD EXPIRY] sweep failed")  # a defect: with its traceback
            await asyncio.sleep(self._interval_s)
