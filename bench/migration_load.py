"""Every migration, one at a time, against a ledger of millions of journals while writes
go on: the writes' latency per migration, and the longest any write waited on a lock the
migration held or queued for (docs/operations.md, "Migrations under load, measured").

Run as `python -m bench.migration_load [--journals 3000000] [--rate 200] [--no-fsync]`
(the 3-million run takes 10 to 12 minutes here, 5 of them seeding). It starts its own
PostgreSQL under /tmp (fsync on by default, as a production server), applies migration 001
only, writes the journals and their ledger entries with SQL (one INSERT ... SELECT per
250,000: the server's own paths would take hours), then starts the load and applies every
later migration in turn with the runner of this release (server/adapters/postgres/
migrate.py, its default lock_timeout).

The load is open-loop: `--writers` sessions, each posting transfers between accounts of its
own at `rate / writers` a second, in the SQL every schema from 001 on accepts (two balance
updates, a journal, two entries, one transaction). A write's latency runs from when it was
due, so a write that waited makes the next ones late too, as clients would see it. A
sampler reads pg_stat_activity every 20 ms for writes waiting on a lock held or queued for
by the migrating session (application_name `kassa migrate`, pg_blocking_pids).

tests/test_migration_load.py runs the same at 100,000 journals and asserts the bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from server.adapters.postgres.migrate import (
    APPLICATION_NAME,
    LockPolicy,
    apply_migrations,
    migration_files,
)

P99_BOUND_MS = 100.0
SEED_CHUNK = 250_000
SAMPLE_INTERVAL_S = 0.02

# 1 journal in 50 carries metadata (013's GIN indexes), 1 in 10 an Idempotency-Key (004's
# unique index), 1 in 1000 failed (007's partial indexes); every one completed otherwise.
SEED_JOURNALS = """
INSERT INTO journals (external_ref, type, status, currency, payload, metadata,
                      idempotency_scope, idempotency_key, created_at, completed_at)
SELECT 'seed-' || g, 'transfer', CASE WHEN g % 1000 = 0 THEN 'failed' ELSE 'completed' END,
       'EUR', jsonb_build_array(jsonb_build_array('acc_' || g % $3, 'acc_' || (g + 1) % $3, 1)),
       CASE WHEN g % 50 = 0 THEN jsonb_build_object('order', 'o-' || g) ELSE '{}' END,
       CASE WHEN g % 10 = 0 THEN 'seed' END, CASE WHEN g % 10 = 0 THEN 'k-' || g END,
       now() - ($4 - g) * interval '1 second', now() - ($4 - g) * interval '1 second'
FROM generate_series($1::bigint, $2::bigint) AS g
"""
SEED_ENTRIES = """
INSERT INTO ledgers (journal_id, account_id, direction, amount, balance_after, created_at)
SELECT j.id, leg.account, leg.direction, 1, 0, j.created_at
FROM journals j
CROSS JOIN LATERAL (VALUES (j.payload -> 0 ->> 0, 'debit'), (j.payload -> 0 ->> 1, 'credit'))
     AS leg(account, direction)
WHERE j.id BETWEEN $1 AND $2 AND j.status = 'completed'
"""
TRANSFER_JOURNAL = """
INSERT INTO journals (external_ref, type, status, currency, payload, completed_at)
VALUES ($1, 'transfer', 'completed', 'EUR', jsonb_build_array(jsonb_build_array($2::text,
        $3::text, 1)), now())
RETURNING id
"""
TRANSFER_ENTRIES = """
INSERT INTO ledgers (journal_id, account_id, direction, amount, balance_after)
VALUES ($1, $2, 'debit', 1, $4), ($1, $3, 'credit', 1, $5)
"""
BLOCKED_BY_MIGRATION = """
SELECT coalesce(max(extract(epoch FROM now() - w.query_start)), 0)
FROM pg_stat_activity w
WHERE w.wait_event_type = 'Lock' AND w.application_name = 'kassa load'
  AND EXISTS (SELECT FROM pg_stat_activity m
              WHERE m.application_name = $1 AND m.pid = ANY(pg_blocking_pids(w.pid)))
"""


async def seed(dsn: str, journals: int, accounts: int) -> None:
    """Migration 001, `accounts` accounts and `journals` completed journals with entries."""
    await apply_migrations(dsn, until="001_ledger")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO accounts (id, currency) SELECT 'acc_' || g, 'EUR' "
                           "FROM generate_series(0, $1 - 1) AS g", accounts)
        for first in range(1, journals + 1, SEED_CHUNK):
            last = min(first + SEED_CHUNK - 1, journals)
            await conn.execute(SEED_JOURNALS, first, last, accounts, journals)
            await conn.execute(SEED_ENTRIES, first, last)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


@dataclass
class Load:
    """Open-loop transfers from `writers` sessions; `samples` are (due, latency) in s."""

    dsn: str
    rate: float
    writers: int
    samples: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        await asyncio.gather(*(self._writer(n) for n in range(self.writers)))

    async def _writer(self, n: int) -> None:
        conn = await asyncpg.connect(self.dsn, server_settings={"application_name": "kassa load"})
        a, b = f"load_{n}_a", f"load_{n}_b"
        await conn.execute("INSERT INTO accounts (id, currency) VALUES ($1, 'EUR'), ($2, 'EUR') "
                           "ON CONFLICT DO NOTHING", a, b)
        interval, due, count = self.writers / self.rate, time.monotonic(), 0
        try:
            while not self.stopping.is_set():
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await self._transfer(conn, f"load-{n}-{count}", a, b)
                self.samples.append((due, time.monotonic() - due))
                due, count = due + interval, count + 1
        finally:
            await conn.close()

    async def _transfer(self, conn: asyncpg.Connection, ref: str, a: str, b: str) -> None:
        try:
            async with conn.transaction():
                low = await conn.fetchval(
                    "UPDATE accounts SET balance = balance - 1 WHERE id = $1 RETURNING balance", a)
                high = await conn.fetchval(
                    "UPDATE accounts SET balance = balance + 1 WHERE id = $1 RETURNING balance", b)
                journal = await conn.fetchval(TRANSFER_JOURNAL, ref, a, b)
                await conn.execute(TRANSFER_ENTRIES, journal, a, b, low, high)
        except asyncpg.PostgresError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")


@dataclass
class Window:
    """One migration (or the quiet baseline) and what the load saw meanwhile."""

    migration: str
    seconds: float
    writes: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    lock_wait_max_ms: float  # the longest a write was seen blocked by the migrating session


@dataclass
class Sampler:
    """The longest lock wait of a load write behind the migrating session, per sample."""

    dsn: str
    waits: list[tuple[float, float]] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not self.stopping.is_set():
                waited = float(await conn.fetchval(BLOCKED_BY_MIGRATION, APPLICATION_NAME))
                self.waits.append((time.monotonic(), waited))
                await asyncio.sleep(SAMPLE_INTERVAL_S)
        finally:
            await conn.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)] if ordered else 0.0


def window(name: str, start: float, end: float, load: Load, sampler: Sampler) -> Window:
    latencies = [lat * 1000 for due, lat in load.samples if start <= due < end]
    waits = [w * 1000 for at, w in sampler.waits if start <= at <= end + SAMPLE_INTERVAL_S]
    return Window(name, round(end - start, 2), len(latencies),
                  round(percentile(latencies, 0.5), 1), round(percentile(latencies, 0.99), 1),
                  round(max(latencies, default=0.0), 1), round(max(waits, default=0.0), 1))


async def migrate_under_load(dsn: str, *, rate: float, writers: int,
                             policy: LockPolicy | None = None,
                             baseline_s: float = 3.0) -> tuple[list[Window], list[str]]:
    """Apply every migration after 001, one at a time, while the load runs; the windows
    (a quiet baseline first) and the load's errors."""
    load, sampler = Load(dsn, rate, writers), Sampler(dsn)
    tasks = [asyncio.create_task(load.run()), asyncio.create_task(sampler.run())]
    windows = []
    try:
        start = time.monotonic()
        await asyncio.sleep(baseline_s)  # the load alone: what the migrations compare with
        windows.append(window("(no migration)", start, time.monotonic(), load, sampler))
        for migration in migration_files()[1:]:
            start = time.monotonic()
            await apply_migrations(dsn, until=migration.version, policy=policy)
            windows.append(window(migration.version, start, time.monotonic(), load, sampler))
    finally:
        load.stopping.set()
        sampler.stopping.set()
        await asyncio.gather(*tasks)
    return windows, load.errors


def table(windows: list[Window]) -> str:
    lines = ["| migration | s | writes | p50 ms | p99 ms | max ms | lock wait max ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {w.migration} | {w.seconds} | {w.writes} | {w.p50_ms} | {w.p99_ms} | "
              f"{w.max_ms} | {w.lock_wait_max_ms} |" for w in windows]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> tuple[list[Window], list[str]]:
    from tests.fixtures.servers import start_postgres

    server = start_postgres(fsync=args.fsync)
    try:
        conn = await asyncpg.connect(server.dsn())
        await conn.execute("CREATE DATABASE kassa")
        await conn.close()
        dsn = server.dsn("kassa")
        began = time.monotonic()
        await seed(dsn, args.journals, args.accounts)
        print(f"seeded {args.journals:,} journals in {time.monotonic() - began:.0f} s", flush=True)
        return await migrate_under_load(dsn, rate=args.rate, writers=args.writers)
    finally:
        server.stop()


def report(args: argparse.Namespace, windows: list[Window], errors: list[str]) -> int:
    print(table(windows))
    worst = max(w.p99_ms for w in windows)
    print(f"worst p99 {worst} ms (bound {P99_BOUND_MS:g}); load errors: {len(errors)}")
    out = Path(args.output or f"bench/results/{datetime.now(UTC):%Y-%m-%d}-migration-load.json")
    out.write_text(json.dumps({"journals": args.journals, "fsync": args.fsync, "rate": args.rate,
                               "writers": args.writers, "errors": errors[:20],
                               "windows": [asdict(w) for w in windows]}, indent=2) + "\n")
    return 0 if worst < P99_BOUND_MS and not errors else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--journals", type=int, default=3_000_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0, help="transfers per second in all")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True,
                        help="PostgreSQL's fsync (off: no commit waits for the disk, as in "
                             "the test suite)")
    parser.add_argument("--output", help="the JSON results (default bench/results/<date>-...)")
    args = parser.parse_args()
    raise SystemExit(report(args, *asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
