"""The project's performance goals (issue 19's targets, which replace docs/performance.md's
"Against the targets" where they overlap), judged on one run's rows: throughput as ratios to
the baseline measured beside it in the same run (the naive prototype, the PostgreSQL-function
ledger, the single-commit executor, the uniform load), since absolute rates on this shared
2-core machine move with everything else running; latency, CPU and WAL per transfer as
absolute figures. Reported with met / not met, never asserted (the exit status ignores them).

Pure: rows in (the dicts `python -m bench` writes as JSON), verdicts out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]
# The rows of one build by scenario (plus the run's peer rows, which every build shares).
Rows = dict[str, Row]

# The peers Kassa is measured against: run once per run (with the first build), every build's
# baseline.
BASELINES = ("naive", "funcledger", "funcledger-bulk")
# Kassa's batch scenarios are compared with the function ledger's batch variant; every other
# Kassa scenario with its single-transfer calls.
BULK_SCENARIOS = ("bulk", "hot-bulk")


def funcledger_peer(scenario: str) -> str | None:
    """The function-ledger scenario a Kassa scenario's `× function ledger` divides by; None
    for the peers themselves and the ceiling (no ledger work)."""
    if scenario in BASELINES or scenario == "ceiling":
        return None
    return "funcledger-bulk" if scenario in BULK_SCENARIOS else "funcledger"


def completed(row: Row) -> float | None:
    """Completed/s from the start of the load until drained: the rate a saturated server
    sustained, whatever its accept path did during the load."""
    return row.get("completed_overall_per_s") or None


def ratio_of(scenario: str, baseline: str) -> Callable[[Rows], float | None]:
    def measure(rows: Rows) -> float | None:
        a, b = completed(rows[scenario]), completed(rows[baseline])
        return round(a / b, 2) if a and b else None
    return measure


def p99_ms(scenario: str) -> Callable[[Rows], float | None]:
    return lambda rows: rows[scenario].get("latency_ms", {}).get("p99")


def cpu_us(scenario: str, group: str = "total") -> Callable[[Rows], float | None]:
    """CPU µs per completed transfer, all groups or one (`postgres`: the postmaster's tree)."""
    return lambda rows: (rows[scenario].get("cpu", {}).get("us_per_transfer", {}).get(group)
                         or None)


def wal_bytes(row: Row) -> float | None:
    """WAL bytes per completed transfer (bench/wal.py)."""
    return (row.get("wal") or {}).get("bytes_per_transfer")


def wal_of(scenario: str) -> Callable[[Rows], float | None]:
    return lambda rows: wal_bytes(rows[scenario])


@dataclass(frozen=True)
class Goal:
    key: str  # short name, in the JSON
    text: str  # the goal as printed
    needs: tuple[str, ...]  # scenarios that must have run in this run
    measure: Callable[[Rows], float | None]
    limit: float
    at_most: bool = False  # met when measured <= limit (< with strict); else >= limit
    strict: bool = False
    unit: str = "×"

    def met(self, value: float) -> bool:
        if self.at_most:
            return value < self.limit if self.strict else value <= self.limit
        return value >= self.limit


GOALS: tuple[Goal, ...] = (
    Goal("async/naive", "async ≥ 2× naive, completed/s (to drained)",
         ("async", "naive"), ratio_of("async", "naive"), 2.0),
    Goal("async/funcledger", "async ≥ 3× function ledger, completed/s (to drained)",
         ("async", "funcledger"), ratio_of("async", "funcledger"), 3.0),
    Goal("bulk/naive", "bulk ≥ 5× naive, completed/s (to drained)",
         ("bulk", "naive"), ratio_of("bulk", "naive"), 5.0),
    Goal("bulk/funcledger-bulk", "bulk ≥ 3× function ledger bulk, completed/s (to drained)",
         ("bulk", "funcledger-bulk"), ratio_of("bulk", "funcledger-bulk"), 3.0),
    Goal("batch/single", "batch executor ≥ 4× single, completed/s (to drained)",
         ("async", "single"), ratio_of("async", "single"), 4.0),
    Goal("hot/uniform", "hot ≥ 0.5× uniform (async), completed/s (to drained)",
         ("hot", "async"), ratio_of("hot", "async"), 0.5),
    Goal("hot-bulk/bulk", "hot bulk ≥ 0.7× uniform bulk, completed/s (to drained)",
         ("hot-bulk", "bulk"), ratio_of("hot-bulk", "bulk"), 0.7),
    Goal("async-open p99", "accept p99 < 50 ms, open loop at 80 % of async (async-open)",
         ("async-open",), p99_ms("async-open"), 50.0, at_most=True, strict=True, unit=" ms"),
    Goal("async cpu", "async CPU ≤ 300 µs per transfer",
         ("async",), cpu_us("async"), 300.0, at_most=True, unit=" µs"),
    Goal("bulk cpu", "bulk CPU ≤ 80 µs per transfer",
         ("bulk",), cpu_us("bulk"), 80.0, at_most=True, unit=" µs"),
    Goal("async pg cpu", "async PostgreSQL CPU ≤ 60 µs per transfer",
         ("async",), cpu_us("async", "postgres"), 60.0, at_most=True, unit=" µs"),
    Goal("bulk pg cpu", "bulk PostgreSQL CPU ≤ 40 µs per transfer",
         ("bulk",), cpu_us("bulk", "postgres"), 40.0, at_most=True, unit=" µs"),
    Goal("async wal", "async WAL ≤ 1,000 bytes per transfer",
         ("async",), wal_of("async"), 1000.0, at_most=True, unit=" B"),
    Goal("bulk wal", "bulk WAL ≤ 1,000 bytes per transfer",
         ("bulk",), wal_of("bulk"), 1000.0, at_most=True, unit=" B"),
)

# The latency goal's limit, for the chart's reference line.
ACCEPT_P99_MS = next(g.limit for g in GOALS if g.unit == " ms")


def evaluate(results: list[Row], goals: tuple[Goal, ...] = GOALS) -> list[dict[str, Any]]:
    """Each goal for each build, in run order: {"build", "key", "goal", "measured", "unit",
    "met", "missing", "failed"}, with met and measured None when the run lacks a scenario the
    goal needs (`missing`), one of them failed (`failed`: its figures are not a measurement,
    e.g. a naive window stretched by a drain timeout), or a figure is absent. The peer rows
    (BASELINES, run once, with the first build) are every build's baselines."""
    labels = list(dict.fromkeys(r["build"] for r in results))
    peers = {r["scenario"]: r for r in results if r["scenario"] in BASELINES}
    out = []
    for label in labels:
        rows = {r["scenario"]: r for r in results if r["build"] == label}
        for name, peer in peers.items():
            rows.setdefault(name, peer)
        for goal in goals:
            missing = [s for s in goal.needs if s not in rows]
            failed = [s for s in goal.needs if s in rows and rows[s].get("failures")]
            value = None if missing or failed else goal.measure(rows)
            out.append({"build": label, "key": goal.key, "goal": goal.text, "measured": value,
                        "unit": goal.unit, "met": None if value is None else goal.met(value),
                        "missing": missing, "failed": failed})
    return out


def fmt(value: float) -> str:
    return f"{value:,.2f}" if value < 10 else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def text(evaluations: list[dict[str, Any]]) -> list[str]:
    """One line per goal and build: `[build] goal: measured (met | not met)`, or `not
    measured (...)` when the run lacks what the goal is judged on."""
    several = len({e["build"] for e in evaluations}) > 1
    lines = []
    for e in evaluations:
        prefix = f"[{e['build']}] " if several else ""
        if e["met"] is None:
            why = (f"run {', '.join(e['missing'])} too" if e["missing"]
                   else f"{', '.join(e['failed'])} failed" if e["failed"]
                   else "no figure in this run")
            lines.append(f"{prefix}{e['goal']}: not measured ({why})")
        else:
            verdict = "met" if e["met"] else "not met"
            lines.append(f"{prefix}{e['goal']}: {fmt(e['measured'])}{e['unit']} ({verdict})")
    return lines
