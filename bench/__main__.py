"""`python -m bench [--quick] [--scenarios a,b] [--duration S] [--tool wrk|k6] [--kassa-bin P]`

Starts `kassa serve` (embedded stack unless --database-url/--redis-url), seeds 10,000
funded accounts, runs each scenario (the naive prototype on the same embedded services, the
PostgreSQL-function ledger on the same PostgreSQL), checks the ledger invariants after each,
writes bench/results/<date>-<scenario>.json, a summary chart, and prints the tables
(throughput with ratios to naive and to the function ledger, CPU, PostgreSQL CPU and WAL per
transfer; CPU per transfer by process). Exits 1 when an invariant broke, an accepted journal never finished, or the server
answered a 5xx other than 503. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from bench import (
    funcledger,
    goals,
    k6,
    naive,
    report,
    scenarios,
    seed,
    stack,
    tracing,
    webhook,
    wrk,
)
from bench.scenarios import SCENARIOS, RunOptions, Scenario
from bench.wrk import LoadResult

# The k6 script posts single async transfers (the naive prototype takes the same body).
K6_SCENARIOS = ("naive", "async", "async-open", "single")


@dataclass(frozen=True)
class Build:
    """A `kassa` console script to bench, and the label its results carry."""

    label: str
    kassa: Path


def today() -> str:
    """The local date names the result files."""
    return dt.datetime.now().astimezone().date().isoformat()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"{scenarios.QUICK_S:.0f} s per scenario (about 3 minutes for all)")
    p.add_argument("--scenarios", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--duration", type=float, help="seconds of load per scenario (overrides)")
    p.add_argument("--connections", type=int, help="connections (k6: VUs) for every scenario")
    p.add_argument("--tool", choices=("wrk", "k6"), default="wrk",
                   help="k6 runs the async scenario with bench/k6/transaction_load_test.js")
    p.add_argument("--workers", type=int, default=2, help="kassa serve --workers")
    p.add_argument("--database-url", help="use this PostgreSQL instead of the embedded one")
    p.add_argument("--redis-url", help="use this Redis instead of the embedded one")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="seconds to wait after the load for the backlog to reach 0")
    p.add_argument("--results-dir", type=Path, default=report.RESULTS)
    p.add_argument("--keep-data", action="store_true", help="keep the servers' data dirs")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KASSA_X=V",
                   help="a server setting for every scenario (repeatable), for tuning runs")
    p.add_argument("--profile", action="store_true",
                   help="py-spy flame graph of each worker per scenario, into --results-dir")
    p.add_argument("--index-entries", action="store_true",
                   help="also index entries per transfer, from the table statistics (waits "
                        "about 22 s more per scenario for them to settle, bench/indexes.py)")
    p.add_argument("--wal-stats", action="store_true",
                   help="also where the WAL bytes went, by record type (pg_waldump over the "
                        "window, bench/walstats.py; embedded PostgreSQL only)")
    p.add_argument("--kassa-bin", action="append", default=[], metavar="[LABEL=]PATH",
                   help="also bench this kassa script (another checkout's .venv/bin/kassa), "
                        "after this checkout's; repeatable")
    p.add_argument("--open-rate", type=float, metavar="PER_S",
                   help="the open-loop scenarios' offered rate (default: 80 %% of their "
                        "closed loop's on the same server); one rate for every build makes "
                        "CPU per transfer comparable when the builds' throughputs differ")
    p.add_argument("--webhook", nargs="?", const="*", metavar="LABEL[,LABEL]",
                   help="register one event webhook (every event) on each server, or only on "
                        "those of the builds named (with --kassa-bin LABEL=PATH, the same "
                        "build twice compares with and without in one run), sent to a "
                        "receiver process on loopback that answers 204 (bench/webhook.py)")
    p.add_argument("--trace", action="append", default=[], metavar="LABEL=RATIO",
                   help="the servers of build LABEL trace a share RATIO of the requests, "
                        "exported over OTLP/HTTP to a sink on loopback (bench/tracing.py); "
                        "repeatable")
    return p.parse_args(argv)


def builds(args: argparse.Namespace) -> list[Build]:
    def label_of(path: Path) -> str:
        root = stack.checkout_of(path)
        return root.name if root else str(path)

    out = [Build(label_of(stack.KASSA), stack.KASSA)]
    for item in args.kassa_bin:
        label, _, path = item.rpartition("=")
        kassa = Path(path)
        if not kassa.is_file():
            sys.exit(f"--kassa-bin {path}: no such file")
        label = label or label_of(kassa)
        while label in {b.label for b in out}:
            label += "'"
        out.append(Build(label, kassa))
    return out


def selected(args: argparse.Namespace) -> list[Scenario]:
    default = ["async"] if args.tool == "k6" else list(SCENARIOS)
    names = args.scenarios.split(",") if args.scenarios else list(default)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        sys.exit(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    if args.tool == "k6" and set(names) - set(K6_SCENARIOS):
        sys.exit(f"--tool k6 runs only {K6_SCENARIOS}")
    # An open-loop scenario takes its rate from its closed-loop one: run that too.
    names += [s.open_loop_of for n in names if (s := SCENARIOS[n]).open_loop_of]
    # Keep SCENARIOS order: scenarios sharing server settings then share one server.
    return [SCENARIOS[n] for n in SCENARIOS if n in names]


async def wrk_tool(url: str, scenario: Scenario, conns: int, duration_s: float,
                   env: dict[str, str]) -> LoadResult:
    threads = conns if scenario.thread_per_connection else wrk.THREADS
    return await wrk.run(url, scenario.script, conns, duration_s, env, threads)


async def k6_tool(url: str, scenario: Scenario, conns: int, duration_s: float,
                  env: dict[str, str]) -> LoadResult:
    return await k6.run(url, conns, duration_s, env)


def options(args: argparse.Namespace, scenario: Scenario, rate: float | None = None
            ) -> RunOptions:
    duration = args.duration or (scenarios.QUICK_S if args.quick else scenario.full_s)

    async def open_loop(url: str, scenario: Scenario, conns: int, duration_s: float,
                        env: dict[str, str]) -> LoadResult:
        return await k6.run(url, conns, duration_s, env, rate=rate)

    tool, name = ((open_loop, "k6 open loop") if rate else
                  (k6_tool, "k6") if args.tool == "k6" else (wrk_tool, "wrk"))
    return RunOptions(duration, args.connections, args.drain_timeout, name, tool, today(),
                      args.results_dir if args.profile else None, rate, args.index_entries,
                      args.wal_stats)


def open_loop_rate(scenario: Scenario, earlier: list[dict[str, Any]]) -> float:
    """OPEN_LOOP_SHARE of the completed/s (load window: while the closed loop kept the
    server saturated) of the scenario it follows, on the same server."""
    base = next((r for r in earlier if r["scenario"] == scenario.open_loop_of), None)
    if not base or not base.get("completed_per_s"):
        raise RuntimeError(f"{scenario.name}: no completed/s from {scenario.open_loop_of}")
    return scenarios.OPEN_LOOP_SHARE * float(base["completed_per_s"])


async def run_group(args: argparse.Namespace, build: Build, group: list[Scenario],
                    errors: list[str]) -> list[dict[str, Any]]:
    """One server (fresh data dir) for scenarios with the same server settings. A scenario
    that cannot run is reported in `errors` and the next one still runs."""
    overrides = dict(item.split("=", 1) for item in args.settings)
    config = stack.StackConfig(args.workers, args.database_url, args.redis_url,
                               {**overrides, **group[0].server_env, **traced(args, build.label)},
                               build.kassa)
    settings = " ".join(f"{k}={v}" for k, v in config.extra_env.items()) or "defaults"
    print(f"starting [{build.label}] {build.kassa} serve --workers {args.workers} ({settings}) ...",
          flush=True)
    server = await asyncio.to_thread(stack.start, config)
    ok = False
    try:
        print(f"  {server.url}, data dir {server.data_dir}; seeding {seed.ACCOUNTS:,} accounts",
              flush=True)
        seeded = await seed.seed(server.url, stack.API_KEY, server.dsn)
        print(f"  seeded in {seeded['total_s']} s", flush=True)
        if hooked(args, build.label):
            hook = await webhook.register(server.url, stack.API_KEY, args.webhook_receiver.url)
            print(f"  webhook {hook} -> {args.webhook_receiver.url}", flush=True)
        results: list[dict[str, Any]] = []
        for scenario in group:
            try:
                rate = ((args.open_rate or open_loop_rate(scenario, results))
                        if scenario.open_loop_of else None)
                result = await run_one(args, server, config, scenario,
                                       options(args, scenario, rate))
            except Exception as exc:  # noqa: BLE001 - report, then run the next scenario
                errors.append(f"[{build.label}] {scenario.name}: {type(exc).__name__}: {exc}")
                print(f"  ERROR: {errors[-1]}", file=sys.stderr, flush=True)
                continue
            result.update(build=build.label, kassa=str(build.kassa), seed=seeded)
            results.append(result)
        ok = len(results) == len(group) and not any(r["failures"] for r in results)
        return results
    finally:
        offset = server.log_path.stat().st_size
        code = await asyncio.to_thread(server.stop)
        print(f"  server stopped (exit {code})", flush=True)
        for line in scenarios.log_issues(server.log_path, offset):
            print(f"    warning: server log during shutdown: {line}", flush=True)
        if ok and not args.keep_data:
            server.discard()
        else:
            print(f"  kept {server.data_dir} (serve.log inside)", flush=True)


def traced(args: argparse.Namespace, label: str) -> dict[str, str]:
    """The OTEL_* variables of `label`'s servers (--trace), none when not traced."""
    ratio = args.trace_ratios.get(label)
    return {} if ratio is None else tracing.server_env(args.trace_sink.endpoint, ratio)


def hooked(args: argparse.Namespace, label: str) -> bool:
    """Whether --webhook registers an endpoint on `label`'s servers."""
    return args.webhook_receiver is not None and (
        args.webhook == "*" or label in args.webhook.split(","))


async def run_one(args: argparse.Namespace, server: stack.Server, config: stack.StackConfig,
                  scenario: Scenario, opts: RunOptions) -> dict[str, Any]:
    rate = f" at {opts.rate:,.0f}/s" if opts.rate else ""
    print(f"  {scenario.name}: {scenario.description}{rate}, {opts.duration_s:.0f} s ...",
          flush=True)
    if server.process.poll() is not None:
        raise RuntimeError(f"kassa serve died (exit {server.process.returncode}):\n"
                           f"{server.log_tail()}")
    if scenario.naive:
        result = await naive.run(server, config, scenario, opts)
    elif scenario.funcledger:
        result = await funcledger.run(server, config, scenario, opts)
    else:
        result = await scenarios.run(server, scenario, opts)
    result.update(workers=args.workers, server_env=scenario.server_env, date=today())
    c = result["cpu"]
    print(f"    accepted/s {result['accepted_per_s']}, completed/s "
          f"{result.get('completed_per_s', '-')}, p99 {result['latency_ms']['p99']} ms, "
          f"drain {result.get('drain_s', '-')} s, outbox drain {result.get('outbox_drain_s', '-')} s"
          f", CPU {c['us_per_transfer']['total']} us/transfer ({c['cores_busy']} cores busy)"
          f", WAL {result.get('wal', {}).get('bytes_per_transfer', '-')} B/transfer",
          flush=True)
    for row in (result.get("wal") or {}).get("by_record") or []:
        print(f"    WAL {row['record']}: {row['bytes_per_transfer']} B/transfer "
              f"({row['count']} records, {row['fpi_bytes']} B of full-page images)", flush=True)
    if result.get("waits", {}).get("samples"):
        w = result["waits"]
        print(f"    database sessions in a transaction: {w['sessions_in_transaction']} on average;"
              " share " + ", ".join(f"{k} {v}" for k, v in w["share"].items()), flush=True)
    for line in result["failures"]:
        print(f"    FAILED: {line}", flush=True)
    for line in result["warnings"]:
        print(f"    warning: {line}", flush=True)
    return result


async def run_all(args: argparse.Namespace, errors: list[str]) -> list[dict[str, Any]]:
    chosen = selected(args)
    results: list[dict[str, Any]] = []

    def key(s: Scenario) -> list[tuple[str, str]]:
        return sorted(s.server_env.items())

    for i, build in enumerate(builds(args)):
        # The peers (naive prototype, function ledger) do not depend on the build: once per
        # run, with the first build.
        mine = [s for s in chosen if not (i and s.baseline)]
        for _, group in groupby(sorted(mine, key=key), key=key):
            names = [s.name for s in group]
            try:
                results += await run_group(args, build, [SCENARIOS[n] for n in names], errors)
            except Exception as exc:  # noqa: BLE001 - report, then run the other groups
                errors.append(f"[{build.label}] {','.join(names)}: {type(exc).__name__}: {exc}")
                print(f"  ERROR: {errors[-1]}", file=sys.stderr, flush=True)
    order = list(SCENARIOS)
    labels = [b.label for b in builds(args)]
    return sorted(results, key=lambda r: (labels.index(r["build"]), order.index(r["scenario"])))


def finish(args: argparse.Namespace, results: list[dict[str, Any]], errors: list[str]) -> int:
    date = today()
    several = len({r["build"] for r in results}) > 1
    for r in results:
        r["several_builds"] = several  # names carry the build: async@main, async@old
    found = report.ratios(results)
    judged = goals.evaluate(results)
    for r in results:
        r["ratios_in_this_run"] = found
        r["goals_in_this_run"] = judged
        report.write_json(r, date, args.results_dir)
    if not results:
        print("\nBENCHMARK FAILED: no scenario finished:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    png = report.chart(results, args.results_dir / f"{date}-summary.png")
    print("\n" + report.table(results) + "\n")
    print(report.cpu_table(results) + "\n")
    for line in report.open_loop_text(results) + report.mix_text(results):
        print(line)
    for name, value in found.items():
        print(f"ratio {name}: {value}")
    # Throughput goals are ratios to the baselines measured above, in this same run.
    for line in goals.text(judged):
        print(f"goal: {line}")
    print(f"\nresults: {args.results_dir}/{date}-<scenario>.json, chart {png}")
    failed = errors + [f"{report.name(r)}: {f}" for r in results for f in r["failures"]]
    if failed:
        print("\nBENCHMARK FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    errors: list[str] = []
    args.webhook_receiver = webhook.Receiver() if args.webhook else None
    args.trace_ratios = tracing.parse(args.trace)
    args.trace_sink = webhook.Receiver() if args.trace_ratios else None
    try:
        results = asyncio.run(run_all(args, errors))
    finally:
        for receiver in (args.webhook_receiver, args.trace_sink):
            if receiver is not None:
                receiver.stop()
    for r in results:
        r["webhook"] = hooked(args, r["build"])
        r["trace_ratio"] = args.trace_ratios.get(r["build"])
    return finish(args, results, errors)


if __name__ == "__main__":
    sys.exit(main())
