"""PATCH /v1/transactions/{receipt_code}: a transaction's metadata is the one thing of it
that can change after it was accepted (merged as accounts' is: core/ledger/metadata.py)."""

from __future__ import annotations

from typing import Any

from core.ledger.metadata import metadata_edit
from core.pipeline.read_ports import JournalMetadata
from core.pipeline.transaction_query import TransactionQuery
from core.pipeline.views import PendingView, TransactionView


class TransactionMetadata:
    def __init__(self, journals: JournalMetadata, query: TransactionQuery) -> None:
        self._journals = journals
        self._query = query

    async def patch(self, receipt_code: str, metadata: dict[str, Any], body_size_max: int
                    ) -> TransactionView | PendingView | None:
        """The transaction as GET answers it after the merge; None for an unknown receipt.
        InvalidRequest (nothing changed) when the merged metadata is over the limits."""
        if not await self._journals.edit_metadata(receipt_code,
                                                  metadata_edit(metadata, body_size_max)):
            return None
        return await self._query.lookup(receipt_code)
