"""Reading a transaction by its receipt code: the full view, or its status alone."""

from __future__ import annotations

from core.ledger.status import PROCESSING
from core.pipeline.ports import JournalStatus
from core.pipeline.queries import StatusQuery
from core.pipeline.read_ports import TransactionReader
from core.pipeline.views import PendingView, TransactionView, pending_view


class TransactionQuery:
    def __init__(self, reader: TransactionReader, status: StatusQuery) -> None:
        self._reader = reader
        self._status = status

    async def transaction(self, receipt_code: str) -> TransactionView | None:
        """The journal as the database has it now, or None for an unknown receipt."""
        return await self._reader.transaction(receipt_code)

    async def status(self, receipt_code: str) -> JournalStatus | None:
        return await self._status.status(receipt_code)

    async def lookup(self, receipt_code: str) -> TransactionView | PendingView | None:
        """The full transaction once it is final; while it is processing, its freshest
        status (memory and Redis may be ahead of the journal row) with its money and no
        entries; None if unknown."""
        view = await self._reader.transaction(receipt_code)
        if view is None or view.status != PROCESSING:
            return view
        found = await self._status.status(receipt_code)
        assert found is not None, "the journal was just read: its status is known"
        return pending_view(view, found)
