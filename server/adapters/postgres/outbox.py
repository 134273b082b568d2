"""The relay's SQL, on the one dedicated connection each relay holds.

The relay election is an advisory lock on that connection (`try_lock`); standbys forward
wake-ups as NOTIFY, which the publisher LISTENs for. The leader reads the journals whose
event is due past each sink's cursor (migration 010: `journals.event_xid`, the cursors in
`journal_cursors`), and moves a cursor after its sink acknowledged. Closing the connection
releases the lock and the LISTEN. Both sinks share the connection, one statement at a
time. The webhook SQL (server/adapters/postgres/webhooks.py) runs on it too, through
`statement()`. The election and publishing logic is in server.adapters.kafka (relay, publisher).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg

log = logging.getLogger("kassa.outbox")

# Any constant works; it only has to be the same for every relay on the database
# (and differ from migrate.MIGRATION_LOCK_ID).
RELAY_LOCK_ID = 0x4B52454C4159  # "KRELAY"
# The webhook sender's own election (its process is not a serving worker: `kassa
# webhook-sender`, which `kassa serve` starts).
WEBHOOK_LOCK_ID = 0x4B5745424B  # "KWEBK"
CHANNEL = "kassa_outbox"
APPLICATION_NAME = "kassa-outbox-relay"
WEBHOOK_APPLICATION_NAME = "kassa-webhook-sender"
CONNECT_TIMEOUT_S = 10.0
QUERY_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
LOST_GRACE_S = 0.2
SESSION_SETTINGS = {
    "application_name": APPLICATION_NAME,
    # The server notices a vanished relay host (and frees its lock) after about 25 s
    # instead of the kernel's two hours. Ignored on unix sockets.
    "tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3",
    # Every read on this connection wants an index (journals_event from a cursor, the
    # primary keys); a plan cached while the statistics said "few rows" must not turn
    # into a scan of the whole journal table.
    "enable_seqscan": "off",
}
# The ways the connection or its statements fail; the relay reconnects after any of them.
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

TRY_LOCK_SQL = "SELECT pg_try_advisory_lock($1)"
NOTIFY_SQL = f"NOTIFY {CHANNEL}"
# `ahead`: the cursor names a transaction this cluster has not started yet, which only a
# logical restore into another cluster can cause (docs/operations.md, Backups).
CURSOR_SQL = """
SELECT xid::text AS xid, journal_id, xid >= pg_snapshot_xmax(pg_current_snapshot()) AS ahead
FROM journal_cursors WHERE sink = $1
"""
# The journals past a cursor, in (event_xid, id) order. Only those whose transaction id is
# below the snapshot's xmin: every such transaction has ended, so no journal can commit
# behind the cursor later (journal ids are drawn before the commit and commit out of
# order; transaction ids below xmin are all settled). Each with its ledger entries and,
# when it names another journal, that journal as it stands now (for its receipt).
# What an event is built from (core/ledger/events.py): a journal `j`, its entries, and the
# journal it names `t`; the webhook sender reads retries' journals with the same columns.
EVENT_COLUMNS = """
SELECT j.id, j.event_xid::text AS xid, j.external_ref, j.type, j.status, j.currency,
       j.payload::text AS legs, j.hold_expires_at IS NOT NULL AS is_hold,
       coalesce(j.completed_at, j.created_at) AS completed_at,
       j.error_code, j.error_message, j.error_param, j.description, j.target, j.traceparent,
       coalesce((SELECT json_agg(json_build_array(l.account_id, l.direction, l.amount,
                                                  l.balance_after) ORDER BY l.id)
                 FROM ledgers l WHERE l.journal_id = j.id), '[]')::text AS entries,
       t.type AS target_type, t.status AS target_status, t.currency AS target_currency,
       t.payload::text AS target_legs"""
DUE_SQL = EVENT_COLUMNS + """
FROM (SELECT * FROM journals
      WHERE event_xid IS NOT NULL AND (event_xid, id) > ($1::text::xid8, $2::bigint)
        AND event_xid < pg_snapshot_xmin(pg_current_snapshot())
      ORDER BY event_xid, id LIMIT $3) j
LEFT JOIN journals t ON t.external_ref = j.target
ORDER BY j.event_xid, j.id
"""
# The same journals' keys only: what a sink that takes none of them needs to pass them.
DUE_KEYS_SQL = """
SELECT event_xid::text AS xid, id, coalesce(completed_at, created_at) AS completed_at
FROM journals
WHERE event_xid IS NOT NULL AND (event_xid, id) > ($1::text::xid8, $2::bigint)
  AND event_xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY event_xid, id LIMIT $3
"""
# clock_timestamp(), not now(): the batch's lag up to the sink's acks.
ADVANCE_SQL = """
UPDATE journal_cursors SET xid = $2::text::xid8, journal_id = $3, updated_at = now()
WHERE sink = $1 RETURNING clock_timestamp()
"""
# Finished journals past a sink's cursor, the drain query of tests and benchmarks (not
# used by the relay: a count reads every waiting journal).
PAST_CURSOR_SQL = """
SELECT count(*) FROM journals j, journal_cursors c
WHERE c.sink = $1 AND j.event_xid IS NOT NULL AND (j.event_xid, j.id) > (c.xid, c.journal_id)
"""
OLDEST_SQL = """
SELECT extract(epoch FROM clock_timestamp() - coalesce(completed_at, created_at))::float8
FROM journals
WHERE event_xid IS NOT NULL AND (event_xid, id) > ($1::text::xid8, $2::bigint)
ORDER BY event_xid, id LIMIT 1
"""


class OutboxSession:
    """The relay's dedicated connection (never a pooled one: pooled connections are
    released without a session reset, so session state such as the lock must not live
    on them)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        # The sinks take turns: a connection runs one statement at a time.
        self._statement = asyncio.Lock()

    @classmethod
    async def connect(cls, dsn: str, application_name: str = APPLICATION_NAME) -> OutboxSession:
        """`application_name`: how pg_stat_activity names it (the webhook sender's own)."""
        return cls(await asyncpg.connect(
            dsn, timeout=CONNECT_TIMEOUT_S, command_timeout=QUERY_TIMEOUT_S,
            server_settings={**SESSION_SETTINGS, "application_name": application_name}))

    @contextlib.asynccontextmanager
    async def statement(self) -> AsyncIterator[asyncpg.Connection]:
        """The connection, to the caller alone until it is done (the webhook sink's and
        sender's SQL, server/adapters/postgres/webhooks.py)."""
        async with self._statement:
            yield self._conn

    async def try_lock(self, lock_id: int = RELAY_LOCK_ID) -> bool:
        """The lock `lock_id`, if no other session holds it; kept until this session ends."""
        async with self._statement:
            return bool(await self._conn.fetchval(TRY_LOCK_SQL, lock_id))

    async def notify(self) -> None:
        async with self._statement:
            await self._conn.execute(NOTIFY_SQL)

    async def listen(self, callback: Callable[..., Any]) -> None:
        async with self._statement:
            await self._conn.add_listener(CHANNEL, callback)

    async def cursor(self, sink: str) -> tuple[int, int]:
        """Where `sink` stands: the (transaction id, journal id) of the last journal it took."""
        async with self._statement:
            row = await self._conn.fetchrow(CURSOR_SQL, sink)
        if row is None:
            raise LookupError(f"no cursor for sink {sink!r} (migration 010 creates them)")
        if row["ahead"]:
            log.error("outbox relay: the %s cursor (transaction %s) is ahead of this cluster's "
                      "transaction ids, so nothing newer is delivered: the database was "
                      "restored from a logical dump? See docs/operations.md, Backups", sink,
                      row["xid"])
        return int(row["xid"]), row["journal_id"]

    async def due(self, after: tuple[int, int], limit: int) -> list[asyncpg.Record]:
        """Up to `limit` journals past `after` whose event is due, in cursor order."""
        async with self._statement:
            return await self._conn.fetch(DUE_SQL, str(after[0]), after[1], limit)

    async def due_keys(self, after: tuple[int, int], limit: int) -> list[asyncpg.Record]:
        """As `due`, only (xid, id, completed_at) of each."""
        async with self._statement:
            return await self._conn.fetch(DUE_KEYS_SQL, str(after[0]), after[1], limit)

    async def advance(self, sink: str, to: tuple[int, int]) -> dt.datetime:
        """Move `sink`'s cursor to `to`; returns the database's clock at that moment."""
        async with self._statement:
            now = await self._conn.fetchval(ADVANCE_SQL, sink, str(to[0]), to[1])
        if now is None:
            raise LookupError(f"no cursor for sink {sink!r} (migration 010 creates them)")
        return now  # type: ignore[no-any-return]

    async def oldest_age(self, after: tuple[int, int]) -> float:
        """Age in seconds of the oldest journal past `after` (0 when there is none)."""
        async with self._statement:
            age = await self._conn.fetchval(OLDEST_SQL, str(after[0]), after[1])
        return max(0.0, float(age or 0.0))

    async def lost(self, grace_s: float = LOST_GRACE_S) -> bool:
        """Whether the connection is gone or goes within `grace_s`: after an unexpected
        error, to tell a session the server ended (its goodbye and the end of the stream
        arrive apart) from a defect."""
        deadline = time.monotonic() + grace_s
        while not self._conn.is_closed():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        """Close the connection, which releases the lock and the LISTEN."""
        try:
            await self._conn.close(timeout=CLOSE_TIMEOUT_S)
        except asyncio.CancelledError:
            self._conn.terminate()
            raise
        except Exception:  # a broken connection: the server ends the session anyway
            log.debug("outbox relay: closing the connection failed", exc_info=True)
            self._conn.terminate()
