"""The `funcledger` and `funcledger-bulk` scenarios: bench/funcledger_server.py (the
PostgreSQL-function ledger) under gunicorn, on the PostgreSQL of the `kassa serve` already
running for this group (Kassa's own processes stay idle meanwhile, as for `naive`).

Each scenario starts from a fresh schema `funcledger` (dropped and made again), seeded with the
same accounts as Kassa's (bench_0 ... bench_9999, USD, floor 0, each holding
seed.OPENING_BALANCE: set directly, the seeding is not what is measured). Completed = transfers
written in the window (the money is on the destination account when the answer leaves, so
the "drain" is only the calls still in flight when the load tool stopped: the window ends
when the count of transfers stops moving). After the load the ledger is checked:
money conserved, every balance equal to its opening plus its entries and to its last entry's
balance_after, no balance under its floor, two entries summing to 0 per transfer; and at least
as many transfers written as items answered 2xx.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import asyncpg

from bench import cpu, indexes, procs, seed, wal, walstats
from bench.funcledger_server import SCHEMA
from bench.naive import start_gunicorn
from bench.scenarios import (
    RunOptions,
    Scenario,
    cost_figures,
    failures,
    load_env,
    load_figures,
    log_issues,
    rate,
    warnings,
)
from bench.stack import Server, StackConfig
from bench.waits import WaitSampler

SEED_SQL = ("INSERT INTO funcledger.accounts (id, currency, balance, floor) "
            "SELECT id, $2, $3, 0 FROM unnest($1::text[]) AS id")
COUNT_SQL = "SELECT count(*) FROM funcledger.transfers"
SETTLE_POLL_S = 0.1
# name -> a query returning the offending rows (none when the ledger is sound); $1: the total
# money (the first), or an account's opening balance.
CHECKS = {
    "money not conserved": "SELECT sum(balance) AS total FROM funcledger.accounts "
                           "HAVING sum(balance) <> $1::bigint",
    "balance differs from opening + entries":
        "SELECT a.id, a.balance, coalesce(sum(e.amount), 0) AS moved "
        "FROM funcledger.accounts a LEFT JOIN funcledger.entries e ON e.account_id = a.id "
        "GROUP BY a.id, a.balance HAVING a.balance <> $1::bigint + coalesce(sum(e.amount), 0) "
        "LIMIT 5",
    "balance differs from the last balance_after":
        "SELECT a.id, a.balance, l.balance_after FROM funcledger.accounts a JOIN LATERAL "
        "(SELECT balance_after FROM funcledger.entries e WHERE e.account_id = a.id "
        "ORDER BY e.id DESC LIMIT 1) l ON true WHERE l.balance_after <> a.balance LIMIT 5",
    "balance under its floor": "SELECT id, balance, floor FROM funcledger.accounts "
                               "WHERE balance < floor LIMIT 5",
    "transfer without two balanced entries":
        "SELECT t.id FROM funcledger.transfers t LEFT JOIN funcledger.entries e "
        "ON e.transfer_id = t.id GROUP BY t.id, t.amount "
        "HAVING count(e.id) <> 2 OR coalesce(sum(e.amount), 1) <> 0 "
        "OR max(e.amount) <> t.amount",
}


async def prepare(dsn: str, accounts: int = seed.ACCOUNTS) -> None:
    """A fresh schema with the seeded accounts, before the workers start."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        await conn.execute(SEED_SQL, [seed.account_id(n) for n in range(accounts)],
                           seed.CURRENCY, seed.OPENING_BALANCE)
        await conn.execute("ANALYZE funcledger.accounts")
    finally:
        await conn.close()


async def violations(conn: asyncpg.Connection, accounts: int = seed.ACCOUNTS
                     ) -> dict[str, list[dict[str, Any]]]:
    # Statistics first: fresh tables that autovacuum has not analyzed yet look empty to
    # the planner. The transfers check has no LIMIT for the same reason: with one, the
    # planner expects to stop early and joins every transfer to its entries by a nested
    # loop over all entries (quadratic: the check of a 100,000-transfer bulk run ran for
    # minutes); only the first few rows are kept, below.
    await conn.execute("ANALYZE funcledger.accounts, funcledger.transfers, funcledger.entries")
    found = {}
    for name, sql in CHECKS.items():
        args = [] if "$1" not in sql else [accounts * seed.OPENING_BALANCE
                                           if name == "money not conserved"
                                           else seed.OPENING_BALANCE]
        rows = await conn.fetch(sql, *args)
        if rows:
            found[name] = [dict(r) for r in rows[:5]]
    return found


async def settle(conn: asyncpg.Connection, timeout_s: float) -> float:
    """Seconds until the transfer count stopped moving (two equal counts SETTLE_POLL_S apart):
    the function ledger's "drain", the calls that were in flight when the load stopped."""
    started = time.monotonic()
    last = await conn.fetchval(COUNT_SQL)
    while time.monotonic() - started < timeout_s:
        await asyncio.sleep(SETTLE_POLL_S)
        now = await conn.fetchval(COUNT_SQL)
        if now == last:
            break
        last = now
    return time.monotonic() - started


async def run(kassa: Server, config: StackConfig, scenario: Scenario,
              opts: RunOptions) -> dict[str, Any]:
    conns = opts.connections or scenario.connections
    log_path = kassa.data_dir / "funcledger.log"
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    await prepare(kassa.dsn)
    server = await asyncio.to_thread(
        start_gunicorn, "bench.funcledger_server", "FuncLedgerWorker", config.workers, log_path,
        {"FUNCLEDGER_DATABASE_URL": kassa.dsn})
    conn = await asyncpg.connect(kassa.dsn)
    try:
        layout = procs.Layout(server.process.pid, kassa.process.pid, kassa.layout().postmaster,
                              services=())
        stats_start = await indexes.snapshot(conn) if opts.index_entries else None
        load_before = os.getloadavg()
        before = await conn.fetchval(COUNT_SQL)
        lsn_start = await wal.current_lsn(conn)
        cpu_start, idle_start = cpu.take(layout), cpu.take(kassa.layout())
        async with WaitSampler(kassa.dsn) as waits:
            load = await opts.tool(server.url, scenario, conns, opts.duration_s,
                                   load_env(scenario))
        # The calls in flight when the load tool stopped still commit: count and pay for them.
        settle_s = await settle(conn, opts.drain_timeout_s)
        cpu_end, idle_end = cpu.take(layout), cpu.take(kassa.layout())
        lsn_end = await wal.current_lsn(conn)
        written = await conn.fetchval(COUNT_SQL) - before
    finally:
        code = await asyncio.to_thread(server.stop)
    try:
        stats_end = await indexes.snapshot(conn) if opts.index_entries else None
        found = await violations(conn)
    finally:
        await conn.close()
    result = {
        **load_figures(scenario, opts, conns, load),
        # Synchronous: what was written during the load is all there is (no backlog).
        "completed_per_s": rate(written, load.duration_s),
        "completed_overall_per_s": rate(written, cpu_end.t - cpu_start.t),
        "journals_final": written, "backlog_end": 0, "drain_s": round(settle_s, 2),
        "funcledger_exit_code": code,
        "server_log_issues": log_issues(log_path, log_offset),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "invariants_ok": not found, "violations": found, "waits": waits.summary(),
        **cost_figures(written, cpu_start, cpu_end, lsn_start, lsn_end, stats_start, stats_end),
        "kassa_idle_cpu_s": cpu.idle_kassa(idle_start, idle_end),
    }
    if opts.wal_stats and kassa.embedded_pg:
        result["wal"]["by_record"] = await asyncio.to_thread(
            walstats.by_record, kassa.data_dir / "pg", lsn_start, lsn_end, written)
    result["failures"] = failures(result, scenario) + written_failures(result)
    result["warnings"] = warnings(result)
    return result


def written_failures(result: dict[str, Any]) -> list[str]:
    """Every item answered 2xx must be a transfer in the ledger (more is possible: a request
    the load tool gave up on may still have committed)."""
    ok, written = result["accepted"], result["journals_final"]
    return [f"funcledger: {written} transfers written for {ok} items answered 2xx"] \
        if written < ok else []
