"""Listings (the port Listings of core/pipeline/read_ports.py): journal pages with filters,
account pages, an account's balance at an instant. The indexes behind every query shape,
and why, are in migrations/007_listing.sql; their plans in docs/performance.md."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec

from core.ledger.errors import InvalidRequest
from core.ledger.models import Entry
from core.pipeline.views import (
    AccountAtView,
    AccountPage,
    JournalPage,
    MetadataFilter,
    Naming,
    TransactionFilter,
)
from server.adapters.postgres.accounts import (
    ACCOUNT_COLUMNS,
    account_view,
    journal_view,
    named_by,
)
from server.adapters.postgres.pool import converted_errors, read

# A journal's created_at and its id are taken in the same transaction, so the two orders
# differ by at most a transaction's duration (milliseconds; leases and lock waits keep it
# far below this). since/until become an id range widened by this much (007_listing.sql).
LISTING_SLACK = dt.timedelta(seconds=10)

# Values that may be written into the SQL text (they come from these fixed sets only): a
# literal lets the planner use the partial index of that status or type.
JOURNAL_STATUSES = frozenset({"processing", "completed", "failed", "held", "voided"})
JOURNAL_TYPES = frozenset({"transfer", "deposit", "withdrawal", "capture", "void", "reversal"})
ACCOUNT_STATUSES = frozenset({"active", "locked", "closed"})
_json = msgspec.json.Encoder()

# The columns accounts.journal_view reads (its JOURNAL_VIEW's).
JOURNAL_COLUMNS = ("j.id, j.external_ref, j.status, j.type, j.currency, j.description,"
                   " j.metadata, j.payload, j.error_code, j.error_message, j.error_param,"
                   " j.created_at, j.completed_at, j.target, j.hold_expires_at")


def encode_cursor(kind: str, key: int | str) -> str:
    return base64.urlsafe_b64encode(f"{kind}{key}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> str:
    """The key of a cursor of this kind ('j' journal id, 'a' account id)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    if not raw.startswith(kind) or len(raw) < 2:
        raise InvalidRequest("cursor is not one this API returned")
    return raw[1:]


def _literal(value: str, allowed: frozenset[str]) -> str:
    assert value in allowed, value  # checked by the caller; never client text in SQL
    return f"'{value}'"


def journals_query(where: TransactionFilter, limit: int, before: int | None
                   ) -> tuple[str, list[Any]]:
    """The SQL and arguments of one page (also what tests/test_listing.py EXPLAINs)."""
    args: list[Any] = []

    def arg(value: Any, cast: str) -> str:
        args.append(value)
        return f"${len(args)}::{cast}"

    # `{key}` stands for the column the page is ordered by: the index scan's own column,
    # so that the cursor and the since/until bounds become index conditions.
    conds: list[str] = []
    if before is not None:
        conds.append(f"{{key}} < {arg(before, 'bigint')}")
    if where.statuses is not None:
        conds.append("j.status IN ({})".format(
            ", ".join(_literal(s, JOURNAL_STATUSES) for s in where.statuses)))
    if where.type is not None:
        conds.append(f"j.type = {_literal(where.type, JOURNAL_TYPES)}")
    if where.since is not None:
        since = arg(where.since, "timestamptz")
        conds.append(f"j.created_at >= {since}")
        conds.append(f"{{key}} > coalesce((SELECT id FROM journals WHERE created_at < {since}"
                     f" - {arg(LISTING_SLACK, 'interval')} ORDER BY created_at DESC LIMIT 1), 0)")
    # (conds are format strings: the '{}' of the partial index's predicate is escaped)
    conds += [c.replace("{}", "{{}}") for c in _metadata_conds("j.metadata", where.metadata, arg)]
    if where.until is not None:
        until = arg(where.until, "timestamptz")
        conds.append(f"j.created_at <= {until}")
        conds.append(f"{{key}} < coalesce((SELECT id FROM journals WHERE created_at > {until}"
                     f" + {arg(LISTING_SLACK, 'interval')} ORDER BY created_at LIMIT 1),"
                     " 9223372036854775807)")
    page = arg(limit + 1, "int")
    if where.account is None:
        return _page("journals j", "j.id", conds, page), args
    # The journals naming an account (migration 009): those that posted on it, by its
    # ledger entries, and those that posted nothing when written, by journal_accounts.
    # Each branch is the newest `page` distinct journals of its index that pass the
    # filters; the newest `page` of their union is then exactly the newest `page` of all
    # (an id among the union's newest has fewer than `page` newer ids in its own branch).
    account = arg(where.account, "text")
    # Without a filter on the journal itself, a branch reads its index alone.
    join = " JOIN journals j ON j.id = {}" if any("j." in c for c in conds) else ""
    posted = _page("ledgers l" + join.format("l.journal_id"), "l.journal_id",
                   [f"l.account_id = {account}", *conds], page, columns="DISTINCT l.journal_id")
    unposted = _page("journal_accounts ja" + join.format("ja.journal_id"), "ja.journal_id",
                     [f"ja.account_id = {account}", *conds], page, columns="ja.journal_id")
    source = (f"(SELECT DISTINCT journal_id FROM (({posted}) UNION ALL ({unposted})) named"
              f" ORDER BY journal_id DESC LIMIT {page}) n JOIN journals j ON j.id = n.journal_id")
    return _page(source, "j.id", [], page), args


def _page(source: str, key: str, conds: list[str], limit: str,
          columns: str = JOURNAL_COLUMNS) -> str:
    return (f"SELECT {columns} FROM {source}"
            + (" WHERE " + " AND ".join(c.format(key=key) for c in conds) if conds else "")
            + f" ORDER BY {key} DESC LIMIT {limit}")


def _metadata_conds(column: str, metadata: MetadataFilter, arg: Callable[[Any, str], str]
                    ) -> list[str]:
    """`metadata[<key>]=<value>` filters: one containment of {"<key>": "<value>"} each (a
    GIN jsonb_path_ops index answers them together), and the predicate of that partial
    index (migration 013), which the planner must see in the query to use it."""
    if not metadata:
        return []
    return [*(f"{column} @> {arg(_json.encode({key: value}).decode(), 'jsonb')}"
              for key, value in metadata), f"{column} <> '{{}}'::jsonb"]


def accounts_query(currency: str | None, status: str | None, limit: int, after: str | None,
                   metadata: MetadataFilter = ()) -> tuple[str, list[Any]]:
    args: list[Any] = []
    conds: list[str] = []

    def arg(value: Any, cast: str) -> str:
        args.append(value)
        return f"${len(args)}::{cast}"

    if currency is not None:
        args.append(currency)
        conds.append(f"currency = ${len(args)}::text")
    conds += _metadata_conds("metadata", metadata, arg)
    if status is not None:
        conds.append(f"status = {_literal(status, ACCOUNT_STATUSES)}")
    if after is not None:
        args.append(after)
        conds.append(f"id > ${len(args)}::text")
    args.append(limit + 1)
    sql = (f"SELECT {ACCOUNT_COLUMNS} FROM accounts"
           + (" WHERE " + " AND ".join(conds) if conds else "")
           + f" ORDER BY id LIMIT ${len(args)}::int")
    return sql, args


ACCOUNT_AT = f"""
SELECT {ACCOUNT_COLUMNS},
       coalesce((SELECT l.balance_after FROM ledgers l
                 WHERE l.account_id = a.id AND l.created_at <= $2
                 ORDER BY l.created_at DESC, l.id DESC LIMIT 1), 0) AS balance_at
FROM accounts a WHERE a.id = $1
"""

ENTRIES_OF = """
SELECT journal_id, account_id, direction, amount, balance_after FROM ledgers
WHERE journal_id = ANY($1::bigint[]) ORDER BY journal_id, id
"""


async def journal_rows(conn: asyncpg.Connection, sql: str, args: list[Any], limit: int
                       ) -> tuple[list[asyncpg.Record], list[asyncpg.Record], dict[str, list[Naming]]]:
    """A page of journals (journals_query's rows), their entries and what names them."""
    rows = await conn.fetch(sql, *args)
    ids = [r["id"] for r in rows[:limit]]
    entries = await conn.fetch(ENTRIES_OF, ids) if ids else []
    codes = [r["external_ref"] for r in rows[:limit]]
    naming = await named_by(conn, codes) if codes else {}
    return rows, entries, naming


class PgListings:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def journals(self, where: TransactionFilter, limit: int, cursor: str | None
                       ) -> JournalPage:
        before = _journal_key(cursor) if cursor else None
        sql, args = journals_query(where, limit, before)
        async with converted_errors():
            rows, entries, naming = await read(
                self._pool, lambda conn: journal_rows(conn, sql, args, limit))
        by_journal: dict[int, list[Entry]] = {}
        for e in entries:
            by_journal.setdefault(e["journal_id"], []).append(
                Entry(e["account_id"], e["direction"], e["amount"], e["balance_after"]))
        page = [journal_view(r, by_journal.get(r["id"], []), naming.get(r["external_ref"], []))
                for r in rows[:limit]]
        next_cursor = encode_cursor("j", rows[limit - 1]["id"]) if len(rows) > limit else None
        return JournalPage(page, next_cursor)

    async def accounts(self, currency: str | None, status: str | None, limit: int,
                       cursor: str | None, metadata: MetadataFilter = ()) -> AccountPage:
        after = decode_cursor("a", cursor) if cursor else None
        sql, args = accounts_query(currency, status, limit, after, metadata)
        async with converted_errors():
            rows = await read(self._pool, lambda conn: conn.fetch(sql, *args))
        next_cursor = encode_cursor("a", rows[limit - 1]["id"]) if len(rows) > limit else None
        return AccountPage([account_view(r) for r in rows[:limit]], next_cursor)

    async def account_at(self, account_id: str, at: dt.datetime) -> AccountAtView | None:
        async with converted_errors():
            row = await read(self._pool, lambda conn: conn.fetchrow(ACCOUNT_AT, account_id, at))
        if row is None:
            return None
        view = account_view(row)
        return AccountAtView(view.id, view.currency, row["balance_at"], view.overdraft_limit,
                             view.status, view.contact, view.created_at, view.metadata)


def _journal_key(cursor: str) -> int:
    key = decode_cursor("j", cursor)
    if not key.isascii() or not key.isdigit():
        raise InvalidRequest("cursor is not one this API returned")
    return int(key)
