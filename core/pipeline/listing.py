"""Listings: GET /v1/transactions (filtered, newest first), GET /v1/accounts, and an
account's balance at an instant."""

from __future__ import annotations

import datetime as dt

from core.ledger.status import PROCESSING
from core.pipeline.queries import StatusQuery
from core.pipeline.read_ports import Listings
from core.pipeline.views import (
    AccountAtView,
    AccountPage,
    MetadataFilter,
    PendingView,
    TransactionFilter,
    TransactionPage,
    TransactionView,
    pending_view,
)


class Listing:
    def __init__(self, store: Listings, status: StatusQuery) -> None:
        self._store = store
        self._status = status

    async def transactions(self, where: TransactionFilter, limit: int, cursor: str | None
                           ) -> TransactionPage:
        """A page of transactions, each as GET /v1/transactions/{receipt_code} answers it:
        the full transaction, or, while its journal is `processing`, its freshest status
        (memory and Redis may be ahead of the row) with no entries."""
        page = await self._store.journals(where, limit, cursor)
        items: list[TransactionView | PendingView] = [
            await self._pending(view) if view.status == PROCESSING else view
            for view in page.transactions]
        return TransactionPage(items, page.next_cursor)

    async def _pending(self, view: TransactionView) -> PendingView:
        return pending_view(view, await self._status.status(view.receipt_code))

    async def accounts(self, currency: str | None, status: str | None, limit: int,
                       cursor: str | None, metadata: MetadataFilter = ()) -> AccountPage:
        return await self._store.accounts(currency, status, limit, cursor, metadata)

    async def account_at(self, account_id: str, at: dt.datetime) -> AccountAtView | None:
        return await self._store.account_at(account_id, at)
