"""Reading a receipt's status through the seed's chain: tracker → Redis → receipt service → database."""

from __future__ import annotations

import logging

from core.errors import KassaError
from core.ports import JournalStatus, JournalStore, ReceiptSource, StatusStore
from core.status import RANK, is_final
from core.tracker import StatusTracker

log = logging.getLogger("kassa.queries")


class StatusQuery:
    def __init__(self, tracker: StatusTracker, redis: StatusStore | None,
                 receipts: ReceiptSource | None, journals: JournalStore) -> None:
        self._tracker = tracker
        self._redis = redis
        self._receipts = receipts
        self._journals = journals

    async def status(self, code: str) -> JournalStatus | None:
        """The most advanced status known; a final answer stops the chain early.

        Only the database is authoritative, so a non-final answer from a cache is
        checked against it (a receipt accepted by one process is visible from any other).
        """
        found = self._tracker.get(code)
        if found is not None and is_final(found.status):
            return found
        cached = await self._from_redis(code)
        if cached is not None and is_final(cached.status):
            return cached
        remote = await self._from_receipt_service(code)
        if remote is not None and is_final(remote.status):
            return remote
        stored = await self._journals.journal_status(code)
        if stored is None:
            return None
        candidates = [s for s in (found, cached, stored) if s is not None]
        return max(candidates, key=lambda s: RANK[s.status])

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
        if receipt is None or receipt.error_code:
            # A failure's message lives in the journal: let the database answer it.
            return None
        return JournalStatus(code, receipt.status, None, receipt.updated_at)
