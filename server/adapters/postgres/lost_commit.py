"""Commits whose acknowledgement may be lost, and the check afterwards.

A transaction's connection failing while COMMIT is under way leaves its outcome open:
`transaction()` raises CommitUnknown then, carrying the server pid of the session. The
check, `recorded()`, fences that session (ends it and waits until it is gone, so its
transaction is decided either way) and then reads what the database holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
import msgspec

from core.ledger.errors import CommitUnknown, Rejected, Unavailable
from core.ledger.models import Entry, ErrorBody
from core.pipeline.ports import RecordedJournal
from server.adapters.postgres.journal_sql import RECORDED, SESSION_ALIVE, TERMINATE_SESSION
from server.adapters.postgres.pool import CONNECTION_LOST, OUT_OF_RESOURCES, converted_errors
from server.adapters.postgres.pool import transaction as pooled_transaction

log = logging.getLogger("kassa.postgres")

# A connection failing in one of these ways after COMMIT was sent leaves the outcome open.
LOST = CONNECTION_LOST
# So does the server running out of resources during COMMIT itself: a failed WAL write is
# a PANIC (the server restarts and its recovery keeps whatever WAL reached the files, which
# may hold this commit), and the client may see it as 53100 disk_full before the
# connection closes. Before COMMIT, the same error is an ordinary failed statement: the
# transaction is rolled back and converted_errors answers Unavailable.
LOST_AT_COMMIT = (*CONNECTION_LOST, *OUT_OF_RESOURCES)

_entries = msgspec.json.Decoder(list[tuple[str, str, int, int]])


@contextlib.asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on a pooled connection. Data the database refuses raises Rejected
    (after the rollback); the connection failing during COMMIT itself raises
    CommitUnknown, carrying the server pid so the check can fence that session."""
    async with converted_errors():
        session: int | None = None
        committing = False
        try:
            # A session found ended at BEGIN is replaced there (pool.transaction).
            async with rejected_data(), pooled_transaction(pool) as conn:
                # Read now: once the connection is lost, asyncpg has already detached it
                # from the pool's handle, and asking it then raises instead of answering.
                session = conn.get_server_pid()
                yield conn
                committing = True
        except LOST_AT_COMMIT as exc:
            if not committing:
                raise
            raise CommitUnknown("the commit was not acknowledged", session=session) from exc


@contextlib.asynccontextmanager
async def rejected_data() -> AsyncIterator[None]:
    """Data the database (or the driver, encoding it) refuses: this group cannot commit
    as it is, and retrying will not help. The message names no driver text."""
    try:
        yield
    except (asyncpg.DataError, asyncpg.exceptions._base.DataError) as exc:
        log.warning("the database refused a group's data: %r", exc)
        raise Rejected("the database refused this transaction's data") from exc
    except asyncpg.IntegrityConstraintViolationError as exc:
        log.critical("[BUG] constraint %s violated: %r", exc.constraint_name, exc)
        raise Rejected("the database refused this transaction (a constraint)") from exc


async def recorded(pool: asyncpg.Pool, receipt_codes: list[str], session: object | None
                   ) -> dict[str, RecordedJournal]:
    """Fence the session whose commit was lost (end it and wait until it is gone, so
    its transaction is decided), then read the journals under these receipt codes."""
    try:
        async with pool.acquire() as conn:
            if isinstance(session, int):
                await conn.execute(TERMINATE_SESSION, session)
                await wait_gone(conn, session)
            rows = await conn.fetch(RECORDED, receipt_codes)
    except (*LOST, asyncpg.PostgresError) as exc:
        log.warning("looking up journals after a lost commit failed: %r", exc)
        raise Unavailable("the database is unavailable") from exc
    return {r["external_ref"]: RecordedJournal(
        r["id"], r["external_ref"], r["status"],
        ErrorBody(r["error_code"], r["error_message"], r["error_param"]) if r["error_code"] else None,
        [Entry(*e) for e in _entries.decode(r["entries"])]) for r in rows}


async def wait_gone(conn: asyncpg.Connection, pid: int) -> None:
    """Until the session `pid` has ended (the caller bounds the wait)."""
    gone = False
    while not gone:
        gone = not await conn.fetchval(SESSION_ALIVE, pid)
        await asyncio.sleep(0 if gone else 0.01)
