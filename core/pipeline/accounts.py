"""Account administration and statements: the use case behind /v1/accounts."""

from __future__ import annotations

from typing import Any

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

    async def set_status(self, account_id: str, status: str) -> AccountView | None:
        """Change the status, then drop every process's cached view of the account: a
        locked account must stop passing pre-validation everywhere."""
        account = await self._store.set_status(account_id, status)
        if account is not None and self._cache is not None:
            await self._cache.invalidate([account_id])
        return account

    async def entries(self, account_id: str, limit: int, cursor: str | None
                      ) -> EntryPage | None:
        """A page of the account's postings; None when there is no such account (an
        unknown account is a 404, not an empty statement)."""
        if await self._store.get(account_id) is None:
            return None
        return await self._store.entries(account_id, limit, cursor)
