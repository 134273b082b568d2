"""Reading a receipt's status: tracker → Redis → database (→ receipt service while the database
is unreachable)."""

from __future__ import annotations

import logging

from core.ledger.errors import KassaError, Unavailable
from core.ledger.models import ErrorBody
from core.ledger.status import is_final
from core.pipeline.ports import JournalStatus, JournalStore, ReceiptSource, StatusStore
from core.pipeline.tracker import StatusTracker

log = logging.getLogger("kassa.queries")


class StatusQuery:
    def __init__(self, tracker: StatusTracker, redis: StatusStore | None,
                 receipts: ReceiptSource | None, journals: JournalStore) -> None:
        self._tracker = tracker
        self._redis = redis
        self._receipts = receipts
        self._journals = journals

    async def status(self, code: str) -> JournalStatus | None:
        """A final status from memory or Redis (both hold only what an executor
        decided), else the database's, which is authoritative. The receipt service answers
        only when the database cannot (it may lag behind it: registration is batched)."""
        found = self._tracker.get(code)
        if found is not None:
            return found
        cached = await self._from_redis(code)
        if cached is not None and is_final(cached.status):
            return cached
        try:
            return await self._journals.journal_status(code)
        except Unavailable:
            remote = await self._from_receipt_service(code)
            if remote is None:
                raise
            return remote

    async def _from_redis(self, code: str) -> JournalStatus | None:
        if self._redis is None:
            return None
        try:
            return await self._redis.read_status(code)
        except KassaError as exc:
            log.debug("status chain: redis skipped: %s", exc)
            return None

    async def _from_receipt_service(self, code: str) -> JournalStatus | None:
        if self._receipts is None:
            return None
        receipt = await self._receipts.get_receipt(code)
        if receipt is None:
            return None
        # The receipt keeps a failure's code; its message lives in the journal.
        error = (ErrorBody(receipt.error_code, f"the transaction failed: {receipt.error_code}")
                 if receipt.error_code else None)
        return JournalStatus(code, receipt.status, error, receipt.updated_at)
