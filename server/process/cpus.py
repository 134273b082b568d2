"""How many CPUs this process may really use: the default number of `kassa serve` workers.

`os.cpu_count()` is the host's count, also inside a container limited to 2 CPUs on a
64-core host. The usable count is the smallest of: the CPU count, the CPU affinity
(`taskset`, a cpuset), and the CFS quota of the process's cgroup (v2 `cpu.max`, v1
`cpu.cfs_quota_us` / `cpu.cfs_period_us`, on its cgroup or any ancestor visible in the
mount), a quota rounded up; at least 1. Every reader takes the file-system root as a
parameter so the tests point it at fake cgroup trees; unreadable or malformed files count
as "no limit".
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["CpuLimit", "available_cpus", "cgroup_quota", "v1_quota", "v2_quota"]


@dataclass(frozen=True)
class CpuLimit:
    count: int
    source: str  # where it came from, for the start log: "affinity 1 of 2 CPUs"


def available_cpus(root: Path = Path("/"), *, affinity: int | None = None,
                   cpu_count: int | None = None) -> CpuLimit:
    """The smallest of the CPU count, the affinity and the cgroup quota; at least 1.

    `affinity` and `cpu_count` default to this process's (tests pass them)."""
    total = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    if affinity is None:
        affinity = _own_affinity()
    candidates: list[CpuLimit] = []
    if affinity is not None and affinity < total:  # ties: the affinity is named first
        candidates.append(CpuLimit(affinity, f"affinity {affinity} of {total} CPUs"))
    quota = cgroup_quota(root)
    if quota is not None:
        candidates.append(quota)
    candidates.append(CpuLimit(total, f"cpu count {total}"))
    best = min(candidates, key=lambda c: c.count)  # min keeps the first of equals
    return CpuLimit(max(1, best.count), best.source)


def _own_affinity() -> int | None:
    try:
        return len(os.sched_getaffinity(0)) or None
    except (AttributeError, OSError):  # not Linux
        return None


def cgroup_quota(root: Path) -> CpuLimit | None:
    """The tightest CPU quota of this process's cgroup (v2, else v1), None if unlimited."""
    return v2_quota(root) or v1_quota(root)


def v2_quota(root: Path) -> CpuLimit | None:
    """cgroup v2: `cpu.max` is "max <period>" (no limit) or "<quota> <period>"."""
    found: list[CpuLimit] = []
    for directory in _cgroup_dirs(root, v2=True):
        parts = _read(directory / "cpu.max").split()
        if len(parts) == 2 and parts[0] != "max":
            limit = _limit(parts[0], parts[1], "cgroup v2 cpu.max")
            if limit is not None:
                found.append(limit)
    return min(found, key=lambda c: c.count, default=None)


def v1_quota(root: Path) -> CpuLimit | None:
    """cgroup v1: `cpu.cfs_quota_us` (-1: no limit) over `cpu.cfs_period_us`."""
    found: list[CpuLimit] = []
    for directory in _cgroup_dirs(root, v2=False):
        quota = _read(directory / "cpu.cfs_quota_us").strip()
        period = _read(directory / "cpu.cfs_period_us").strip()
        limit = _limit(quota, period, "cgroup v1 cpu.cfs_quota_us")
        if limit is not None:
            found.append(limit)
    return min(found, key=lambda c: c.count, default=None)


def _limit(quota_raw: str, period_raw: str, name: str) -> CpuLimit | None:
    try:
        quota, period = int(quota_raw), int(period_raw)
    except ValueError:
        return None
    if quota <= 0 or period <= 0:  # -1: no limit; anything else non-positive: garbage
        return None
    return CpuLimit(max(1, math.ceil(quota / period)), f"{name} {quota}/{period}")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except (OSError, ValueError):
        return ""


def _cgroup_dirs(root: Path, *, v2: bool) -> Iterator[Path]:
    """This process's cgroup directory and its ancestors up to the mount, for one hierarchy;
    else the usual mount points themselves (no /proc, or a cgroup path not under the mount)."""
    seen: set[Path] = set()
    for mount_root, mount_point, path in _mounts(root, v2=v2):
        try:
            relative = PurePosixPath(path).relative_to(mount_root)
        except ValueError:  # a cgroup namespace: the mount shows our own cgroup
            relative = PurePosixPath(".")
        directory = root / str(mount_point).lstrip("/") / str(relative)
        top = root / str(mount_point).lstrip("/")
        while True:
            if directory not in seen:
                seen.add(directory)
                yield directory
            if directory == top or top not in directory.parents:
                break
            directory = directory.parent
    usual = (["sys/fs/cgroup"] if v2 else
             ["sys/fs/cgroup/cpu,cpuacct", "sys/fs/cgroup/cpuacct,cpu", "sys/fs/cgroup/cpu"])
    for name in usual:
        directory = root / name
        if directory not in seen:
            seen.add(directory)
            yield directory


def _mounts(root: Path, *, v2: bool) -> Iterator[tuple[str, str, str]]:
    """(mount root, mount point, our cgroup path) of the v2 hierarchy or of v1's `cpu`."""
    paths: dict[str, str] = {}  # controller list ("" for v2) → our cgroup path
    for line in _read(root / "proc/self/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2]
    for line in _read(root / "proc/self/mountinfo").splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        if len(after) < 3:
            continue
        fstype, options = after[0], after[2].split(",")
        if v2 and fstype == "cgroup2" and "" in paths:
            yield fields[3], fields[4], paths[""]
        elif not v2 and fstype == "cgroup" and "cpu" in options:
            for controllers, path in paths.items():
                if "cpu" in controllers.split(","):
                    yield fields[3], fields[4], path
