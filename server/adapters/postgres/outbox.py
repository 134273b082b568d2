"""The outbox relay's SQL, on the one dedicated connection each relay holds.

The relay election is an advisory lock on that connection (`try_lock`); standbys forward
wake-ups as NOTIFY, which the publisher LISTENs for; the publisher reads the oldest rows,
deletes them after the Kafka acks, and reports the oldest row's age. Closing the
connection releases the lock and the LISTEN. The election and publishing logic is in
server.adapters.kafka (relay, publisher)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

log = logging.getLogger("kassa.outbox")

# Any constant works; it only has to be the same for every relay on the database
# (and differ from migrate.MIGRATION_LOCK_ID).
RELAY_LOCK_ID = 0x4B52454C4159  # "KRELAY"
CHANNEL = "kassa_outbox"
APPLICATION_NAME = "kassa-outbox-relay"
CONNECT_TIMEOUT_S = 10.0
QUERY_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
LOST_GRACE_S = 0.2
SESSION_SETTINGS = {
    "application_name": APPLICATION_NAME,
    # The server notices a vanished relay host (and frees its lock) after about 25 s
    # instead of the kernel's two hours. Ignored on unix sockets.
    "tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3",
    # A queue table's statistics are always wrong: analyzed when nearly empty, its pages
    # then fill with dead rows until vacuum. A plan cached meanwhile may read them all,
    # every time. Every query on this connection wants the primary key.
    "enable_seqscan": "off",
}
# The ways the connection or its statements fail; the relay reconnects after any of them.
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

TRY_LOCK_SQL = "SELECT pg_try_advisory_lock($1)"
NOTIFY_SQL = f"NOTIFY {CHANNEL}"
# Every row in the table waits to be published. `published_at` stays NULL (drain queries
# count `WHERE published_at IS NULL`); a row an older relay marked during a rolling
# upgrade goes out once more rather than staying forever. `id > $2`: see the publisher's
# scan floor.
CLAIM_SQL = "SELECT id, receipt_code, payload FROM outbox WHERE id > $2 ORDER BY id LIMIT $1"
# clock_timestamp(), not now(): the batch's lag up to its acks, one value per batch.
DELETE_SQL = """
WITH gone AS (DELETE FROM outbox WHERE id = ANY($1::bigint[]) RETURNING created_at)
SELECT extract(epoch FROM clock_timestamp() - min(created_at))::float8 FROM gone
"""
OLDEST_SQL = """
SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 FROM outbox ORDER BY id LIMIT 1
"""


class OutboxSession:
    """The relay's dedicated connection (never a pooled one: pooled connections are
    released without a session reset, so session state such as the lock must not live
    on them)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    @classmethod
    async def connect(cls, dsn: str) -> OutboxSession:
        return cls(await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S,
                                         command_timeout=QUERY_TIMEOUT_S,
                                         server_settings=SESSION_SETTINGS))

    async def try_lock(self) -> bool:
        """The relay lock, if no other session holds it; kept until this session ends."""
        return bool(await self._conn.fetchval(TRY_LOCK_SQL, RELAY_LOCK_ID))

    async def notify(self) -> None:
        await self._conn.execute(NOTIFY_SQL)

    async def listen(self, callback: Callable[..., Any]) -> None:
        await self._conn.add_listener(CHANNEL, callback)

    async def oldest_rows(self, limit: int, above: int) -> list[asyncpg.Record]:
        """Up to `limit` rows with ids above `above`, oldest first: records of
        (id, receipt code, payload)."""
        return await self._conn.fetch(CLAIM_SQL, limit, above)

    async def delete(self, ids: list[int]) -> float:
        """Delete published rows; returns the oldest one's age (its lag up to now)."""
        return max(0.0, await self._conn.fetchval(DELETE_SQL, ids) or 0.0)

    async def oldest_age(self) -> float:
        """Age in seconds of the oldest row (0 when the table is empty)."""
        return float(await self._conn.fetchval(OLDEST_SQL) or 0.0)

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
