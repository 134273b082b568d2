"""The ports of the reads, account administration and health (core/pipeline/ports.py
holds those of the write path). Every I/O method raises core.ledger.errors.Unavailable
when its server is unreachable."""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

import msgspec

from core.ledger.metadata import MetadataEdit
from core.pipeline.views import (
    AccountAtView,
    AccountPage,
    AccountView,
    EntryPage,
    JournalPage,
    MetadataFilter,
    TransactionFilter,
    TransactionView,
)


class AccountStore(Protocol):
    """Accounts as the system of record has them."""

    async def create(self, account_id: str, currency: str, overdraft_limit: int,
                     contact: dict[str, Any] | None, metadata: dict[str, Any]) -> AccountView:
        """Create the account (and its currency's system account if missing); raises
        core.ledger.errors.AccountExists when the id is taken."""
        ...

    async def get(self, account_id: str) -> AccountView | None:
        ...

    async def update(self, account_id: str, status: str | None, edit: MetadataEdit | None
                     ) -> AccountView | None:
        """Set the status (None: keep it) and apply `edit` to the metadata (None: keep it),
        in one transaction holding the account's row; the account after the change, or
        None when there is no such account. What `edit` raises leaves the account as it was."""
        ...

    async def entries(self, account_id: str, limit: int, cursor: str | None) -> EntryPage:
        """Postings newest first, `limit` a page; `cursor` is a page's `next_cursor`."""
        ...


class TransactionReader(Protocol):
    async def transaction(self, receipt_code: str) -> TransactionView | None:
        """The full transaction, or None for an unknown receipt."""
        ...


class JournalMetadata(Protocol):
    async def edit_metadata(self, receipt_code: str, edit: MetadataEdit) -> bool:
        """Apply `edit` to the journal's metadata under its row's lock; False for an unknown
        receipt. What `edit` raises leaves the journal as it was."""
        ...


class Listings(Protocol):
    """Pages over every journal and every account, and balances in the past."""

    async def journals(self, where: TransactionFilter, limit: int, cursor: str | None
                       ) -> JournalPage:
        """Journals matching `where`, newest (highest id) first, `limit` a page; `cursor` is
        a page's `next_cursor` (keyset on the journal id: rows written meanwhile never
        repeat or hide the rows that were there)."""
        ...

    async def accounts(self, currency: str | None, status: str | None, limit: int,
                       cursor: str | None, metadata: MetadataFilter = ()) -> AccountPage:
        """Accounts (system accounts included) by id ascending; with `metadata`, those whose
        metadata has each key with that string value."""
        ...

    async def account_at(self, account_id: str, at: dt.datetime) -> AccountAtView | None:
        """The account with the balance after its newest entry created at or before `at`
        (0 when none); None when there is no such account."""
        ...


class AccountInvalidator(Protocol):
    async def invalidate(self, account_ids: list[str]) -> None:
        """Drop cached views of these accounts in every process."""
        ...


class Ping(Protocol):
    async def ping(self) -> None:
        """Return when the server answers; raise (anything) when it does not."""
        ...


class Backlog(msgspec.Struct, frozen=True):
    size: int  # accepted journals not yet final
    oldest_age_s: float  # age of the oldest of them; 0 when there is none


class BacklogReader(Protocol):
    async def backlog(self) -> Backlog:
        ...
