"""Index entries written per completed transfer (`--index-entries`), from PostgreSQL's
cumulative table statistics: every inserted row and every update that is not HOT adds one
entry to each index of its table, so over a window

    entries = Σ over user tables of (Δ n_tup_ins + Δ n_tup_upd − Δ n_tup_hot_upd) × its indexes

(a HOT update adds none; deletes add none; a partial index is counted as if it took every
row, so the figure is an upper bound for tables with one, e.g. Kassa's outbox_unpublished).

The statistics are not live: a backend flushes its counts when it goes idle, at most once a
second, else within PGSTAT_IDLE_INTERVAL (10 s, PostgreSQL 15+). So each reading waits
STATS_SETTLE_S first, outside the CPU and WAL window: about 22 s more per scenario, which is
why the figure is asked for, not measured by default.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg

STATS_SETTLE_S = 11.0
STATS_SQL = """
SELECT s.relid::regclass::text AS rel, s.n_tup_ins AS ins, s.n_tup_upd AS upd,
       s.n_tup_hot_upd AS hot,
       (SELECT count(*) FROM pg_index i WHERE i.indrelid = s.relid) AS indexes
FROM pg_stat_user_tables s"""


@dataclass(frozen=True)
class TableStats:
    ins: int
    upd: int
    hot: int
    indexes: int


Snapshot = dict[str, TableStats]


def entries(before: Snapshot, after: Snapshot) -> dict[str, int]:
    """Index entries written per table between two snapshots (tables with none left out). A
    table absent from `before` (made in between) counts from 0; one whose counters went
    down (dropped and made again) counts from 0 too."""
    out = {}
    for rel, a in after.items():
        b = before.get(rel, TableStats(0, 0, 0, a.indexes))
        if a.ins < b.ins or a.upd < b.upd:
            b = TableStats(0, 0, 0, a.indexes)
        n = ((a.ins - b.ins) + (a.upd - b.upd) - (a.hot - b.hot)) * a.indexes
        if n:
            out[rel] = n
    return out


def per_transfer(before: Snapshot | None, after: Snapshot | None,
                 completed: int) -> dict[str, object] | None:
    """{"total", "per_transfer", "by_table"}, or None without both snapshots."""
    if before is None or after is None:
        return None
    by_table = entries(before, after)
    total = sum(by_table.values())
    return {"total": total, "per_transfer": round(total / completed, 2) if completed else None,
            "by_table": dict(sorted(by_table.items(), key=lambda kv: -kv[1]))}


async def snapshot(conn: asyncpg.Connection, settle_s: float = STATS_SETTLE_S) -> Snapshot:
    """The table counters once every backend has flushed its own (`settle_s` after the
    work)."""
    await asyncio.sleep(settle_s)
    rows = await conn.fetch(STATS_SQL)
    return {r["rel"]: TableStats(r["ins"], r["upd"], r["hot"], r["indexes"]) for r in rows}
