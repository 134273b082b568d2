"""Reads of journals named by captures, voids and reversals, and of expired holds."""

from __future__ import annotations

import asyncpg
import msgspec

from core.ledger.models import Leg
from core.pipeline.links import NamedJournal
from server.adapters.postgres.journal_sql import EXPIRED_HOLDS, NAMED_JOURNAL
from server.adapters.postgres.pool import converted_errors

_legs = msgspec.json.Decoder(list[tuple[str, str, int]])


def named_journal(row: asyncpg.Record) -> NamedJournal:
    return NamedJournal(row["external_ref"], row["type"], row["status"], row["currency"],
                        tuple(Leg(*leg) for leg in _legs.decode(row["payload"])),
                        row["is_hold"], row["reversed"])


class PgHolds:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def named_journal(self, receipt_code: str) -> NamedJournal | None:
        async with converted_errors():
            row = await self._pool.fetchrow(NAMED_JOURNAL, receipt_code)
        return named_journal(row) if row is not None else None

    async def expired_holds(self, limit: int) -> list[NamedJournal]:
        async with converted_errors():
            rows = await self._pool.fetch(EXPIRED_HOLDS, limit)
        return [named_journal(r) for r in rows]
