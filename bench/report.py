"""Results: one JSON per scenario, Markdown tables (throughput with the ratio to naive; CPU
per transfer by process), ratios, and a PNG summary chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

from bench.cpu import GROUPS
from bench.goals import ACCEPT_P99_MS, BASELINES, funcledger_peer, wal_bytes

matplotlib.use("Agg")  # no display on a server
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

RESULTS = Path(__file__).resolve().parent / "results"


def name(result: dict[str, Any]) -> str:
    """The scenario, with its build when a run benches several (`--kassa-bin`)."""
    build = f"@{result['build']}" if result.get("several_builds") else ""
    return f"{result['scenario']}{build}"


def write_json(result: dict[str, Any], date: str, results_dir: Path = RESULTS) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    label = f"{result['build']}-" if result.get("several_builds") else ""
    path = results_dir / f"{date}-{label}{result['scenario']}.json"
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


HEADER = ("| scenario | conns | duration s | accepted/s | completed/s (load) "
          "| completed/s (to drained) | × naive | × function ledger | × async | p50 ms | p99 ms "
          "| p99.9 ms | codes | backlog | drain s | outbox drain s | CPU µs/transfer "
          "| PG CPU µs/transfer | WAL B/transfer | invariants OK |")


def index_entries(r: dict[str, Any]) -> float | None:
    """Index entries per completed transfer (bench/indexes.py), when measured."""
    return (r.get("index_entries") or {}).get("per_transfer")


def table(results: list[dict[str, Any]]) -> str:
    # Index entries only with --index-entries (they cost a wait per scenario).
    with_index = any(r.get("index_entries") for r in results)
    header = (HEADER.replace(" | invariants OK |", " | index entries/transfer | invariants OK |")
              if with_index else HEADER)
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for r in results:
        lat = r["latency_ms"]
        tool = f" ({r['tool']})" if r["tool"] != "wrk" else ""
        conns = f"{r['target_rate']:,.0f}/s" if r.get("target_rate") else r["connections"]
        codes = codes_text(r["codes"])
        if r.get("dropped_iterations") is not None:
            codes += f" dropped_iterations:{r['dropped_iterations']}"
        per = r["cpu"]["us_per_transfer"]
        cells = [name(r) + tool, conns, r["load_s"], r["accepted_per_s"],
                 r.get("completed_per_s"), r.get("completed_overall_per_s"), r.get("vs_naive"),
                 r.get("vs_funcledger"), r.get("vs_async"),
                 lat["p50"], lat["p99"], lat["p99.9"], codes,
                 r.get("backlog_end"), r.get("drain_s"),
                 r.get("outbox_drain_s", r.get("publish_drain_s")),
                 per["total"], per.get("postgres"), wal_bytes(r),
                 *([index_entries(r)] if with_index else []),
                 "yes" if r["invariants_ok"] and not r["failures"] else "**NO**"]
        lines.append("| " + " | ".join(fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def cpu_table(results: list[dict[str, Any]]) -> str:
    """µs of CPU per completed transfer by process group (ceiling: per answered request;
    mixed: per completed operation)."""
    present = [g for g in GROUPS if any(g in r["cpu"]["us_per_transfer"] for r in results)]
    header = ("| CPU µs per completed transfer | completed | window s | "
              + " | ".join(present) + " | total | cores busy |")
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for r in results:
        c = r["cpu"]
        per = c["us_per_transfer"]
        cells = [name(r), c["completed"], c["window_s"], *(per.get(g) for g in present),
                 per["total"], c["cores_busy"]]
        lines.append("| " + " | ".join(fmt(x) for x in cells) + " |")
    return "\n".join(lines)


def open_loop_text(results: list[dict[str, Any]]) -> list[str]:
    return [f"open loop {name(r)}: {r['target_rate']:,.0f} transfers/s offered, "
            f"{r['accepted_per_s']:,.0f}/s accepted, p50 {fmt(r['latency_ms']['p50'])} ms, "
            f"p99 {fmt(r['latency_ms']['p99'])} ms, dropped iterations {r['dropped_iterations']}"
            for r in results if r.get("target_rate")]


def mix_text(results: list[dict[str, Any]]) -> list[str]:
    """The mixed scenario by request kind: share of the answered requests, answers by status,
    completed operations and their rate; the fallbacks to transfers; 409s and failures."""
    lines = []
    for r in results:
        mix = r.get("mix")
        if not mix:
            continue
        kinds = []
        for kind, k in mix["by_kind"].items():
            share = f"{k['share']:.1%}" if k["share"] is not None else "-"
            kinds.append(f"{kind} {share} of requests ({codes_text(k['codes']) or 'none'}), "
                         f"{k['completed']:,} completed ({fmt(k['completed_per_s'])}/s)")
        fallbacks = ", ".join(f"{k} {n:,}" for k, n in mix["fallbacks"].items()) or "none"
        lines.append(f"mix {name(r)}: " + "; ".join(kinds))
        lines.append(f"mix {name(r)}: sent as transfers for want of a receipt old enough: "
                     f"{fallbacks}; 409 (hold not pending / reversal over original, expected "
                     f"races, not failures): {mix['conflicts_409']:,}; journals failed: "
                     f"{mix['failed']:,}; completed operations {mix['completed']:,}")
    return lines


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def completed_rate(r: dict[str, Any]) -> float | None:
    """Completed/s over the load plus drain window (the CPU window); the ceiling: requests/s."""
    return r.get("completed_overall_per_s") or (r["accepted_per_s"] if r["scenario"] == "ceiling"
                                                else None)


def ratios(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """The ratios of each build's scenarios, prefixed by the build when there are several;
    every row's ratio to naive is set on the row itself (`vs_naive`), and to the function
    ledger (`vs_funcledger`: its batch variant for Kassa's batch scenarios, goals.funcledger_peer)."""
    labels = list(dict.fromkeys(r["build"] for r in results))
    peers = {r["scenario"]: r for r in results if r["scenario"] in BASELINES}
    naive = peers.get("naive")
    for r in results:
        r["vs_naive"] = ratio(completed_rate(r), completed_rate(naive)) if naive else None
        peer = peers.get(funcledger_peer(r["scenario"]) or "")
        r["vs_funcledger"] = ratio(completed_rate(r), completed_rate(peer)) if peer else None
        # The same build's async: the mixed scenario's cost of holds, captures, voids, reversals.
        base = next((a for a in results if a["scenario"] == "async"
                     and a["build"] == r["build"]), None)
        r["vs_async"] = (ratio(completed_rate(r), completed_rate(base))
                         if base and r["scenario"] != "async" and r["scenario"] not in BASELINES
                         else None)
    out: dict[str, float | None] = {}
    for label in labels:
        prefix = f"[{label}] " if len(labels) > 1 else ""
        mine = [r for r in results if r["build"] == label or r["scenario"] in BASELINES]
        out.update({prefix + k: v for k, v in build_ratios(mine).items()})
    # Build against build, per scenario: the question --kassa-bin is there to answer.
    for label in labels[1:]:
        for r in results:
            if r["build"] != labels[0] or r["scenario"] in BASELINES:
                continue
            other = next((o for o in results if o["build"] == label
                          and o["scenario"] == r["scenario"]), None)
            if other:
                out[f"{r['scenario']} {label}/{labels[0]} completed (to drained)"] = ratio(
                    completed_rate(other), completed_rate(r))
    return {k: v for k, v in out.items() if v is not None}


def build_ratios(results: list[dict[str, Any]]) -> dict[str, float | None]:
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
    out["mixed/async completed (to drained)"] = ratio(get("mixed", "completed_overall_per_s"),
                                                      get("async", "completed_overall_per_s"))
    out["async/naive completed (to drained)"] = ratio(get("async", "completed_overall_per_s"),
                                                      get("naive", "completed_overall_per_s"))
    out["bulk/naive completed (to drained)"] = ratio(get("bulk", "completed_overall_per_s"),
                                                     get("naive", "completed_overall_per_s"))
    out["async/funcledger completed (to drained)"] = ratio(
        get("async", "completed_overall_per_s"), get("funcledger", "completed_overall_per_s"))
    out["bulk/funcledger-bulk completed (to drained)"] = ratio(
        get("bulk", "completed_overall_per_s"), get("funcledger-bulk", "completed_overall_per_s"))
    out["hot-bulk/bulk completed (to drained)"] = ratio(
        get("hot-bulk", "completed_overall_per_s"), get("bulk", "completed_overall_per_s"))
    cpu_async = by.get("async", {}).get("cpu", {}).get("us_per_transfer", {}).get("total")
    cpu_naive = by.get("naive", {}).get("cpu", {}).get("us_per_transfer", {}).get("total")
    out["async/naive CPU per transfer"] = ratio(cpu_async, cpu_naive)
    cpu_mixed = by.get("mixed", {}).get("cpu", {}).get("us_per_transfer", {}).get("total")
    out["mixed/async CPU per operation"] = ratio(cpu_mixed, cpu_async)
    out["mixed/naive completed (to drained)"] = ratio(get("mixed", "completed_overall_per_s"),
                                                      get("naive", "completed_overall_per_s"))
    for kassa, peer in (("async", "funcledger"), ("bulk", "funcledger-bulk")):
        out[f"{kassa}/{peer} CPU per transfer"] = ratio(
            by.get(kassa, {}).get("cpu", {}).get("us_per_transfer", {}).get("total"),
            by.get(peer, {}).get("cpu", {}).get("us_per_transfer", {}).get("total"))
        out[f"{kassa}/{peer} WAL per transfer"] = ratio(wal_bytes(by.get(kassa, {})),
                                                        wal_bytes(by.get(peer, {})))
    return out


def chart(results: list[dict[str, Any]], path: Path) -> Path:
    names = [name(r) for r in results]
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
    ax2.axhline(ACCEPT_P99_MS, color="grey", linestyle="--",
                label=f"{ACCEPT_P99_MS:.0f} ms goal (open loop)")
    ax2.set_title("Accept latency p99 (ms)")
    ax2.set_xticks(list(x), names)
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
