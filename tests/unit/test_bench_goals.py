"""bench/goals.py judges one run's rows against the docs' goals, throughput as ratios to the
baselines of the same run; bench/k6.py reads the k6 script's status counters."""

from __future__ import annotations

from typing import Any

from bench import goals, k6


def row(scenario: str, completed: float | None = None, build: str = "main",
        p99: float = 10.0, cpu: float | None = None) -> dict[str, Any]:
    return {"scenario": scenario, "build": build, "completed_overall_per_s": completed,
            "latency_ms": {"p99": p99}, "cpu": {"us_per_transfer": {"total": cpu}}}


def by_goal(evaluations: list[dict[str, Any]], build: str = "main") -> dict[str, dict[str, Any]]:
    return {e["key"]: e for e in evaluations if e["build"] == build}


def test_throughput_goals_are_ratios_to_the_baselines_of_the_same_run() -> None:
    results = [row("naive", 1000.0), row("async", 2100.0, cpu=290.0), row("hot", 900.0),
               row("bulk", 4000.0, cpu=120.0), row("single", 500.0),
               row("async-open", 900.0, p99=49.9)]
    got = by_goal(goals.evaluate(results))
    assert (got["async/naive"]["measured"], got["async/naive"]["met"]) == (2.1, True)  # ≥ 2× naive
    assert (got["bulk/naive"]["measured"], got["bulk/naive"]["met"]) == (4.0, False)  # < 5× naive
    assert (got["batch/single"]["measured"], got["batch/single"]["met"]) == (4.2, True)  # async ÷ single ≥ 4
    assert (got["hot/uniform"]["measured"], got["hot/uniform"]["met"]) == (0.43, False)  # hot ÷ async < 0.5
    assert (got["async-open p99"]["measured"], got["async-open p99"]["met"]) == (49.9, True)  # < 50 ms
    assert (got["async cpu"]["met"], got["bulk cpu"]["met"]) == (True, False)  # 290 ≤ 300, 120 > 80


def test_a_goal_exactly_at_its_limit() -> None:
    got = by_goal(goals.evaluate([row("naive", 1000.0), row("async", 2000.0, cpu=300.0),
                                  row("async-open", 1.0, p99=50.0)]))
    assert got["async/naive"]["met"] is True  # ≥ 2
    assert got["async cpu"]["met"] is True  # ≤ 300 µs
    assert got["async-open p99"]["met"] is False  # p99 < 50 ms is strict


def test_goals_without_their_scenarios_are_not_measured() -> None:
    evaluations = goals.evaluate([row("async", 1600.0)])
    got = by_goal(evaluations)
    assert got["async/naive"]["met"] is None and got["async/naive"]["missing"] == ["naive"]
    assert got["async-open p99"]["missing"] == ["async-open"]
    assert got["async cpu"]["met"] is None and got["async cpu"]["missing"] == []  # no CPU figure
    lines = goals.text(evaluations)
    assert "async ≥ 2× naive, completed/s (to drained): not measured (run naive too)" in lines
    assert not any("5,000" in line or "20,000" in line for line in lines)


def test_a_failed_baseline_judges_nothing() -> None:
    naive = row("naive", 26.0) | {"failures": ["2105 kafka_records for 2107 2xx answers"]}
    evaluations = goals.evaluate([naive, row("async", 300.0)])
    assert by_goal(evaluations)["async/naive"]["met"] is None
    assert ("async ≥ 2× naive, completed/s (to drained): not measured (naive failed)"
            in goals.text(evaluations))


def test_every_build_is_judged_against_the_one_naive_row() -> None:
    results = [row("naive", 1000.0), row("async", 2100.0), row("async", 1400.0, build="old")]
    evaluations = goals.evaluate(results)
    assert by_goal(evaluations)["async/naive"]["met"] is True
    assert by_goal(evaluations, "old")["async/naive"]["measured"] == 1.4
    assert by_goal(evaluations, "old")["async/naive"]["met"] is False
    lines = goals.text(evaluations)
    assert "[main] async ≥ 2× naive, completed/s (to drained): 2.10× (met)" in lines
    assert "[old] async ≥ 2× naive, completed/s (to drained): 1.40× (not met)" in lines


def summary(**counters: int) -> dict[str, Any]:
    metrics: dict[str, Any] = {name: {"count": n, "rate": n / 4} for name, n in counters.items()}
    total = sum(counters.values())
    metrics["http_reqs"] = {"count": total + 2, "rate": (total + 2) / 4}  # + setup's 2 GETs
    metrics["http_req_duration"] = {"p(50)": 1.0, "p(99)": 2.0, "p(99.9)": 3.0, "max": 4.0}
    metrics["unexpected_status"] = {"value": 1.0, "thresholds": {"rate==0": True}}
    return {"metrics": metrics}


def test_k6_counters_become_status_codes() -> None:
    result = k6.parse(summary(accepted=5, status_422=90, status_503=2, status_4xx_other=1,
                              status_5xx_other=1, status_network_error=1), "")
    assert result.codes == {"202": 5, "422": 90, "503": 2, "4xx": 1, "5xx": 1}
    assert result.items_ok == 5
    assert result.requests == 100  # transfers only, not the setup's requests
    assert result.errors == {"network": 1}
    assert result.thresholds == {"unexpected_status: rate==0": False}
