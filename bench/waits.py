"""What the database's sessions were doing during the load: pg_stat_activity sampled every
WAIT_INTERVAL_S, each client session of the benchmarked database counted in one bucket.

The buckets say where a commit's time goes when throughput stops growing with load:

- `cpu`: running a statement (state active, no wait event);
- `lock`: waiting for a row or transaction lock another session holds (wait_event_type
  Lock): the serialisation of commits on shared accounts shows up here;
- `wal`: waiting for the WAL to be written or flushed (WALWrite, WALSync, or any IO/LWLock
  wait on the WAL: its commit's durability);
- `app`: inside a transaction, waiting for the client's next statement (idle in
  transaction): a round trip to Python while the transaction's locks are held;
- `other`: any other wait (buffer locks, IO on data files, the client reading a result).

Idle sessions (no transaction open) are not counted. The share of each bucket is over
every counted session-sample, so `lock` 0.5 means half the time a session was in a
transaction, it was waiting for another one's locks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import asyncpg

WAIT_INTERVAL_S = 0.05
ACTIVITY_SQL = """
SELECT state, wait_event_type, wait_event FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend' AND state IS DISTINCT FROM 'idle'
"""
WAL_EVENTS = frozenset({"WALWrite", "WALSync", "WALInsert", "WALBufMapping", "WALWriteLock"})


def bucket(state: str | None, wait_type: str | None, wait_event: str | None) -> str:
    if state == "idle in transaction":
        return "app"
    if wait_type is None:
        return "cpu"
    if wait_type == "Lock":
        return "lock"
    if wait_event in WAL_EVENTS:
        return "wal"
    return "other"


class WaitSampler:
    """`async with WaitSampler(dsn) as waits:` samples until the block ends; `summary()`
    then gives the shares and the mean number of sessions in a transaction."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._counts: Counter[str] = Counter()
        self._samples = 0
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> WaitSampler:
        self._conn = await asyncpg.connect(self._dsn)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._conn is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._conn.close()

    async def _run(self) -> None:
        assert self._conn is not None
        while True:
            rows = await self._conn.fetch(ACTIVITY_SQL)
            self._samples += 1
            self._counts.update(bucket(r["state"], r["wait_event_type"], r["wait_event"])
                                for r in rows)
            await asyncio.sleep(WAIT_INTERVAL_S)

    def summary(self) -> dict[str, Any]:
        seen = sum(self._counts.values())
        return {"samples": self._samples,
                "sessions_in_transaction": round(seen / self._samples, 2) if self._samples else None,
                "share": {k: round(self._counts[k] / seen, 3) if seen else None
                          for k in ("cpu", "lock", "wal", "app", "other")}}
