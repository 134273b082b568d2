"""Account administration and statements: the use case behind /v1/accounts."""

from __future__ import annotations

from typing import Any

from core.ledger.metadata import metadata_edit
from core.pipeline.read_ports import AccountInvalidator, AccountStore
from core.pipeline.views import AccountView, EntryPage


class AccountService:
    def __init__(self, store: AccountStore, cache: AccountInvalidator | None) -> None:
        self._store = store
        self._cache = cache  # None when no process caches accounts (no Redis)

    async def create(self, account_id: str, currency: str, overdraft_limit: int,
                     contact: dict[str, Any] | None, metadata: dict[str, Any]) -> AccountView:
        return await self._store.create(account_id, currency, overdraft_limit, contact, metadata)

    async def get(self, account_id: str) -> AccountView | None:
        return await self._store.get(account_id)

    async def update(self, account_id: str, status: str | None,
                     metadata: dict[str, Any] | None, body_size_max: int) -> AccountView | None:
        """Change the status and/or merge `metadata` into the stored object (core/ledger/
        metadata.py; InvalidRequest when the result is over the limits), together. After a
        status change, drop every process's cached view of the account: a locked account
        must stop passing pre-validation everywhere."""
        edit = metadata_edit(metadata, body_size_max) if metadata is not None else None
        account = await self._store.update(account_id, status, edit)
        if account is not None and status is not None and self._cache is not None:
            await self._cache.invalidate([account_id])
        return account

    async def entries(self, account_id: str, limit: int, cursor: str | None
                      ) -> EntryPage | None:
        """A page of the account's postings; None when there is no such account (an
        unknown account is a 404, not an empty statement)."""
        if await self._store.get(account_id) is None:
            return None
        return await self._store.entries(account_id, limit, cursor)
