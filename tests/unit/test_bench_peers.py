"""The bench's second peer and its figures, as pure logic: WAL arithmetic (bench/wal.py), the
function-ledger ratios and goals (bench/report.py, bench/goals.py), PostgreSQL CPU and WAL
per transfer in the table, the hot-bulk scenario's definition (bench/scenarios.py)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import goals, indexes, report, wal
from bench.scenarios import SCENARIOS


def row(scenario: str, completed: float | None = None, build: str = "main",
        cpu: float | None = None, pg: float | None = None,
        wal_per: float | None = None) -> dict[str, Any]:
    return {"scenario": scenario, "build": build, "completed_overall_per_s": completed,
            "completed_per_s": completed, "accepted_per_s": completed or 0.0,
            "latency_ms": {"p50": 1.0, "p99": 10.0, "p99.9": 20.0},
            "cpu": {"us_per_transfer": {"total": cpu, "postgres": pg}},
            "wal": {"bytes_per_transfer": wal_per}, "tool": "wrk", "connections": 8,
            "load_s": 8.0, "codes": {"201": 1}, "invariants_ok": True, "failures": []}


def by_goal(evaluations: list[dict[str, Any]], build: str = "main") -> dict[str, dict[str, Any]]:
    return {e["key"]: e for e in evaluations if e["build"] == build}


# --- WAL arithmetic ---------------------------------------------------------------------

def test_an_lsn_is_a_64_bit_position_in_hex_halves() -> None:
    assert wal.lsn_bytes("0/0") == 0
    assert wal.lsn_bytes("0/16B3748") == 0x16B3748
    assert wal.lsn_bytes("1/0") == 1 << 32
    assert wal.lsn_bytes("16/B374D848") == (0x16 << 32) + 0xB374D848


def test_wal_per_transfer_is_the_lsn_difference_over_completed() -> None:
    # pg_wal_lsn_diff('1/10', '0/FFFFFFF0') = 32: the low half wraps into the high one.
    got = wal.per_transfer("0/FFFFFFF0", "1/10", 4)
    assert (got["bytes"], got["bytes_per_transfer"]) == (32, 8.0)
    assert wal.per_transfer("0/0", "0/3E8", 3)["bytes_per_transfer"] == 333.3


def test_wal_without_an_lsn_or_a_transfer_is_no_figure() -> None:
    assert wal.per_transfer(None, "0/10", 5) == {"start_lsn": None, "end_lsn": "0/10",
                                                 "bytes": None, "bytes_per_transfer": None}
    nothing = wal.per_transfer("0/0", "0/10", 0)
    assert (nothing["bytes"], nothing["bytes_per_transfer"]) == (16, None)


# --- which function-ledger scenario each Kassa scenario is compared with ------------------

@pytest.mark.parametrize(("scenario", "peer"), [
    ("async", "funcledger"), ("hot", "funcledger"), ("sync", "funcledger"),
    ("single", "funcledger"), ("bulk", "funcledger-bulk"), ("hot-bulk", "funcledger-bulk"),
    ("naive", None), ("funcledger", None), ("funcledger-bulk", None), ("ceiling", None)])
def test_batch_scenarios_are_compared_with_the_batch_variant(scenario: str,
                                                            peer: str | None) -> None:
    assert goals.funcledger_peer(scenario) == peer


def test_rows_carry_their_ratio_to_the_function_ledger() -> None:
    results = [row("naive", 1000.0), row("funcledger", 500.0), row("funcledger-bulk", 2000.0),
               row("async", 1500.0), row("bulk", 5000.0), row("hot-bulk", 4000.0)]
    found = report.ratios(results)
    by = {r["scenario"]: r for r in results}
    assert by["async"]["vs_funcledger"] == 3.0  # ÷ funcledger
    assert by["bulk"]["vs_funcledger"] == 2.5  # ÷ funcledger-bulk
    assert by["hot-bulk"]["vs_funcledger"] == 2.0
    assert by["funcledger"]["vs_funcledger"] is None and by["naive"]["vs_funcledger"] is None
    assert by["funcledger"]["vs_naive"] == 0.5  # the peers against each other, as naive's column
    assert by["funcledger"]["vs_async"] is None  # a peer is no Kassa scenario
    assert found["async/funcledger completed (to drained)"] == 3.0
    assert found["bulk/funcledger-bulk completed (to drained)"] == 2.5
    assert found["hot-bulk/bulk completed (to drained)"] == 0.8


def test_cpu_and_wal_ratios_to_the_function_ledger() -> None:
    results = [row("funcledger", 500.0, cpu=800.0, wal_per=1200.0),
               row("async", 1500.0, cpu=400.0, wal_per=1800.0)]
    found = report.ratios(results)
    assert found["async/funcledger CPU per transfer"] == 0.5
    assert found["async/funcledger WAL per transfer"] == 1.5
    assert "bulk/funcledger-bulk WAL per transfer" not in found  # not run: not printed


def test_every_build_is_compared_with_the_one_function_ledger_row() -> None:
    results = [row("funcledger", 500.0), row("async", 1500.0), row("async", 1000.0, build="old")]
    found = report.ratios(results)
    assert found["[main] async/funcledger completed (to drained)"] == 3.0
    assert found["[old] async/funcledger completed (to drained)"] == 2.0
    assert not any("funcledger old/main" in k for k in found)  # a peer runs once
    evaluations = goals.evaluate(results)
    assert by_goal(evaluations)["async/funcledger"]["met"] is True  # ≥ 3×
    assert by_goal(evaluations, "old")["async/funcledger"]["measured"] == 2.0
    assert by_goal(evaluations, "old")["async/funcledger"]["met"] is False


# --- the goals --------------------------------------------------------------------

def test_the_function_ledger_and_hot_bulk_goals() -> None:
    results = [row("naive", 1000.0), row("funcledger", 600.0), row("funcledger-bulk", 2000.0),
               row("async", 2000.0), row("bulk", 5900.0), row("hot-bulk", 4100.0)]
    got = by_goal(goals.evaluate(results))
    assert (got["async/naive"]["measured"], got["async/naive"]["met"]) == (2.0, True)  # ≥ 2
    assert (got["async/funcledger"]["measured"], got["async/funcledger"]["met"]) == (3.33, True)
    assert (got["bulk/naive"]["measured"], got["bulk/naive"]["met"]) == (5.9, True)  # ≥ 5
    assert (got["bulk/funcledger-bulk"]["measured"],
            got["bulk/funcledger-bulk"]["met"]) == (2.95, False)  # < 3
    assert (got["hot-bulk/bulk"]["measured"], got["hot-bulk/bulk"]["met"]) == (0.69, False)  # < 0.7


def test_cpu_postgres_and_wal_goals_per_transfer() -> None:
    results = [row("async", 2000.0, cpu=300.0, pg=61.0, wal_per=1000.0),
               row("bulk", 6000.0, cpu=80.1, pg=40.0, wal_per=1000.4)]
    got = by_goal(goals.evaluate(results))
    assert (got["async cpu"]["met"], got["bulk cpu"]["met"]) == (True, False)  # ≤ 300, ≤ 80
    assert (got["async pg cpu"]["measured"], got["async pg cpu"]["met"]) == (61.0, False)  # ≤ 60
    assert (got["bulk pg cpu"]["measured"], got["bulk pg cpu"]["met"]) == (40.0, True)  # ≤ 40
    assert (got["async wal"]["met"], got["bulk wal"]["met"]) == (True, False)  # ≤ 1,000 B
    lines = goals.text(goals.evaluate(results))
    assert "async WAL ≤ 1,000 bytes per transfer: 1,000 B (met)" in lines
    assert "bulk PostgreSQL CPU ≤ 40 µs per transfer: 40.0 µs (met)" in lines


def test_without_a_wal_figure_the_goal_is_not_measured() -> None:
    bare = row("async", 2000.0) | {"wal": {"bytes_per_transfer": None}}
    got = by_goal(goals.evaluate([bare]))
    assert got["async wal"]["met"] is None and got["async wal"]["missing"] == []
    assert got["async/funcledger"]["missing"] == ["funcledger"]
    lines = goals.text(goals.evaluate([bare]))
    assert ("async ≥ 3× function ledger, completed/s (to drained): not measured "
            "(run funcledger too)") in lines


def test_a_failed_function_ledger_judges_nothing() -> None:
    broken = row("funcledger", 500.0) | {"failures": ["invariant broken: money not conserved"]}
    got = by_goal(goals.evaluate([broken, row("async", 2000.0)]))
    assert got["async/funcledger"]["met"] is None and got["async/funcledger"]["failed"] == [
        "funcledger"]


# --- the table and the scenarios ------------------------------------------------------------

def test_the_table_shows_the_ratio_pg_cpu_and_wal() -> None:
    results = [row("funcledger", 500.0, cpu=900.0, pg=400.0, wal_per=1234.5),
               row("async", 1500.0, cpu=700.0, pg=150.0, wal_per=2345.0)]
    report.ratios(results)
    lines = report.table(results).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = {r: [c.strip() for c in line.strip("|").split("|")]
             for r, line in zip(("funcledger", "async"), lines[2:], strict=True)}
    col = {name: header.index(name) for name in
           ("× function ledger", "PG CPU µs/transfer", "WAL B/transfer")}
    assert cells["async"][col["× function ledger"]] == "3.00"
    assert cells["async"][col["PG CPU µs/transfer"]] == "150"
    assert cells["async"][col["WAL B/transfer"]] == "2,345"
    assert cells["funcledger"][col["× function ledger"]] == "-"
    assert len(header) == len(cells["async"])


def test_the_peer_scenarios_and_hot_bulk() -> None:
    assert SCENARIOS["funcledger"].baseline and SCENARIOS["funcledger"].funcledger
    assert SCENARIOS["funcledger"].script == SCENARIOS["async"].script  # the same requests
    bulk, peer, hot = SCENARIOS["bulk"], SCENARIOS["funcledger-bulk"], SCENARIOS["hot-bulk"]
    assert peer.baseline and (peer.script, peer.lua_env, peer.items_per_request,
                              peer.connections) == (bulk.script, bulk.lua_env,
                                                    bulk.items_per_request, bulk.connections)
    assert not hot.baseline and hot.lua_env == {**bulk.lua_env, "BENCH_HOT_SHARE": "0.5"}
    assert not SCENARIOS["naive"].funcledger and SCENARIOS["naive"].baseline
    assert set(goals.BASELINES) == {n for n, s in SCENARIOS.items() if s.baseline}


# --- index entries from the table statistics ------------------------------------------------

def stats(**tables: tuple[int, int, int, int]) -> indexes.Snapshot:
    return {rel: indexes.TableStats(*v) for rel, v in tables.items()}


def test_index_entries_are_inserts_and_non_hot_updates_times_indexes() -> None:
    before = stats(journals=(100, 10, 0, 3), accounts=(10, 50, 40, 1), outbox=(5, 0, 0, 2))
    after = stats(journals=(110, 20, 0, 3), accounts=(10, 70, 55, 1), outbox=(15, 0, 0, 2),
                  receipts=(4, 0, 0, 1))  # made in between: counted from 0
    # journals (10 + 10) × 3; accounts 20 updates, 15 HOT: 5 × 1; outbox 10 × 2; receipts 4 × 1
    assert indexes.entries(before, after) == {"journals": 60, "accounts": 5, "outbox": 20,
                                              "receipts": 4}
    got = indexes.per_transfer(before, after, 10)
    assert got is not None and (got["total"], got["per_transfer"]) == (89, 8.9)
    assert list(got["by_table"]) == ["journals", "outbox", "accounts", "receipts"]


def test_a_table_made_again_counts_from_zero_and_nothing_without_snapshots() -> None:
    before = stats(**{"funcledger.entries": (500, 0, 0, 2)})
    after = stats(**{"funcledger.entries": (40, 0, 0, 2)})  # schema dropped and made again
    assert indexes.entries(before, after) == {"funcledger.entries": 80}
    assert indexes.per_transfer(None, after, 10) is None
    assert indexes.per_transfer(before, after, 0) == {
        "total": 80, "per_transfer": None, "by_table": {"funcledger.entries": 80}}


def test_the_table_has_an_index_column_only_when_measured() -> None:
    plain = [row("async", 1500.0)]
    assert "index entries/transfer" not in report.table(plain)
    measured = [row("async", 1500.0) | {"index_entries": {"per_transfer": 9.5}}]
    lines = report.table(measured).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[header.index("index entries/transfer")] == "9.50"
    assert len(cells) == len(header) == lines[1].count("---")
