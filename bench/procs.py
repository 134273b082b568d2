"""The processes of a running stack, read from /proc: which PIDs make up each group the CPU
accounting reports, and where `kassa serve`'s embedded Redis and broker listen.

`kassa serve` is the gunicorn master; its children are the workers (forks: the same command
line as the master), the embedded Redis (`redis-server 127.0.0.1:PORT`, redis rewrites its
title), the broker (`tansu broker --listener-url tcp://HOST:PORT ...`) and the gRPC services
(`... server.process.cli receipt-service ...`, `... notification-service ...`) and the
webhook sender (`... server.process.cli webhook-sender`). The PostgreSQL
postmaster is not a child: pg_ctl daemonizes it; its PID is the first line of
`<data dir>/pg/postmaster.pid`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Stat:
    ppid: int
    ticks: int  # utime + stime + cutime + cstime, in clock ticks


def scan() -> dict[int, Stat]:
    """Every process now. One pass, so all groups are read at (nearly) the same instant."""
    out = {}
    for d in PROC.iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "stat").read_text()
        except OSError:  # ended between listing and reading
            continue
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        f = text[text.rindex(")") + 2:].split()
        out[int(d.name)] = Stat(int(f[1]), int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]))
    return out


def cmdline(pid: int) -> bytes:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def children(stats: dict[int, Stat], pid: int) -> list[int]:
    return [p for p, s in stats.items() if s.ppid == pid]


def tree_ticks(stats: dict[int, Stat], pid: int) -> int:
    """CPU of pid and all its descendants, each with its reaped children (cutime, cstime).

    A child reaped during the window moves from the live sum into its parent's cutime with
    all of its CPU, so the difference of two such sums is the CPU spent in between, however
    many backends came and went."""
    kids: dict[int, list[int]] = {}
    for p, s in stats.items():
        kids.setdefault(s.ppid, []).append(p)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += stats[p].ticks
            todo += kids.get(p, [])
    return total


# Children of `kassa serve` by a piece of their command line; the rest are workers or "other".
SERVICES = {"receipt": b"receipt-service", "notification": b"notification-service",
            "webhooks": b"webhook-sender", "redis": b"redis-server", "broker": b"tansu"}


@dataclass(frozen=True)
class Layout:
    """Where to look: the HTTP server's gunicorn master, the `kassa serve` process whose
    children are the embedded services (the same process for Kassa), the postmaster."""

    http_master: int
    stack_master: int
    postmaster: int | None
    services: tuple[str, ...] = tuple(SERVICES)  # the naive scenario uses only some


def service_of(cmd: bytes) -> str | None:
    return next((role for role, marker in SERVICES.items() if marker in cmd), None)


def roles(layout: Layout, stats: dict[int, Stat]) -> dict[str, list[int]]:
    """role -> PIDs whose whole trees belong to it (the master alone, without children)."""
    out: dict[str, list[int]] = {"workers": [], "master": [], "other": []}
    master_cmd = cmdline(layout.http_master)
    for pid in children(stats, layout.http_master):
        cmd = cmdline(pid)
        if cmd == master_cmd:
            out["workers"].append(pid)
        elif service_of(cmd) is None:
            out["other"].append(pid)
    for pid in children(stats, layout.stack_master):
        role = service_of(cmdline(pid))
        if role in layout.services:
            out.setdefault(role, []).append(pid)
    if layout.postmaster in stats:
        out["postgres"] = [layout.postmaster]
    return out


def group_ticks(layout: Layout, stats: dict[int, Stat]) -> dict[str, int]:
    ticks = {role: sum(tree_ticks(stats, p) for p in pids)
             for role, pids in roles(layout, stats).items()}
    # The master on its own: its cutime holds workers it reaped (a restarted worker).
    if layout.http_master in stats:
        ticks["master"] = stats[layout.http_master].ticks
    return ticks


def postmaster_pid(pg_dir: Path) -> int | None:
    try:
        return int((pg_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def embedded_addresses(stack_master: int) -> dict[str, str]:
    """{'redis': 'redis://127.0.0.1:P/0', 'kafka': '127.0.0.1:P'} for those that run."""
    out = {}
    for pid in children(scan(), stack_master):
        cmd = cmdline(pid).replace(b"\0", b" ").decode(errors="replace")
        if "redis-server" in cmd and (m := re.search(r"(\d+\.\d+\.\d+\.\d+):(\d+)", cmd)):
            out["redis"] = f"redis://{m[1]}:{m[2]}/0"
        elif "tansu" in cmd and (m := re.search(r"--listener-url tcp://(\S+)", cmd)):
            out["kafka"] = m[1]
    return out
