"""PgJournalStore.journal_of_key against the real PostgreSQL: what the accept reads before
refusing a keyed request early (core/pipeline/accept.py, tests/unit/test_accept.py)."""

from __future__ import annotations

import asyncpg

from core.ledger.status import PROCESSING
from core.pipeline.ports import ExistingJournal
from server.adapters.postgres.journals import PgJournalStore
from tests.fixtures.pipeline import pending


async def test_a_journal_is_found_by_its_scope_and_key(db: asyncpg.Pool) -> None:
    store = PgJournalStore(db, lease_s=30)
    journal = pending("transfer", 10, source="alice", destination="bob", key="k-1")
    (journal_id,) = await store.insert_pending([journal])
    assert await store.journal_of_key("scope", "k-1") == ExistingJournal(
        journal_id, journal.receipt_code, journal.request_hash, "async", PROCESSING, 100)
    assert await store.journal_of_key("scope", "k-2") is None
    assert await store.journal_of_key("another scope", "k-1") is None
