"""The executor's unit of work on PostgreSQL: lock, then finish and post a decided batch
(journals accepted earlier), or record new journals already finished (apply at accept)."""

from __future__ import annotations

import asyncpg
import msgspec

from core.ledger.decide import BatchDecision, Outcome
from core.ledger.errors import TransientConflict
from core.ledger.linked import Target
from core.ledger.models import AccountSnapshot, Leg
from core.pipeline.ports import ExistingJournal, PendingJournal
from server.adapters.postgres.journal_sql import (
    EXISTING_BY_KEY,
    FINISH_AND_POST,
    INSERT_AND_POST,
    LOCK_ACCOUNTS,
    LOCK_FOR_NEW,
    LOCK_TARGETS,
    LOCK_UNFINISHED,
    UPDATE_TARGETS,
    BalanceRow,
    EntryColumns,
    FinishedColumns,
    OutcomeRow,
    PendingColumns,
    RequestRow,
    TargetRow,
)

_json = msgspec.json.Encoder()
_contact = msgspec.json.Decoder(dict[str, str] | None)
_legs = msgspec.json.Decoder(list[tuple[str, str, int]])


class PgLedgerUnit:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def lock_unfinished(self, journal_ids: list[int]) -> set[int]:
        return {r["id"] for r in await self._conn.fetch(LOCK_UNFINISHED, journal_ids)}

    async def lock_accounts(self, account_ids: list[str]) -> dict[str, AccountSnapshot]:
        return {r["id"]: snapshot(r) for r in await self._conn.fetch(LOCK_ACCOUNTS, account_ids)}

    async def write(self, decision: BatchDecision) -> None:
        await self._conn.execute(FINISH_AND_POST.sql, *FINISH_AND_POST.args(
            outcomes=[outcome_row(o) for o in decision.outcomes], **posting(decision)))

    async def lock_targets(self, receipt_codes: list[str]) -> dict[str, Target]:
        rows = await self._conn.fetch(LOCK_TARGETS, receipt_codes)
        return {r["external_ref"]: Target(
            r["external_ref"], r["id"], r["type"], r["status"],
            tuple(Leg(*leg) for leg in _legs.decode(r["payload"])), r["is_hold"], r["reversed"],
            r["currency"])
            for r in rows}

    async def update_targets(self, targets: list[Target]) -> None:
        await self._conn.execute(UPDATE_TARGETS.sql, *UPDATE_TARGETS.args(
            targets=[TargetRow(t.journal_id, t.status, t.reversed) for t in targets]))

    async def existing(self, journals: list[PendingJournal]
                       ) -> dict[tuple[str, str], ExistingJournal]:
        return await existing_by_key(self._conn, journals)

    async def lock_for_new(self, account_ids: list[str], count: int
                           ) -> tuple[dict[str, AccountSnapshot], list[int]]:
        rows = await self._conn.fetch(LOCK_FOR_NEW, account_ids, count)
        accounts = {r["id"]: snapshot(r) for r in rows if r["journal_id"] is None}
        return accounts, [r["journal_id"] for r in rows if r["journal_id"] is not None]

    async def insert_finished(self, journals: list[PendingJournal], ids: list[int],
                              decision: BatchDecision) -> None:
        if not journals:
            return
        rows = [FinishedColumns(*outcome_row(o), *request_row(j))
                for j, o in zip(journals, decision.outcomes, strict=True)]
        try:
            await self._conn.execute(INSERT_AND_POST.sql, *INSERT_AND_POST.args(
                journals=rows, finished_at=decision.outcomes[0].finished_at, **posting(decision)))
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "journals_idempotency_key":
                raise
            raise TransientConflict("an idempotency key was recorded meanwhile") from exc


def posting(decision: BatchDecision) -> dict[str, object]:
    """The arguments of journal_sql._posting: balances and holds, ledger entries."""
    held = decision.held
    return {"balances": [BalanceRow(a, b, held.get(a)) for a, b in decision.balances.items()],
            "entries": EntryColumns(*decision.ledger_columns)}  # type: ignore[arg-type]


def outcome_row(outcome: Outcome) -> OutcomeRow:
    error = outcome.error
    if error is None:
        return OutcomeRow(outcome.journal_id, outcome.status, None, None, None)
    return OutcomeRow(outcome.journal_id, outcome.status, error.code, error.message, error.param)


def request_row(journal: PendingJournal) -> RequestRow:
    tx = journal.transaction
    return RequestRow(journal.receipt_code, tx.type, tx.currency, tx.description,
                      _json.encode(tx.metadata).decode(), _json.encode(tx.legs).decode(),
                      journal.idempotency_scope, journal.idempotency_key, journal.request_hash,
                      journal.mode, journal.accept_time_us, tx.target, journal.traceparent)


def pending_row(journal: PendingJournal) -> PendingColumns:
    return PendingColumns(*request_row(journal), journal.transaction.hold_expires_in_s)


async def existing_by_key(conn: asyncpg.Connection, journals: list[PendingJournal]
                          ) -> dict[tuple[str, str], ExistingJournal]:
    return await journals_of_keys(conn, [(j.idempotency_scope, j.idempotency_key)
                                         for j in journals])


async def journals_of_keys(conn: asyncpg.Connection, keys: list[tuple[str | None, str | None]]
                           ) -> dict[tuple[str, str], ExistingJournal]:
    """The journals recorded under these (scope, key) pairs."""
    rows = await conn.fetch(EXISTING_BY_KEY, [scope for scope, _ in keys],
                            [key for _, key in keys])
    return {(r["idempotency_scope"], r["idempotency_key"]): ExistingJournal(
        r["id"], r["external_ref"], r["request_hash"], r["mode"], r["status"],
        r["accept_time_us"]) for r in rows}


def snapshot(row: asyncpg.Record) -> AccountSnapshot:
    contact = _contact.decode(row["contact"]) if row["contact"] else None
    return AccountSnapshot(row["id"], row["currency"], row["status"], row["balance"],
                           row["overdraft_limit"], contact, row.get("held", 0))
