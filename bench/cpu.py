"""CPU per completed transfer, by process group: the figure that survives a noisy machine.

Throughput on 2 shared cores moves with whatever else runs; the CPU seconds each process
spent per transfer move much less. A snapshot reads utime+stime+cutime+cstime of every
group's process trees from /proc (see bench/procs.py) and, for the load tool, the harness's
own RUSAGE_CHILDREN: wrk and k6 are our children, reaped (and so counted) when they exit,
which is inside the window. The window is the one the completed count uses: from the start
of the load until the drain ends (journals final and the outbox published).
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from typing import Any

from bench import procs

TICK_S = 1 / os.sysconf("SC_CLK_TCK")
# Column order of the report; "other" is any child of the master that is none of these.
GROUPS = ("workers", "master", "receipt", "notification", "webhooks", "postgres", "redis",
          "broker", "other", "load tool")
# Kassa's own processes: what a peer's run reports as Kassa's idle CPU beside it.
KASSA_GROUPS = ("workers", "master", "receipt", "notification", "webhooks")


@dataclass(frozen=True)
class Snapshot:
    t: float
    seconds: dict[str, float]  # group -> CPU seconds so far


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def take(layout: procs.Layout) -> Snapshot:
    ticks = procs.group_ticks(layout, procs.scan())
    seconds = {group: n * TICK_S for group, n in ticks.items()}
    seconds["load tool"] = children_cpu_s()
    return Snapshot(time.monotonic(), seconds)


def per_transfer(before: Snapshot, after: Snapshot, completed: int) -> dict[str, Any]:
    """CPU seconds per group over the window and µs per completed transfer (None: no
    transfer completed). Groups absent at either end (an external PostgreSQL, a service
    not started) are left out rather than counted as 0."""
    spent = {g: round(after.seconds[g] - before.seconds[g], 3) for g in GROUPS
             if g in before.seconds and g in after.seconds}
    if not spent.get("other"):
        spent.pop("other", None)
    total = sum(spent.values())
    window = after.t - before.t

    def us(seconds: float) -> float | None:
        return round(seconds * 1e6 / completed, 1) if completed else None

    return {"window_s": round(window, 2), "completed": completed,
            "cpu_s": {**spent, "total": round(total, 3)},
            "us_per_transfer": {**{g: us(s) for g, s in spent.items()}, "total": us(total)},
            "cores_busy": round(total / window, 2) if window > 0 else None}


def idle_kassa(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds Kassa's own processes took, idle beside a peer (bench/naive.py,
    bench/funcledger.py), per group present at both ends."""
    return {g: round(after.seconds[g] - before.seconds[g], 3) for g in KASSA_GROUPS
            if g in before.seconds and g in after.seconds}
