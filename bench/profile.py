"""py-spy profiles of the gunicorn workers, the receipt service and the webhook sender while a scenario's load
runs (--profile): folded stacks per process (`.folded`, for speedscope or any flame graph
tool) and a top-20 table of the hottest functions made from them."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

from bench.stack import Server

RATE_HZ = 50  # enough for a profile; low enough not to move the numbers much
TOP_N = 20


def profiled_pids(server: Server) -> dict[int, str]:
    """pid → role: the forked gunicorn workers (same command line as the master) and the
    receipt service and the webhook sender (Redis, the broker and the notification service
    are left out)."""
    master = server.process.pid
    own = Path(f"/proc/{master}/cmdline").read_bytes()
    children = Path(f"/proc/{master}/task/{master}/children")
    pids = [int(p) for p in children.read_text().split()] if children.exists() else []
    roles = {}
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if cmdline == own:
            roles[pid] = "worker"
        elif b"receipt-service" in cmdline:
            roles[pid] = "receipt-service"
        elif b"webhook-sender" in cmdline:
            roles[pid] = "webhook-sender"
    return roles


async def record(server: Server, out_prefix: Path, load_s: float) -> list[Path]:
    """Sample for the middle of the load window; raw collapsed stacks, then summaries."""
    py_spy = Path(sys.executable).parent / "py-spy"
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.sleep(min(1.0, load_s / 4))  # skip the ramp-up
    seconds = max(1, int(load_s - 2))
    procs, raws = [], {}
    for pid, role in profiled_pids(server).items():
        raw = out_prefix.with_name(f"{out_prefix.name}-{role}{pid}.folded")
        procs.append(await asyncio.create_subprocess_exec(
            str(py_spy), "record", "--nonblocking", "-r", str(RATE_HZ), "-d", str(seconds),
            "-f", "raw", "-o", str(raw), "-p", str(pid),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
        raws[raw] = role
    for proc in procs:
        await proc.wait()
    written = [p for p in raws if p.exists()]
    summary = out_prefix.with_name(f"{out_prefix.name}-profile-top{TOP_N}.txt")
    summary.write_text(summarize({p: raws[p] for p in written}))
    return [*written, summary]


def summarize(raws: dict[Path, str]) -> str:
    """Top functions by self time and by inclusive time, per role, from folded stacks."""
    out = []
    for role in sorted(set(raws.values())):
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total = 0
        for path, path_role in raws.items():
            if path_role != role:
                continue
            for line in path.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                if not count.isdigit():
                    continue
                frames = [f for f in stack.split(";") if f]
                n = int(count)
                total += n
                if frames:
                    own[frames[-1]] += n
                for frame in set(frames):
                    inclusive[frame] += n
        out.append(f"== {role}: {total} samples at {RATE_HZ} Hz ==")
        out.append(f"-- top {TOP_N} by self time --")
        out += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(TOP_N)]
        out.append(f"-- top {TOP_N} by inclusive time --")
        out += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(TOP_N)]
        out.append("")
    return "\n".join(out)
