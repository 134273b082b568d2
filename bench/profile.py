"""py-spy flame graphs of the gunicorn workers while a scenario's load runs (--profile)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bench.stack import Server

RATE_HZ = 50  # enough for a flame graph; low enough not to move the numbers much


def worker_pids(server: Server) -> list[int]:
    """Children of the master with its own command line: the forked gunicorn workers
    (Redis, the broker and the gRPC services are children too, with other command lines)."""
    master = server.process.pid
    own = Path(f"/proc/{master}/cmdline").read_bytes()
    children = Path(f"/proc/{master}/task/{master}/children")
    pids = [int(p) for p in children.read_text().split()] if children.exists() else []
    return [p for p in pids if Path(f"/proc/{p}/cmdline").read_bytes() == own]


async def record(server: Server, out_prefix: Path, load_s: float) -> list[Path]:
    """Sample every worker for the middle of the load window; one SVG per worker."""
    py_spy = Path(sys.executable).parent / "py-spy"
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.sleep(min(1.0, load_s / 4))  # skip the ramp-up
    seconds = max(1, int(load_s - 2))
    procs, paths = [], []
    for pid in worker_pids(server):
        path = out_prefix.with_name(f"{out_prefix.name}-worker{pid}.svg")
        procs.append(await asyncio.create_subprocess_exec(
            str(py_spy), "record", "--nonblocking", "-r", str(RATE_HZ), "-d", str(seconds),
            "-o", str(path), "-p", str(pid),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
        paths.append(path)
    for proc in procs:
        await proc.wait()
    return [p for p in paths if p.exists()]
