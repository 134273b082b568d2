"""The receipt service's SQL (sequence `receipt_blocks`, table `receipts`) and its pure checks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import asyncpg

from core.ledger.status import RANK
from server.adapters.grpc.gen.kassa.v1 import receipts_pb2 as pb

# Account ids travel to PostgreSQL joined by this character, which no account id may hold
# (docs/api.md: [A-Za-z0-9_@:-]); unnest cannot take an array of arrays of different lengths.
ID_SEPARATOR = ","

RESERVE_BLOCK = "SELECT nextval('receipt_blocks')"


async def reserve_block(conn: asyncpg.Connection) -> int:
    """A block number nobody else ever gets (a sequence is not rolled back, so a crash
    leaves a gap, never a repeat)."""
    block: int = await conn.fetchval(RESERVE_BLOCK)
    return block


def refusal(item: pb.ReceiptRecord) -> pb.ItemError | None:
    """Why an item cannot be registered, or None when it can."""
    if item.status not in RANK:
        return pb.ItemError(code="invalid_request", message=f"unknown status {item.status!r}")
    if not (item.code and item.type and item.currency):
        return pb.ItemError(code="invalid_request", message="code, type and currency are required")
    if any(not a or ID_SEPARATOR in a for a in item.account_ids):
        return pb.ItemError(code="invalid_request", message="an account id is empty or holds ','")
    return None


def furthest_per_code(items: Sequence[pb.ReceiptRecord]) -> list[pb.ReceiptRecord]:
    """One item per code, the furthest along (the last among equals): one INSERT … ON
    CONFLICT DO UPDATE may not touch the same row twice."""
    best: dict[str, pb.ReceiptRecord] = {}
    for item in items:
        seen = best.get(item.code)
        if seen is None or RANK[item.status] >= RANK[seen.status]:
            best[item.code] = item
    return list(best.values())


def _rank_sql(column: str) -> str:
    cases = " ".join(f"WHEN '{status}' THEN {rank}" for status, rank in RANK.items())
    return f"(CASE {column} {cases} END)"


# One statement per batch. A receipt registered again (a retried call) changes nothing
# unless its status is further along: statuses never move backwards.
REGISTER_RECEIPTS = f"""
INSERT INTO receipts AS r (code, type, currency, amount, account_ids, status, error_code)
SELECT code, type, currency, amount, string_to_array(ids, '{ID_SEPARATOR}'), status,
       nullif(error_code, '')
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
            $7::text[]) AS u(code, type, currency, amount, ids, status, error_code)
ON CONFLICT (code) DO UPDATE SET
    status = EXCLUDED.status, error_code = EXCLUDED.error_code, updated_at = now()
WHERE {_rank_sql('EXCLUDED.status')} > {_rank_sql('r.status')}
"""


async def register_receipts(conn: asyncpg.Connection, items: Sequence[pb.ReceiptRecord]) -> None:
    """Insert or move forward every item, in one statement."""
    rows = furthest_per_code(items)
    await conn.execute(
        REGISTER_RECEIPTS, [i.code for i in rows], [i.type for i in rows],
        [i.currency for i in rows], [i.amount for i in rows],
        [ID_SEPARATOR.join(i.account_ids) for i in rows], [i.status for i in rows],
        [i.error_code for i in rows],
    )


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
