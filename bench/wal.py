"""WAL bytes per completed transfer: `pg_current_wal_lsn()` read at the start of the load and
again at the end of the scenario's window (Kassa: drained; the naive prototype and the function
ledger: their drain), the difference divided by the completed transfers.

The difference is `pg_wal_lsn_diff(end, start)`, done here in Python: an LSN `X/Y` is the
64-bit position (X << 32) + Y, both halves hexadecimal. It counts every WAL record the cluster
wrote in the window, whoever wrote it (Kassa's idle processes beside a peer, the harness's own
queries, a checkpoint's full-page images after it): the whole cost of durability, as the CPU
figures are. Only an embedded PostgreSQL or one used by nothing else gives a clean figure.
"""

from __future__ import annotations

from typing import Any

import asyncpg

LSN_SQL = "SELECT pg_current_wal_lsn()::text"


def lsn_bytes(lsn: str) -> int:
    """'16/B374D848' -> its byte position in the WAL."""
    hi, lo = lsn.strip().split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def per_transfer(start_lsn: str | None, end_lsn: str | None, completed: int) -> dict[str, Any]:
    """{"start_lsn", "end_lsn", "bytes", "bytes_per_transfer"}; bytes None without both LSNs,
    bytes_per_transfer None when nothing completed."""
    spent = (lsn_bytes(end_lsn) - lsn_bytes(start_lsn)) if start_lsn and end_lsn else None
    return {"start_lsn": start_lsn, "end_lsn": end_lsn, "bytes": spent,
            "bytes_per_transfer": (round(spent / completed, 1)
                                   if spent is not None and completed else None)}


async def current_lsn(conn: asyncpg.Connection) -> str | None:
    """The cluster's current WAL write position, None when it cannot be read (a standby, or a
    role without the right: the figure is then left out, not guessed)."""
    try:
        return str(await conn.fetchval(LSN_SQL))
    except asyncpg.PostgresError:
        return None
