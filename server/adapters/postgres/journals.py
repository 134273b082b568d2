"""The journal store: durable accept, the executor's unit of work, recovery claims.

Its SQL is in journal_sql, the unit of work in ledger_unit, and the transaction whose
commit may be lost (with the check after it) in lost_commit."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import msgspec

from core.ledger.models import AccountSnapshot, ErrorBody, Leg, Transaction
from core.pipeline.ports import (
    ClaimedJournal,
    ExistingJournal,
    JournalStatus,
    PendingJournal,
    RecordedJournal,
)
from server.adapters.postgres import lost_commit
from server.adapters.postgres.journal_sql import (
    CLAIM_EXPIRED,
    GET_ACCOUNTS,
    INSERT_PENDING,
    JOURNAL_STATUS,
    MARK_FAILED,
    RELEASE_LEASES,
    RENEW_LEASES,
)
from server.adapters.postgres.ledger_unit import (
    PgLedgerUnit,
    existing_by_key,
    journals_of_keys,
    pending_row,
    snapshot,
)
from server.adapters.postgres.pool import converted_errors, iso, read

__all__ = ["PgJournalStore", "PgLedgerUnit", "transaction_of"]

_legs = msgspec.json.Decoder(list[tuple[str, str, int]])
_meta = msgspec.json.Decoder(dict)


class PgJournalStore:
    def __init__(self, pool: asyncpg.Pool, *, lease_s: float) -> None:
        self._pool = pool
        self._lease_s = lease_s

    async def insert_pending(self, journals: list[PendingJournal]) -> list[int | ExistingJournal]:
        args = INSERT_PENDING.args(journals=[pending_row(j) for j in journals],
                                   lease_owner=journals[0].lease_owner, lease_s=self._lease_s)
        async with self._transaction() as conn:
            ids = {r["external_ref"]: r["id"] for r in
                   await conn.fetch(INSERT_PENDING.sql, *args)}
            missing = [j for j in journals if j.receipt_code not in ids]
            existing = await existing_by_key(conn, missing) if missing else {}
        return [ids.get(j.receipt_code) or existing[(j.idempotency_scope, j.idempotency_key)]
                for j in journals]

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[PgLedgerUnit]:
        async with self._transaction() as conn:
            yield PgLedgerUnit(conn)

    def _transaction(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        """See lost_commit.transaction: a lost COMMIT raises CommitUnknown."""
        return lost_commit.transaction(self._pool)

    async def recorded(self, receipt_codes: list[str], session: object | None
                       ) -> dict[str, RecordedJournal]:
        """The check after a lost commit: fence `session`, then read these journals."""
        return await lost_commit.recorded(self._pool, receipt_codes, session)

    async def mark_failed(self, journal_id: int, error: ErrorBody) -> bool:
        """Finish a journal the database refused to post as failed; False if already final."""
        async with converted_errors():
            done = await self._pool.execute(MARK_FAILED, journal_id, error.code, error.message)
        return done != "UPDATE 0"

    async def claim_expired(self, owner: str, lease_s: float, limit: int,
                            held: list[int]) -> list[ClaimedJournal]:
        async with converted_errors():
            rows = await self._pool.fetch(CLAIM_EXPIRED, owner, lease_s, limit, held)
        return [ClaimedJournal(r["id"], r["external_ref"], transaction_of(r)) for r in rows]

    async def renew_leases(self, owner: str, journal_ids: list[int], lease_s: float) -> None:
        """Extend this process's leases on journals it still holds (queued or running)."""
        async with converted_errors():
            await self._pool.execute(RENEW_LEASES, owner, journal_ids, lease_s)

    async def release_leases(self, owner: str) -> int:
        """On shutdown: let any process's sweeper take our unfinished journals at once."""
        async with converted_errors():
            done = await self._pool.execute(RELEASE_LEASES, owner)
        return int(done.split()[-1])

    async def journal_of_key(self, scope: str, key: str) -> ExistingJournal | None:
        async with converted_errors():
            found = await read(self._pool, lambda conn: journals_of_keys(conn, [(scope, key)]))
        return found.get((scope, key))

    async def journal_status(self, receipt_code: str) -> JournalStatus | None:
        async with converted_errors():
            row = await read(self._pool, lambda conn: conn.fetchrow(JOURNAL_STATUS, receipt_code))
        if row is None:
            return None
        error = (ErrorBody(row["error_code"], row["error_message"], row["error_param"])
                 if row["error_code"] else None)
        return JournalStatus(receipt_code, row["status"], error, iso(row["at"]) or "")

    async def get_accounts(self, account_ids: list[str], *, fresh: bool = False
                           ) -> dict[str, AccountSnapshot]:
        """AccountReader straight from the database, so always fresh (the account cache
        wraps this)."""
        async with converted_errors():
            rows = await read(self._pool, lambda conn: conn.fetch(GET_ACCOUNTS, account_ids))
        return {r["id"]: snapshot(r) for r in rows}


def transaction_of(row: asyncpg.Record) -> Transaction:
    """A claimed journal's transaction, rebuilt from its row."""
    legs = tuple(Leg(*leg) for leg in _legs.decode(row["payload"]))
    # A recovered hold keeps its deadline from the accept; any value marks it a hold.
    return Transaction(row["type"], row["currency"], legs, row["description"],
                       _meta.decode(row["metadata"]),
                       hold_expires_in_s=1 if row.get("is_hold") else None,
                       target=row.get("target"))
