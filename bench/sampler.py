"""Journal counts sampled from PostgreSQL: completed/s is measured in the database, not
inferred from answers, because a 202 only promises that the work will be done; and the work
is done only when its event was published too (no finished journal past the relay's Kafka
cursor, migration 010)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg

from bench import indexes, wal
from server.adapters.postgres.outbox import PAST_CURSOR_SQL as UNPUBLISHED_SQL

INTERVAL_S = 1.0
KAFKA_UNPUBLISHED = UNPUBLISHED_SQL.replace("$1", "'kafka'")
DRAIN_POLL_S = 0.25
FINAL = ("completed", "failed")


def counts_sql(final: tuple[str, ...] = FINAL) -> str:
    """`final`: the statuses counted as done (the mixed scenario: held, completed, voided)."""
    statuses = ", ".join(f"'{s}'" for s in final)
    return (
        f"SELECT count(*) FILTER (WHERE status IN ({statuses})) AS final, "
        "count(*) FILTER (WHERE status = 'processing') AS backlog, count(*) AS total, "
        # Finished journals past the Kafka cursor: events not yet published (an index
        # range scan of journals_event from the cursor).
        f"({KAFKA_UNPUBLISHED}) AS unpublished "
        "FROM journals")


COUNTS_SQL = counts_sql()
# With a webhook registered (--webhook), an event is done when its deliveries are too: the
# journals past the webhooks cursor and the deliveries not yet sent count as unpublished,
# so the CPU window holds the sending (a build without webhooks keeps COUNTS_SQL).
WEBHOOK_BACKLOG = (
    "(CASE WHEN EXISTS (SELECT 1 FROM webhook_endpoints) THEN ("
    + UNPUBLISHED_SQL.replace("$1", "'webhooks'")
    + ") ELSE 0 END) + (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending')")
HAS_WEBHOOKS_SQL = "SELECT to_regclass('webhook_deliveries') IS NOT NULL"
# A build from before migration 010 (one compared in the same run with --kassa-bin) keeps
# its events in an outbox table, every row of which is unpublished.
OUTBOX_UNPUBLISHED = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
HAS_CURSORS_SQL = "SELECT to_regclass('journal_cursors') IS NOT NULL"
# Journals by kind (a hold is a transfer or withdrawal with a deadline) and status: the
# mixed scenario's breakdown, read at the start of the load and after the drain.
KINDS_SQL = ("SELECT CASE WHEN hold_expires_at IS NOT NULL THEN 'hold' ELSE type END AS kind, "
             "status, count(*) AS n FROM journals GROUP BY 1, 2")


@dataclass
class Sample:
    t: float  # seconds since the sampler started
    final: int
    backlog: int
    total: int
    unpublished: int


@dataclass
class Drained:
    journals: Sample  # the first sample with no journal processing (or the last one)
    done: Sample  # the first with no journal processing and no event unpublished


@dataclass
class Sampler:
    dsn: str
    final: tuple[str, ...] = FINAL
    samples: list[Sample] = field(default_factory=list)
    _conn: asyncpg.Connection | None = None
    _t0: float = 0.0
    _task: asyncio.Task[None] | None = None
    # The periodic task and the explicit start/end samples share one connection.
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _counts: str = ""  # the counts query, when the build's schema needs another one

    async def __aenter__(self) -> Sampler:
        self._conn = await asyncpg.connect(self.dsn)
        self._t0 = time.monotonic()
        if not await self._conn.fetchval(HAS_CURSORS_SQL):
            self._counts = counts_sql(self.final).replace(KAFKA_UNPUBLISHED, OUTBOX_UNPUBLISHED)
        elif await self._conn.fetchval(HAS_WEBHOOKS_SQL):
            self._counts = counts_sql(self.final).replace(
                KAFKA_UNPUBLISHED, f"{KAFKA_UNPUBLISHED}) + ({WEBHOOK_BACKLOG}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_periodic()
        assert self._conn is not None
        await self._conn.close()

    async def sample(self) -> Sample:
        assert self._conn is not None
        async with self._lock:
            row = await self._conn.fetchrow(self._counts or counts_sql(self.final))
        s = Sample(round(time.monotonic() - self._t0, 3), row["final"], row["backlog"], row["total"],
                   row["unpublished"])
        self.samples.append(s)
        return s

    async def kinds(self) -> dict[str, int]:
        """Journals by "<kind>:<status>" (KINDS_SQL)."""
        assert self._conn is not None
        async with self._lock:
            rows = await self._conn.fetch(KINDS_SQL)
        return {f"{r['kind']}:{r['status']}": r["n"] for r in rows}

    async def lsn(self) -> str | None:
        """The cluster's WAL position now (bench/wal.py)."""
        assert self._conn is not None
        async with self._lock:
            return await wal.current_lsn(self._conn)

    async def index_stats(self) -> indexes.Snapshot:
        """The table counters, once settled (bench/indexes.py: waits STATS_SETTLE_S)."""
        assert self._conn is not None
        async with self._lock:
            return await indexes.snapshot(self._conn)

    def start_periodic(self) -> None:
        self._task = asyncio.create_task(self._every_second())

    async def stop_periodic(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _every_second(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL_S)
            await self.sample()

    async def drain(self, timeout_s: float) -> Drained:
        """Sample until no journal is `processing` and no event is unpublished, or
        timeout_s passed. The journal backlog may reach 0 before the relay catches up."""
        deadline = time.monotonic() + timeout_s
        last = await self.sample()
        journals = last if not last.backlog else None
        while (last.backlog or last.unpublished) and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
            last = await self.sample()
            if journals is None and not last.backlog:
                journals = last
        return Drained(journals or last, last)
