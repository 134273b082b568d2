"""Every migration against a ledger of 100,000 journals while writes go on: the writes'
p99 stays under 100 ms in every migration's window, and no write waited on a lock the
migration held or queued for longer than lock_timeout (bench/migration_load.py runs the
same at millions of journals: docs/operations.md, "Migrations under load")."""

from __future__ import annotations

import asyncpg

from bench.migration_load import P99_BOUND_MS, migrate_under_load, seed, table
from server.adapters.postgres.migrate import LockPolicy, migration_files
from tests.fixtures.servers import PostgresServer


async def test_no_migration_blocks_the_writes(pg_server: PostgresServer) -> None:
    conn = await asyncpg.connect(pg_server.dsn())
    await conn.execute("CREATE DATABASE kassa_migration_load")
    await conn.close()
    dsn = pg_server.dsn("kassa_migration_load")
    await seed(dsn, journals=100_000, accounts=1_000)
    policy = LockPolicy()  # as shipped: KASSA_MIGRATE_LOCK_TIMEOUT_MS's default
    windows, errors = await migrate_under_load(dsn, rate=100, writers=4, policy=policy,
                                               baseline_s=1.0)
    report = table(windows)
    assert errors == [], report
    assert [w.migration for w in windows[1:]] == [m.version for m in migration_files()[1:]]
    assert all(w.writes > 0 or w.seconds < 0.05 for w in windows), report
    assert max(w.p99_ms for w in windows) < P99_BOUND_MS, report
    assert max(w.lock_wait_max_ms for w in windows) <= policy.timeout_ms, report
    # 007's batched backfill: both accounts of every journal written before it.
    conn = await asyncpg.connect(dsn)
    backfilled = await conn.fetchval(
        "SELECT count(*) FROM journal_accounts WHERE journal_id <= 100000")
    await conn.close()
    assert backfilled == 2 * 100_000
