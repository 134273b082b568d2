"""Run wrk with one of the bench/wrk/*.lua scripts and parse its BENCH_RESULT line."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "bench" / "wrk"
MARKER = "BENCH_RESULT "
THREADS = 2
TIMEOUT_S = 10  # wrk's default 2 s would count slow-but-answered requests as errors


@dataclass
class LoadResult:
    """What a load tool saw, in the units the report uses."""

    requests: int
    duration_s: float
    codes: dict[str, int]
    items_ok: int  # for batches: items accepted; else 2xx answers
    latency_ms: dict[str, float]  # p50, p99, p99.9, max
    errors: dict[str, int]
    raw: str
    thresholds: dict[str, bool] = field(default_factory=dict)  # k6: rule -> passed
    dropped_iterations: int | None = None  # k6 open loop: iterations not started in time
    # mixed.lua: answers by "<kind>:<status>", and "<kind>>transfer" for the captures, voids
    # and reversals sent as transfers because no receipt was old enough yet.
    mix: dict[str, int] = field(default_factory=dict)


def wrk_binary() -> str:
    found = shutil.which("wrk") or ("/usr/bin/wrk" if Path("/usr/bin/wrk").exists() else None)
    if not found:
        raise RuntimeError("wrk not found: apt-get install -y wrk (or `make system-deps`)")
    return found


def parse(stdout: str) -> LoadResult:
    line = next((ln for ln in stdout.splitlines() if ln.startswith(MARKER)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no {MARKER.strip()} line:\n{stdout}")
    data: dict[str, Any] = json.loads(line[len(MARKER):])
    # Zero counts come from scripts without response(): wrk's "4xx/5xx" count is always there.
    codes = {str(k): int(v) for k, v in sorted(data["codes"].items()) if int(v)}
    ok = sum(n for code, n in codes.items() if code.startswith("2"))
    lat = data["latency_us"]
    return LoadResult(
        requests=data["requests"], duration_s=data["duration_us"] / 1e6, codes=codes,
        items_ok=data["items_ok"] or ok,
        latency_ms={k: lat[k] / 1000 for k in ("p50", "p99", "p99.9", "max")},
        errors=data["errors"], raw=stdout,
        mix={str(k): int(v) for k, v in sorted(data.get("mix", {}).items())})


async def run(url: str, script: str, connections: int, duration_s: float,
              env: dict[str, str], threads: int = THREADS) -> LoadResult:
    """`threads` defaults to THREADS; mixed.lua needs one per connection (see its header)."""
    argv = [wrk_binary(), f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
            "--latency", f"--timeout={TIMEOUT_S}s", "-s", str(SCRIPTS / script), url]
    # cwd = repository root: the scripts find common.lua through ./bench/wrk/?.lua.
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), duration_s + 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"wrk did not finish within {duration_s + 60:.0f}s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{out.decode(errors='replace')}")
    return parse(out.decode(errors="replace"))
