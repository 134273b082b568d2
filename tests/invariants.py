"""The DESIGN.md invariants, checked with SQL against the real database.

The checks live in server/postgres/verify.py (`kassa verify` runs the same ones). Receipt
registration is checked only when asked: it is batched after the outcome, and tests that
check right after a load would see the lag, and most tests run without a receipt service.
"""

from __future__ import annotations

import asyncpg

from server.postgres.verify import GRACE_S, verify


async def violations(dsn: str, *, receipts: bool = False,
                     grace_s: float = GRACE_S) -> dict[str, list[tuple[object, ...]]]:
    report = await verify(dsn, grace_s=grace_s, receipts=receipts)
    return report.violations()


async def assert_invariants(dsn: str, *, receipts: bool = False,
                            grace_s: float = GRACE_S) -> None:
    found = await violations(dsn, receipts=receipts, grace_s=grace_s)
    assert not found, f"invariants broken: {found}"


async def unfinished(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM journals WHERE status = 'processing'"))
    finally:
        await conn.close()
