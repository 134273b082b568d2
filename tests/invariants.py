"""The ledger invariants (docs/design.md), checked with SQL against the real database.

The checks live in server/adapters/postgres/verify.py (`kassa verify` runs the same ones). Receipt
registration is checked only when asked: the relay does it after the outcome, and tests that
check right after a load would see the lag, and most tests run without a receipt service.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from server.adapters.postgres.outbox import PAST_CURSOR_SQL as UNPUBLISHED
from server.adapters.postgres.verify import GRACE_S, verify


async def violations(dsn: str, *, receipts: bool = False,
                     grace_s: float = GRACE_S) -> dict[str, list[tuple[object, ...]]]:
    report = await verify(dsn, grace_s=grace_s, receipts=receipts)
    return report.violations()


async def assert_invariants(dsn: str, *, receipts: bool = False,
                            grace_s: float = GRACE_S) -> None:
    found = await violations(dsn, receipts=receipts, grace_s=grace_s)
    assert not found, f"invariants broken: {found}"


async def scalar(dsn: str, sql: str, *args: object) -> Any:
    """One value read on a connection of its own (tests check the database between steps)."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def unfinished(dsn: str) -> int:
    return int(await scalar(dsn, "SELECT count(*) FROM journals WHERE status = 'processing'"))


async def unpublished_events(dsn: str, sink: str = "kafka") -> int:
    """Finished journals the relay has not yet delivered to `sink` (past its cursor):
    events not yet published to Kafka, or receipts not yet registered ("receipts")."""
    return int(await scalar(dsn, UNPUBLISHED, sink))
