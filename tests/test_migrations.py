"""The migration runner against the real PostgreSQL: checksums, --status, statement-by-
statement files that can run again, lock_timeout with retries, INVALID indexes rebuilt,
and `kassa serve` with KASSA_MIGRATE_ON_START=0 (docs/operations.md, Upgrades and
migrations)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest

from server.adapters.postgres import migrate
from server.adapters.postgres.migrate import (
    LockPolicy,
    Migration,
    MigrationRefused,
    apply_migrations,
    migration_files,
    migration_status,
)
from tests.fixtures.servers import PostgresServer
from tests.test_holds_e2e import fetch

FAST = LockPolicy(timeout_ms=50, attempts_max=3, backoff_min_s=0.01, backoff_max_s=0.05)
_numbers = iter(range(10**6))


@pytest.fixture
async def empty_dsn(pg_server: PostgresServer) -> AsyncIterator[str]:
    """A database with nothing in it: never migrated."""
    name = f"kassa_mig_{os.getpid()}_{next(_numbers)}"
    conn = await asyncpg.connect(pg_server.dsn())
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    yield pg_server.dsn(name)


async def schema_shape(dsn: str) -> list[tuple[str, ...]]:
    """Every index (with its definition and validity), constraint and trigger of the
    public schema: what running a migration file twice must leave unchanged."""
    rows = await fetch(dsn, """
        SELECT 'index', c.relname, pg_get_indexdef(c.oid), i.indisvalid::text
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'
        UNION ALL
        SELECT 'constraint', conname, pg_get_constraintdef(oid), convalidated::text
          FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        UNION ALL
        SELECT 'trigger', tgname, pg_get_triggerdef(oid), '' FROM pg_trigger WHERE NOT tgisinternal
        ORDER BY 1, 2""")
    return [tuple(r) for r in rows]


async def test_a_fresh_database_gets_every_migration_once_with_its_checksum(
        empty_dsn: str) -> None:
    files = migration_files()
    assert await apply_migrations(empty_dsn) == [m.version for m in files]
    assert await apply_migrations(empty_dsn) == []
    rows = await fetch(empty_dsn, "SELECT version, checksum FROM schema_migrations ORDER BY 1")
    assert [(r["version"], r["checksum"]) for r in rows] == [(m.version, m.checksum) for m in files]
    # Every constraint a marked file added NOT VALID was validated after.
    assert not await fetch(empty_dsn, "SELECT conname FROM pg_constraint WHERE NOT convalidated")


async def test_status_changes_nothing_and_lists_pending_then_applied(empty_dsn: str) -> None:
    versions = [m.version for m in migration_files()]
    before = await migration_status(empty_dsn)
    assert [(s.version, s.state) for s in before] == [(v, "pending") for v in versions]
    assert await fetch(empty_dsn, "SELECT to_regclass('schema_migrations') AS t") == [(None,)]
    await apply_migrations(empty_dsn)
    assert {s.state for s in await migration_status(empty_dsn)} == {"applied"}


async def test_an_edited_migration_refuses_with_one_line_naming_it(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = '008_holds'")
    await conn.close()
    with pytest.raises(MigrationRefused, match="migration 008_holds was changed") as refused:
        await apply_migrations(pg_dsn)
    assert "\n" not in str(refused.value)
    states = {s.version: s.state for s in await migration_status(pg_dsn)}
    assert states["008_holds"] == "changed"
    with pytest.raises(MigrationRefused, match="008_holds"):
        migrate.check_schema(await migration_status(pg_dsn))


async def test_a_database_migrated_before_checksums_gets_those_of_its_files(pg_dsn: str) -> None:
    """The previous release's table has no checksum column: --status reads it unchanged,
    and the first migrate records the checksums of the files it finds applied."""
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("ALTER TABLE schema_migrations DROP COLUMN checksum")
    await conn.close()
    assert {s.state for s in await migration_status(pg_dsn)} == {"unrecorded"}
    assert await apply_migrations(pg_dsn) == []
    assert {s.state for s in await migration_status(pg_dsn)} == {"applied"}


async def test_every_marked_migration_can_run_again(pg_dsn: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after a marked file's last statement but before it was recorded runs the
    whole file again: the schema must come out the same."""
    before = await schema_shape(pg_dsn)
    marked = [m.version for m in migration_files() if not m.transactional]
    assert {"007_listing", "008_holds", "009_write_once", "013_metadata_filters"} <= set(marked)
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("DELETE FROM schema_migrations WHERE version = ANY($1)", marked)
    await conn.close()
    assert await apply_migrations(pg_dsn) == marked
    assert await schema_shape(pg_dsn) == before


def with_extra(monkeypatch: pytest.MonkeyPatch, *extra: Migration) -> None:
    every = migration_files()
    monkeypatch.setattr(migrate, "migration_files", lambda: [*every, *extra])


async def test_a_failed_concurrent_build_is_dropped_and_built_again(
        pg_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A unique index built CONCURRENTLY over duplicates fails and leaves an INVALID
    index; IF NOT EXISTS alone would keep it on the next run."""
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("CREATE TABLE t (k int)")
    await conn.execute("INSERT INTO t VALUES (1), (1)")
    with_extra(monkeypatch, Migration("900_unique", "-- kassa:no-transaction\n"
                                      "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_k ON t (k);\n"))
    with pytest.raises(asyncpg.UniqueViolationError):
        await apply_migrations(pg_dsn)
    valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_k'::regclass"
    assert await conn.fetchval(valid) is False
    await conn.execute("DELETE FROM t WHERE ctid = (SELECT max(ctid) FROM t)")
    with caplog.at_level(logging.WARNING, "kassa.migrate"):
        assert await apply_migrations(pg_dsn) == ["900_unique"]
    assert await conn.fetchval(valid) is True
    assert "index t_k is INVALID" in caplog.text
    await conn.close()


LOCKING = Migration("901_lock", "ALTER TABLE accounts ADD COLUMN extra text;\n")


async def test_a_lock_not_granted_in_time_is_retried_then_refused(
        pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with_extra(monkeypatch, LOCKING)
    holder = await asyncpg.connect(pg_dsn)
    tx = holder.transaction()
    await tx.start()
    await holder.execute("LOCK TABLE accounts IN ROW EXCLUSIVE MODE")  # an open write
    with pytest.raises(MigrationRefused, match="901_lock: a lock was not granted within "
                                               "50 ms in 3 attempts"):
        await apply_migrations(pg_dsn, policy=FAST)
    await tx.rollback()
    assert await apply_migrations(pg_dsn, policy=FAST) == ["901_lock"]
    await holder.close()


async def test_writes_wait_no_longer_than_lock_timeout_and_the_migration_lands_after(
        pg_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """While an open transaction keeps the migration from its lock, writes queued behind the
    waiting ALTER go on after at most lock_timeout; the retry lands once it ends."""
    with_extra(monkeypatch, LOCKING)
    holder, writer = await asyncpg.connect(pg_dsn), await asyncpg.connect(pg_dsn)
    await writer.execute("INSERT INTO accounts (id, currency) VALUES ('a', 'EUR')")
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT * FROM accounts FOR UPDATE")
    policy = LockPolicy(timeout_ms=200, attempts_max=50, backoff_min_s=0.01, backoff_max_s=0.05)
    with caplog.at_level(logging.WARNING, "kassa.migrate"):
        migrating = asyncio.create_task(apply_migrations(pg_dsn, policy=policy))
        async with asyncio.timeout(30):  # no lock_timeout: the first attempt never ends
            while "retrying" not in caplog.text:
                await asyncio.sleep(0.01)
        # Queued behind the migration's waiting ALTER (ACCESS EXCLUSIVE): granted when it
        # gives up, within lock_timeout, though the holder's transaction is still open.
        start = asyncio.get_running_loop().time()
        await writer.execute("INSERT INTO accounts (id, currency) VALUES ('b', 'EUR')")
        waited = asyncio.get_running_loop().time() - start
        await tx.rollback()
        assert await migrating == ["901_lock"]
    assert waited < 0.2 + 0.1
    await holder.close()
    await writer.close()


def kassa(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KASSA_")}
    return subprocess.run([sys.executable, "-m", "server.process.cli", *args],
                          env={**clean, **env}, capture_output=True, text=True, timeout=60)


async def test_migrate_status_prints_every_migration_and_exits_0(empty_dsn: str) -> None:
    result = await asyncio.to_thread(kassa, "migrate", "--status",
                                     env={"KASSA_DATABASE_URL": empty_dsn})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [[m.version, "pending"]
                                                     for m in migration_files()]
    done = await asyncio.to_thread(kassa, "migrate", env={"KASSA_DATABASE_URL": empty_dsn})
    assert done.returncode == 0 and done.stdout.startswith(f"applied {len(lines)} migrations")
    result = await asyncio.to_thread(kassa, "migrate", "--status",
                                     env={"KASSA_DATABASE_URL": empty_dsn})
    assert {line.split()[1] for line in result.stdout.splitlines()} == {"applied"}


SERVE_ELSEWHERE = {  # nothing embedded started: the schema check comes first
    "KASSA_REDIS_URL": "redis://127.0.0.1:1/0", "KASSA_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    "KASSA_RECEIPT_SERVICE_ADDR": "127.0.0.1:1", "KASSA_NOTIFICATION_SERVICE_ADDR": "127.0.0.1:1",
    "KASSA_API_KEYS": "k:admin", "KASSA_MIGRATE_ON_START": "0",
}


async def test_serve_without_migrating_refuses_a_schema_lacking_a_migration(
        pg_dsn: str, tmp_path: object) -> None:
    conn = await asyncpg.connect(pg_dsn)
    last = migration_files()[-1].version
    await conn.execute("DELETE FROM schema_migrations WHERE version = $1", last)
    await conn.close()
    result = await asyncio.to_thread(
        kassa, "serve", "--port", "1", "--data-dir", str(tmp_path),
        env={**SERVE_ELSEWHERE, "KASSA_DATABASE_URL": pg_dsn})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"kassa: the database lacks 1 migrations this release needs ({last}) and "
        f"KASSA_MIGRATE_ON_START=0: run `kassa migrate` first")
    assert await fetch(pg_dsn, "SELECT 1 FROM schema_migrations WHERE version = $1", last) == []
