"""Accounts and read models: account CRUD, entry pages, full transactions, metadata edits
(the ports AccountStore, TransactionReader and JournalMetadata of core/pipeline/read_ports.py)."""

from __future__ import annotations

import base64
from typing import Any

import asyncpg
import msgspec

from core.ledger.errors import AccountExists, InvalidRequest
from core.ledger.metadata import MetadataEdit
from core.ledger.models import Entry, ErrorBody, world_account
from core.pipeline.views import (
    AccountView,
    EntryLine,
    EntryPage,
    LegView,
    Naming,
    TransactionView,
    link_fields,
    named_by_fields,
)
from server.adapters.postgres.pool import converted_errors, iso, read, transaction

_json = msgspec.json.Encoder()
_obj = msgspec.json.Decoder(dict[str, Any])
_legs = msgspec.json.Decoder(list[tuple[str, str, int]])

ACCOUNT_COLUMNS = ("id, currency, balance, overdraft_limit, status, contact, metadata, created_at, "
                   "held")


# What a transaction's view is read from (journal_view); listing.py reads the same names.
JOURNAL_VIEW = """
SELECT id, external_ref, status, type, currency, description, metadata, payload, error_code,
       error_message, error_param, created_at, completed_at, target, hold_expires_at
FROM journals WHERE external_ref = $1
"""

# The journals naming these that succeeded (completed captures and reversals, voids that
# voided), oldest first, with their amounts: a view's reversed_by and a hold's fields.
NAMED_BY = """
SELECT target, external_ref, type,
       (SELECT sum((leg ->> 2)::bigint)::bigint FROM jsonb_array_elements(payload) AS leg) AS amount
FROM journals
WHERE target = ANY($1::text[]) AND status IN ('completed', 'voided') ORDER BY id
"""


# PATCH: the stored metadata is read under the row's lock, merged in Python (core/ledger/
# metadata.py) and written back in the same transaction, so concurrent patches all land.
LOCK_ACCOUNT_METADATA = "SELECT metadata FROM accounts WHERE id = $1 FOR UPDATE"
UPDATE_ACCOUNT = f"""
UPDATE accounts SET status = coalesce($2, status), metadata = coalesce($3::jsonb, metadata),
       version = version + 1, updated_at = now()
WHERE id = $1 RETURNING {ACCOUNT_COLUMNS}
"""
# A journal's row is locked for no longer than the merge: its writers (executor, sweeper)
# never change its metadata, and they wait at most that long.
LOCK_JOURNAL_METADATA = "SELECT id, metadata FROM journals WHERE external_ref = $1 FOR UPDATE"
SET_JOURNAL_METADATA = "UPDATE journals SET metadata = $2::jsonb WHERE id = $1"


def account_view(row: asyncpg.Record) -> AccountView:
    return AccountView(
        row["id"], row["currency"], row["balance"], row["overdraft_limit"], row["status"],
        _obj.decode(row["contact"]) if row["contact"] else None, iso(row["created_at"]),
        _obj.decode(row["metadata"]), row["held"], row["balance"] - row["held"])


def encode_cursor(ledger_id: int) -> str:
    return base64.urlsafe_b64encode(f"l{ledger_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("l"):
            raise ValueError(raw)
        return int(raw[1:])
    except ValueError:
        raise InvalidRequest("cursor is not one this API returned") from None


class PgAccountStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, account_id: str, currency: str, overdraft_limit: int,
                     contact: dict[str, Any] | None, metadata: dict[str, Any]) -> AccountView:
        async with converted_errors(), transaction(self._pool) as conn:
            # Every currency's system account exists before its first transaction.
            await conn.execute(
                "INSERT INTO accounts (id, currency, overdraft_limit) VALUES ($1, $2, NULL) "
                "ON CONFLICT (id) DO NOTHING", world_account(currency), currency)
            try:
                row = await conn.fetchrow(
                    "INSERT INTO accounts (id, currency, overdraft_limit, contact, metadata) "
                    f"VALUES ($1, $2, $3, $4::jsonb, $5::jsonb) RETURNING {ACCOUNT_COLUMNS}",
                    account_id, currency, overdraft_limit,
                    _json.encode(contact).decode() if contact else None,
                    _json.encode(metadata).decode())
            except asyncpg.UniqueViolationError:
                raise AccountExists(f"account {account_id} exists") from None
        return account_view(row)

    async def get(self, account_id: str) -> AccountView | None:
        async with converted_errors():
            row = await read(self._pool, lambda conn: conn.fetchrow(
                f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1", account_id))
        return None if row is None else account_view(row)

    async def update(self, account_id: str, status: str | None, edit: MetadataEdit | None
                     ) -> AccountView | None:
        async with converted_errors(), transaction(self._pool) as conn:
            metadata = None
            if edit is not None:  # read, merge and write under the row's lock
                stored = await conn.fetchval(LOCK_ACCOUNT_METADATA, account_id)
                if stored is None:
                    return None
                metadata = _json.encode(edit(_obj.decode(stored))).decode()
            row = await conn.fetchrow(UPDATE_ACCOUNT, account_id, status, metadata)
        return None if row is None else account_view(row)

    async def edit_metadata(self, receipt_code: str, edit: MetadataEdit) -> bool:
        async with converted_errors(), transaction(self._pool) as conn:
            row = await conn.fetchrow(LOCK_JOURNAL_METADATA, receipt_code)
            if row is None:
                return False
            await conn.execute(SET_JOURNAL_METADATA, row["id"],
                               _json.encode(edit(_obj.decode(row["metadata"]))).decode())
        return True

    async def entries(self, account_id: str, limit: int, cursor: str | None) -> EntryPage:
        before = decode_cursor(cursor) if cursor else None
        async with converted_errors():
            rows = await read(self._pool, lambda conn: conn.fetch(
                "SELECT l.id, j.external_ref, l.journal_id, l.direction, l.amount, l.balance_after,"
                " l.created_at FROM ledgers l JOIN journals j ON j.id = l.journal_id"
                " WHERE l.account_id = $1 AND ($2::bigint IS NULL OR l.id < $2)"
                " ORDER BY l.id DESC LIMIT $3", account_id, before, limit + 1))
        page = [EntryLine(r["external_ref"], r["journal_id"], r["direction"], r["amount"],
                          r["balance_after"], iso(r["created_at"])) for r in rows[:limit]]
        next_cursor = encode_cursor(rows[limit - 1]["id"]) if len(rows) > limit else None
        return EntryPage(page, next_cursor)

    async def transaction(self, receipt_code: str) -> TransactionView | None:
        """The full transaction view of docs/api.md, or None for an unknown receipt."""
        async with converted_errors():
            return await read(self._pool, lambda conn: transaction_view(conn, receipt_code))


async def transaction_view(conn: asyncpg.Connection, receipt_code: str) -> TransactionView | None:
    row = await conn.fetchrow(JOURNAL_VIEW, receipt_code)
    if row is None:
        return None
    entries = await conn.fetch(
        "SELECT account_id, direction, amount, balance_after FROM ledgers"
        " WHERE journal_id = $1 ORDER BY id", row["id"])
    naming = await named_by(conn, [receipt_code])
    return journal_view(row, [Entry(e["account_id"], e["direction"], e["amount"],
                                    e["balance_after"]) for e in entries],
                        naming.get(receipt_code, []))


async def named_by(conn: asyncpg.Connection, receipt_codes: list[str]
                   ) -> dict[str, list[Naming]]:
    """The finished journals naming each of these (NAMED_BY), by the receipt they name."""
    found: dict[str, list[Naming]] = {}
    for r in await conn.fetch(NAMED_BY, receipt_codes):
        found.setdefault(r["target"], []).append(
            Naming(r["external_ref"], r["type"], r["amount"]))
    return found


def journal_view(row: asyncpg.Record, entries: list[Entry], naming: list[Naming]
                 ) -> TransactionView:
    """A journal row (JOURNAL_VIEW's columns) as the transaction of docs/api.md: its money
    from its legs whatever its status, its links both ways."""
    legs = [LegView(*leg) for leg in _legs.decode(row["payload"])]
    amount = sum(leg.amount for leg in legs)
    error = (ErrorBody(row["error_code"], row["error_message"], row["error_param"])
             if row["error_code"] else None)
    return TransactionView(
        row["external_ref"], row["status"], row["type"], row["currency"], row["id"],
        row["description"], _obj.decode(row["metadata"]), entries, error,
        iso(row["created_at"]), iso(row["completed_at"]), amount=amount, legs=legs,
        **link_fields(row["type"], row["target"]),  # type: ignore[arg-type]
        **named_by_fields(row["hold_expires_at"] is not None, amount, naming),
        hold_expires_at=iso(row["hold_expires_at"]))
