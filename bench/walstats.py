"""Where the WAL bytes of a scenario went: `pg_waldump --stats=record` over the window's LSN
range (bench/wal.py reads the range), summed by resource manager and record type, full-page
images apart. Only for an embedded PostgreSQL, whose WAL directory and pg_waldump are on this
machine (pgserver ships the binary beside `postgres`).

`--wal-stats` turns it on; each result then has `wal.by_record`: the records with the most
bytes, each {"record", "count", "bytes", "fpi_bytes", "bytes_per_transfer"}.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

TOP = 12
# "Heap/INSERT      123 ( 1.23)   4567 ( 2.34)   890 ( 3.45)  5457 ( 4.56)": the record, its
# count, record bytes, full-page-image bytes, combined bytes (each with a percentage).
LINE = re.compile(r"^(\S+/\S+)\s+(\d+)\s+\(\s*[\d.]+\)\s+(\d+)\s+\(\s*[\d.]+\)\s+(\d+)\s+"
                  r"\(\s*[\d.]+\)\s+(\d+)")


def pg_waldump() -> Path | None:
    try:
        import pgserver  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_waldump"
    return path if path.exists() else None


def by_record(data_dir: Path, start_lsn: str | None, end_lsn: str | None,
              completed: int) -> list[dict[str, Any]] | None:
    """The TOP records by bytes in [start, end) of the cluster under `data_dir`, or None when
    that cannot be read (no binary, no LSNs, a segment already recycled)."""
    tool = pg_waldump()
    if tool is None or not start_lsn or not end_lsn or start_lsn == end_lsn:
        return None
    done = subprocess.run([str(tool), "--stats=record", "-p", str(data_dir / "pg_wal"),
                           "-s", start_lsn, "-e", end_lsn], capture_output=True, text=True,
                          timeout=120, check=False)
    rows = []
    for line in done.stdout.splitlines():
        m = LINE.match(line.strip())
        if m:
            record, count, rec_bytes, fpi_bytes, total = m.groups()
            rows.append({"record": record, "count": int(count), "bytes": int(total),
                         "fpi_bytes": int(fpi_bytes),
                         "bytes_per_transfer": round(int(total) / completed, 1) if completed else None})
    if not rows:
        return None
    rows.sort(key=lambda r: -r["bytes"])
    return rows[:TOP]
