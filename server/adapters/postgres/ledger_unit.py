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
    SET_ERROR_PARAMS,
    UPDATE_TARGETS,
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
        outcomes = decision.outcomes
        await self._conn.execute(
            FINISH_AND_POST, [o.journal_id for o in outcomes], [o.status for o in outcomes],
            [o.error.code if o.error else None for o in outcomes],
            [o.error.message if o.error else None for o in outcomes], *posting_args(decision))
        await set_error_params(self._conn, outcomes)

    async def lock_targets(self, receipt_codes: list[str]) -> dict[str, Target]:
        rows = await self._conn.fetch(LOCK_TARGETS, receipt_codes)
        return {r["external_ref"]: Target(
            r["external_ref"], r["id"], r["type"], r["status"],
            tuple(Leg(*leg) for leg in _legs.decode(r["payload"])), r["is_hold"], r["reversed"],
            r["currency"])
            for r in rows}

    async def update_targets(self, targets: list[Target]) -> None:
        await self._conn.execute(UPDATE_TARGETS, [t.journal_id for t in targets],
                                 [t.status for t in targets], [t.reversed for t in targets])

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
        cols = pending_columns(journals)
        outcomes = decision.outcomes
        try:
            await self._conn.execute(
                INSERT_AND_POST, ids, cols[0], cols[1], [o.status for o in outcomes], *cols[2:11],
                [o.error.code if o.error else None for o in outcomes],
                [o.error.message if o.error else None for o in outcomes], *posting_args(decision),
                outcomes[0].finished_at)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "journals_idempotency_key":
                raise
            raise TransientConflict("an idempotency key was recorded meanwhile") from exc
        await set_error_params(self._conn, outcomes)


def posting_args(decision: BatchDecision) -> list[object]:
    """The eight parameters of journal_sql._posting: balances and holds, ledger columns."""
    held = decision.held
    return [list(decision.balances), list(decision.balances.values()),
            [held.get(a) for a in decision.balances], *decision.ledger_columns]


async def set_error_params(conn: asyncpg.Connection, outcomes: list[Outcome]) -> None:
    """Record the account at fault of the failed journals naming one (none in a batch that
    failed nothing: no statement)."""
    faulted = [o for o in outcomes if o.error is not None and o.error.param is not None]
    if faulted:
        await conn.execute(SET_ERROR_PARAMS, [o.journal_id for o in faulted],
                           [o.error.param for o in faulted if o.error is not None])


def pending_columns(journals: list[PendingJournal]) -> list[list[object]]:
    """The journals as columns for unnest: code, type, currency, description, metadata,
    legs, idempotency scope, key and request hash, mode, accept time; then the target and
    the hold's seconds to expiry (pending journals only)."""
    cols: list[list[object]] = [[] for _ in range(13)]
    for j in journals:
        tx = j.transaction
        row = (j.receipt_code, tx.type, tx.currency, tx.description,
               _json.encode(tx.metadata).decode(), _json.encode(tx.legs).decode(),
               j.idempotency_scope, j.idempotency_key, j.request_hash, j.mode, j.accept_time_us,
               tx.target, tx.hold_expires_in_s)
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return cols


async def existing_by_key(conn: asyncpg.Connection, journals: list[PendingJournal]
                          ) -> dict[tuple[str, str], ExistingJournal]:
    rows = await conn.fetch(EXISTING_BY_KEY, [j.idempotency_scope for j in journals],
                            [j.idempotency_key for j in journals])
    return {(r["idempotency_scope"], r["idempotency_key"]): ExistingJournal(
        r["id"], r["external_ref"], r["request_hash"], r["mode"], r["status"],
        r["accept_time_us"]) for r in rows}


def snapshot(row: asyncpg.Record) -> AccountSnapshot:
    contact = _contact.decode(row["contact"]) if row["contact"] else None
    return AccountSnapshot(row["id"], row["currency"], row["status"], row["balance"],
                           row["overdraft_limit"], contact, row.get("held", 0))
