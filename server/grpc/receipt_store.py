"""The receipt service's pure batch assembly and its SQL (tables `receipts`, `accounts`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import NamedTuple

import asyncpg
import msgspec

import native
from server.grpc.gen.kassa.v1 import receipts_pb2 as pb

TYPES = frozenset(("transfer", "deposit", "withdrawal"))
# Statuses only move forward: processing → executing → completed | failed.
STATUS_RANK = {"processing": 0, "executing": 1, "completed": 2, "failed": 2}


class CodeClock(NamedTuple):
    """The generator state carried from one batch to the next (see native.receipt_codes)."""

    last_ms: int = 0
    last_seq: int = 0


class AccountInfo(msgspec.Struct):
    id: str
    currency: str | None = None
    status: str | None = None
    contact: msgspec.Raw | None = None
    found: bool = True


_encode = msgspec.json.Encoder().encode


def build_receipts(
    items: Sequence[pb.NewReceipt], node_id: int, pid: int, clock: CodeClock, now_ms: int
) -> tuple[pb.CreateReceiptsResponse, list[tuple[int, str]], CodeClock]:
    """Codes for the valid items and the whole response, in one pass (a profiled hot path).

    Returns the response, the (item index, code) pairs to persist, and the next clock.
    """
    valid = [i for i, it in enumerate(items) if it.type in TYPES and it.amount > 0 and it.currency]
    codes, last_ms, last_seq = native.receipt_codes(
        node_id, pid, clock.last_ms, clock.last_seq, now_ms, len(valid)
    )
    result = pb.CreateReceiptResult
    if len(valid) == len(items):  # the usual case: no per-item lookups
        results = [result(code=code) for code in codes]
    else:
        code_of = dict(zip(valid, codes, strict=True))
        results = [
            result(code=code_of[i]) if i in code_of else result(error=_INVALID)
            for i in range(len(items))
        ]
    coded = list(zip(valid, codes, strict=True))
    return pb.CreateReceiptsResponse(results=results), coded, CodeClock(last_ms, last_seq)


_INVALID = pb.ItemError(
    code="invalid_request", message="type must be transfer|deposit|withdrawal, amount > 0, currency set"
)

FETCH_ACCOUNTS = """
SELECT id, currency, status, contact::text AS contact FROM accounts WHERE id = ANY($1::text[])
"""

INSERT_RECEIPTS = """
INSERT INTO receipts (code, type, currency, amount, accounts)
SELECT code, type, currency, amount, accounts::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])
    AS u(code, type, currency, amount, accounts)
"""


async def persist_receipts(
    conn: asyncpg.Connection, items: Sequence[pb.NewReceipt], coded: list[tuple[int, str]]
) -> None:
    """One query for the accounts of the whole batch, one bulk insert of its receipts."""
    ids = sorted({a for i, _ in coded for a in items[i].account_ids})
    rows = await conn.fetch(FETCH_ACCOUNTS, ids) if ids else []
    known = {r["id"]: _account_info(r) for r in rows}
    columns: tuple[list[object], ...] = ([], [], [], [], [])
    for i, code in coded:
        item = items[i]
        infos = [known.get(a) or AccountInfo(id=a, found=False) for a in item.account_ids]
        for column, value in zip(
            columns, (code, item.type, item.currency, item.amount, _encode(infos).decode()), strict=True
        ):
            column.append(value)
    await conn.execute(INSERT_RECEIPTS, *columns)


def _account_info(row: asyncpg.Record) -> AccountInfo:
    contact = row["contact"]
    raw = None if contact is None else msgspec.Raw(contact.encode())
    return AccountInfo(id=row["id"], currency=row["currency"], status=row["status"], contact=raw)


_RANK_SQL = "(CASE {0} WHEN 'processing' THEN 0 WHEN 'executing' THEN 1 ELSE 2 END)"
# One statement: the UPDATE runs in a CTE, and the outer SELECT (which sees the rows as
# they were before it) names the codes that exist, so an update refused as backwards
# still answers ok: a later status is already recorded.
UPDATE_STATUSES = f"""
WITH u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS u(code, status, error_code)
), updated AS (
    UPDATE receipts AS r SET
        status = u.status, error_code = nullif(u.error_code, ''), updated_at = now()
    FROM u
    WHERE r.code = u.code
      AND ({_RANK_SQL.format('u.status')} > {_RANK_SQL.format('r.status')} OR u.status = r.status)
)
SELECT r.code FROM receipts AS r JOIN u ON r.code = u.code
"""


def latest_per_code(updates: Sequence[pb.StatusUpdate]) -> list[pb.StatusUpdate]:
    """One update per code, the furthest along (the last among equals): UPDATE … FROM
    applies only one arbitrary source row per target row."""
    best: dict[str, pb.StatusUpdate] = {}
    for u in updates:
        seen = best.get(u.code)
        if seen is None or STATUS_RANK[u.status] >= STATUS_RANK[seen.status]:
            best[u.code] = u
    return list(best.values())


async def update_statuses(conn: asyncpg.Connection, updates: Sequence[pb.StatusUpdate]) -> set[str]:
    """Apply the updates in one statement; returns the codes that exist."""
    rows = latest_per_code(updates)
    found = await conn.fetch(
        UPDATE_STATUSES, [u.code for u in rows], [u.status for u in rows],
        [u.error_code for u in rows],
    )
    return {r["code"] for r in found}


GET_RECEIPT = "SELECT status, error_code, updated_at FROM receipts WHERE code = $1"


async def get_receipt(conn: asyncpg.Connection, code: str) -> pb.GetReceiptResponse:
    row = await conn.fetchrow(GET_RECEIPT, code)
    if row is None:
        return pb.GetReceiptResponse(found=False, code=code)
    return pb.GetReceiptResponse(
        found=True, code=code, status=row["status"], error_code=row["error_code"] or "",
        updated_at=iso_utc(row["updated_at"]),
    )


def iso_utc(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
