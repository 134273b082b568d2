"""Results: one JSON per scenario, a Markdown table, ratios, and a PNG summary chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a server
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

RESULTS = Path(__file__).resolve().parent / "results"

# The targets are goals to report next to the measurements, not assertions.
TARGETS = {
    "async completed/s": 5_000, "async accept p99 ms": 50, "bulk completed/s": 20_000,
    "batch/single completed": 4.0, "hot/uniform completed": 0.5,
}


def write_json(result: dict[str, Any], date: str, results_dir: Path = RESULTS) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{date}-{result['scenario']}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        digits = 2 if value < 10 else 1 if value < 100 else 0
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def codes_text(codes: dict[str, int]) -> str:
    return " ".join(f"{code}:{n}" for code, n in codes.items())


HEADER = ("| scenario | conns | duration s | accepted/s | completed/s (load) | completed/s (to drained) "
          "| p50 ms | p99 ms | p99.9 ms | codes | backlog | drain s | invariants OK |")


def table(results: list[dict[str, Any]]) -> str:
    lines = [HEADER, "|" + " --- |" * (HEADER.count("|") - 1)]
    for r in results:
        lat = r["latency_ms"]
        name = r["scenario"] + (f" ({r['tool']})" if r["tool"] != "wrk" else "")
        cells = [name, r["connections"], r["load_s"], r["accepted_per_s"],
                 r.get("completed_per_s"), r.get("completed_overall_per_s"),
                 lat["p50"], lat["p99"], lat["p99.9"], codes_text(r["codes"]),
                 r.get("backlog_end"), r.get("drain_s"),
                 "yes" if r["invariants_ok"] and not r["failures"] else "**NO**"]
        lines.append("| " + " | ".join(fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def ratios(results: list[dict[str, Any]]) -> dict[str, float | None]:
    by = {r["scenario"]: r for r in results}

    def get(name: str, key: str) -> float | None:
        return by.get(name, {}).get(key)

    out: dict[str, float | None] = {}
    # Until drained: a saturated executor's throughput, whatever the accept path does.
    out["batch/single completed (to drained)"] = ratio(get("async", "completed_overall_per_s"),
                                                       get("single", "completed_overall_per_s"))
    out["batch/single completed (load)"] = ratio(get("async", "completed_per_s"),
                                                 get("single", "completed_per_s"))
    out["hot/uniform completed (to drained)"] = ratio(get("hot", "completed_overall_per_s"),
                                                      get("async", "completed_overall_per_s"))
    out["hot/uniform accepted"] = ratio(get("hot", "accepted_per_s"), get("async", "accepted_per_s"))
    out["bulk/async completed (to drained)"] = ratio(get("bulk", "completed_overall_per_s"),
                                                     get("async", "completed_overall_per_s"))
    return {k: v for k, v in out.items() if v is not None}


def targets_text(results: list[dict[str, Any]], found: dict[str, float | None]) -> list[str]:
    by = {r["scenario"]: r for r in results}
    lines = []
    if "async" in by:
        a = by["async"]
        lines.append(f"async completed/s {fmt(a.get('completed_per_s'))} "
                     f"(target {TARGETS['async completed/s']:,}); accept p99 "
                     f"{fmt(a['latency_ms']['p99'])} ms (target < {TARGETS['async accept p99 ms']})")
    if "bulk" in by:
        lines.append(f"bulk completed/s {fmt(by['bulk'].get('completed_per_s'))} "
                     f"(target {TARGETS['bulk completed/s']:,})")
    for name, target in (("batch/single completed (to drained)", "batch/single completed"),
                         ("hot/uniform completed (to drained)", "hot/uniform completed")):
        if name in found:
            lines.append(f"{name}: {found[name]} (target >= {TARGETS[target]})")
    return lines


def chart(results: list[dict[str, Any]], path: Path) -> Path:
    names = [r["scenario"] for r in results]
    x = range(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.4
    bars = ax1.bar([i - width / 2 for i in x], [r["accepted_per_s"] for r in results], width,
                   label="accepted/s")
    ax1.bar_label(bars, fmt="%.0f", fontsize=8)
    bars = ax1.bar([i + width / 2 for i in x], [r.get("completed_per_s") or 0 for r in results],
                   width, label="completed/s (load window)")
    ax1.bar_label(bars, fmt="%.0f", fontsize=8)
    ax1.set_yscale("log")
    ax1.set_title("Throughput (log scale)")
    ax1.set_xticks(list(x), names)
    ax1.legend()
    bars = ax2.bar(list(x), [r["latency_ms"]["p99"] for r in results], color="tab:red")
    ax2.bar_label(bars, fmt="%.0f", fontsize=8)
    ax2.axhline(TARGETS["async accept p99 ms"], color="grey", linestyle="--", label="50 ms target")
    ax2.set_title("Accept latency p99 (ms)")
    ax2.set_xticks(list(x), names)
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
