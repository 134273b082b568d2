"""The scenarios, and how a Kassa scenario is run and judged against a started server
(the `naive` prototype's own run is in bench/naive.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench import cpu, indexes, metrics, profile, seed, wal, walstats
from bench.sampler import FINAL, Drained, Sample, Sampler
from bench.stack import API_KEY, KASSA, Server
from bench.waits import WaitSampler
from bench.wrk import LoadResult
from tests.invariants import violations


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    script: str  # under bench/wrk/
    connections: int
    full_s: float  # duration of the full run; --quick uses QUICK_S
    lua_env: dict[str, str] = field(default_factory=dict)
    server_env: dict[str, str] = field(default_factory=dict)  # non-empty: a server of its own
    journals: bool = True
    items_per_request: int = 1
    naive: bool = False  # against the naive prototype (bench/naive_server.py), not Kassa
    # Against the PostgreSQL-function ledger (bench/funcledger_server.py), not Kassa.
    funcledger: bool = False
    # Open loop: k6 at OPEN_LOOP_SHARE of the completed/s this earlier scenario measured.
    open_loop_of: str | None = None
    # wrk -tN -cN: the script needs to know which request an answer is for (mixed.lua).
    thread_per_connection: bool = False
    # Journal statuses counted as completed (bench/sampler.py); the mixed scenario counts
    # operations: holds `held` (or since captured or voided), voids `voided`, no failures.
    final: tuple[str, ...] = FINAL

    @property
    def baseline(self) -> bool:
        """A peer Kassa is measured against (run once per run, with the first build)."""
        return self.naive or self.funcledger


QUICK_S = 8.0
OPEN_LOOP_SHARE = 0.8
MIXED_FINAL = ("completed", "held", "voided")
KINDS = ("transfer", "hold", "capture", "void", "reverse")
# The journal kind (bench/sampler.py KINDS_SQL) of each request kind of mixed.lua.
JOURNAL_KIND = {"transfer": "transfer", "hold": "hold", "capture": "capture", "void": "void",
                "reverse": "reversal"}

SCENARIOS = {s.name: s for s in (
    Scenario("ceiling", "GET /healthz: the HTTP stack alone", "healthz.lua", 32, 10,
             journals=False),
    Scenario("naive", "the naive prototype: INSERT + INCR + Kafka send per request, 202",
             "transfers.lua", 64, 30, journals=False, naive=True),
    Scenario("funcledger", "the PostgreSQL-function ledger: one transfer() call and commit "
             "per request, 201", "transfers.lua", 64, 30, journals=False, funcledger=True),
    Scenario("funcledger-bulk", "the PostgreSQL-function ledger: one transfer_batch() call and "
             "commit per 100 transfers, 201", "batch.lua", 8, 30, journals=False,
             lua_env={"BENCH_BATCH_SIZE": "100"}, items_per_request=100, funcledger=True),
    # 60 s: long enough that the rate is one the server sustains, not a burst.
    Scenario("async", "POST /v1/transactions, uniformly random accounts, 202", "transfers.lua",
             64, 60),
    # Connections: k6 VUs allocated before the start. Allocating more during the run makes
    # k6 drop iterations while it does; 256 VUs cost about 50 MB and 0.15 s of CPU.
    Scenario("async-open", f"as async, open loop (k6 constant-arrival-rate) at "
             f"{OPEN_LOOP_SHARE:.0%} of async's completed/s", "", 256, 30, open_loop_of="async"),
    # Mixed: the shares of REQUESTS; captures/voids/reversals name receipts this connection
    # got at least 1 s earlier (a transfer instead when it has none yet), bench/wrk/mixed.lua.
    Scenario("mixed", "POST /v1/transactions 70 % transfers, 10 % holds, 10 % captures, "
             "5 % voids, 5 % reversals, 202", "mixed.lua", 64, 30,
             thread_per_connection=True, final=MIXED_FINAL),
    Scenario("hot", "as async, half the requests touch one of 2 hot accounts", "transfers.lua",
             64, 30, lua_env={"BENCH_HOT_SHARE": "0.5"}),
    Scenario("bulk", "POST /v1/transactions/batch, 100 transfers per request", "batch.lua",
             8, 30, lua_env={"BENCH_BATCH_SIZE": "100"}, items_per_request=100),
    Scenario("hot-bulk", "as bulk, half of each batch between one of 2 hot accounts and a "
             "random one", "batch.lua", 8, 30,
             lua_env={"BENCH_BATCH_SIZE": "100", "BENCH_HOT_SHARE": "0.5"}, items_per_request=100),
    Scenario("sync", "POST /v1/transactions?wait=true, answer after execution", "transfers.lua",
             64, 20, lua_env={"BENCH_WAIT": "1"}),
    Scenario("single", "as async, server with KASSA_EXECUTOR=single (one commit per transaction)",
             "transfers.lua", 64, 30, server_env={"KASSA_EXECUTOR": "single"}),
)}


class LoadTool(Protocol):
    async def __call__(self, url: str, scenario: Scenario, connections: int,
                       duration_s: float, env: dict[str, str], /) -> LoadResult: ...


@dataclass
class RunOptions:
    duration_s: float
    connections: int | None
    drain_timeout_s: float
    tool_name: str
    tool: LoadTool
    date: str
    profile_dir: Path | None = None  # set: py-spy flame graphs of the workers during the load
    rate: float | None = None  # open loop: arrivals per second
    index_entries: bool = False  # read the table statistics (bench/indexes.py) around the window
    wal_stats: bool = False  # the window's WAL by record type (bench/walstats.py)


def load_env(scenario: Scenario) -> dict[str, str]:
    return {"BENCH_API_KEY": API_KEY, "BENCH_ACCOUNTS": str(seed.ACCOUNTS),
            "BENCH_ACCOUNT_PREFIX": seed.ACCOUNT_PREFIX, **scenario.lua_env}


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


def load_figures(scenario: Scenario, opts: RunOptions, conns: int,
                 load: LoadResult) -> dict[str, Any]:
    """What the load tool saw, for Kassa and naive alike."""
    return {
        "scenario": scenario.name, "description": scenario.description, "tool": opts.tool_name,
        "connections": conns, "duration_s": opts.duration_s, "load_s": round(load.duration_s, 2),
        "target_rate": opts.rate, "requests": load.requests, "accepted": load.items_ok,
        "accepted_per_s": rate(load.items_ok, load.duration_s),
        "latency_ms": load.latency_ms, "codes": load.codes, "socket_errors": load.errors,
        "dropped_iterations": load.dropped_iterations if opts.rate else None,
        "k6_thresholds": load.thresholds,
    }


async def run(server: Server, scenario: Scenario, opts: RunOptions) -> dict[str, Any]:
    conns = opts.connections or scenario.connections
    log_offset = server.log_path.stat().st_size
    # Other work on the machine (2 cores) moves every number: keep the load average with them.
    load_before = os.getloadavg()
    before = metrics.scrape(server.url)
    layout = server.layout()
    mixed = scenario.script == "mixed.lua"
    async with Sampler(server.dsn, scenario.final) as sampler:
        kinds_start = await sampler.kinds() if mixed else {}
        stats_start = await sampler.index_stats() if opts.index_entries else None
        start = await sampler.sample()
        lsn_start = await sampler.lsn()
        cpu_start = cpu.take(layout)
        sampler.start_periodic()
        spying = asyncio.create_task(profile.record(
            server, opts.profile_dir / f"{opts.date}-{scenario.name}", opts.duration_s)
        ) if opts.profile_dir else None
        async with WaitSampler(server.dsn) as waits:
            load = await opts.tool(server.url, scenario, conns, opts.duration_s,
                                   load_env(scenario))
        end = await sampler.sample()
        await sampler.stop_periodic()
        drained = await sampler.drain(opts.drain_timeout_s)
        # The same window as completed (to drained): work applied after the load is counted.
        cpu_end = cpu.take(layout)
        lsn_end = await sampler.lsn()
        kinds_end = await sampler.kinds() if mixed else {}
        samples = [vars(s) for s in sampler.samples]
        stats_end = await sampler.index_stats() if opts.index_entries else None
    flame_graphs = [str(p) for p in await spying] if spying else []
    found = await build_violations(server)
    result = {
        **load_figures(scenario, opts, conns, load),
        "metrics": metrics.summarize(before, metrics.scrape(server.url)),
        "invariants_ok": not found, "violations": found,
        "server_log_issues": log_issues(server.log_path, log_offset),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "flame_graphs": flame_graphs,
        "samples": samples,
        "waits": waits.summary(),
    }
    if scenario.journals:
        result.update(journal_figures(start, end, drained))
    if mixed:
        result["mix"] = mix_figures(load.mix, kinds_start, kinds_end,
                                    drained.done.t - start.t)
    # The ceiling completes nothing: its CPU is per answered request.
    completed = result["journals_final"] if scenario.journals else load.items_ok
    result.update(cost_figures(completed, cpu_start, cpu_end, lsn_start, lsn_end,
                               stats_start, stats_end))
    if opts.wal_stats and server.embedded_pg:
        result["wal"]["by_record"] = await asyncio.to_thread(
            walstats.by_record, server.data_dir / "pg", lsn_start, lsn_end, completed)
    result["failures"] = failures(result, scenario)
    result["warnings"] = warnings(result)
    return result


async def build_violations(server: Server) -> dict[str, Any]:
    """The invariants, checked by the build's own rules: this checkout's in-process; another
    build's (--kassa-bin) by its own `kassa verify`, whose checks fit its schema."""
    if server.kassa.absolute() == KASSA.absolute():
        return await violations(server.dsn)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASSA_")}
    done = await asyncio.to_thread(
        subprocess.run, [str(server.kassa), "verify"], capture_output=True, text=True,
        timeout=120, check=False, env={**env, "KASSA_DATABASE_URL": server.dsn})
    if done.returncode == 0:
        return {}
    return {"kassa verify": (done.stdout + done.stderr).strip().splitlines()[-20:]}


def cost_figures(completed: int, cpu_start: cpu.Snapshot, cpu_end: cpu.Snapshot,
                 lsn_start: str | None, lsn_end: str | None, stats_start: indexes.Snapshot | None,
                 stats_end: indexes.Snapshot | None) -> dict[str, Any]:
    """CPU, WAL and index entries per completed transfer over the window, for Kassa and the
    peers alike."""
    return {"cpu": cpu.per_transfer(cpu_start, cpu_end, completed),
            "wal": wal.per_transfer(lsn_start, lsn_end, completed),
            "index_entries": indexes.per_transfer(stats_start, stats_end, completed)}


def journal_figures(start: Sample, end: Sample, drained: Drained) -> dict[str, Any]:
    done = drained.done
    return {
        "completed_per_s": rate(end.final - start.final, end.t - start.t),
        "completed_overall_per_s": rate(done.final - start.final, done.t - start.t),
        "journals_created": done.total - start.total,
        "journals_final": done.final - start.final,
        "backlog_end": end.backlog,
        "backlog_after_drain": done.backlog,
        "unpublished_end": end.unpublished,
        "unpublished_after_drain": done.unpublished,
        "drain_s": round(drained.journals.t - end.t, 2) if end.backlog else 0.0,
        "outbox_drain_s": (round(done.t - end.t, 2)
                           if end.backlog or end.unpublished else 0.0),
    }


def mix_figures(answers: dict[str, int], kinds_start: dict[str, int],
                kinds_end: dict[str, int], window_s: float) -> dict[str, Any]:
    """The mixed scenario by request kind: requests sent (and the captures, voids and
    reversals sent as transfers instead), answers by status, and the journals of that kind
    written in the window by final status (a hold counts as done when `held`, or since
    captured (`completed`) or voided; a void when `voided`; the others when `completed`)."""
    journals = {k: n - kinds_start.get(k, 0) for k, n in kinds_end.items()
                if n - kinds_start.get(k, 0)}
    out: dict[str, Any] = {"by_kind": {}, "fallbacks": {}, "window_s": round(window_s, 2)}
    sent_total = sum(n for k, n in answers.items() if ":" in k)
    for kind in KINDS:
        codes = {k.split(":", 1)[1]: n for k, n in answers.items()
                 if k.startswith(kind + ":")}
        jkind = JOURNAL_KIND[kind]
        statuses = {k.split(":", 1)[1]: n for k, n in journals.items()
                    if k.split(":", 1)[0] == jkind}
        done = sum(n for st, n in statuses.items() if st in MIXED_FINAL)
        sent = sum(codes.values())
        out["by_kind"][kind] = {
            "answered": sent, "share": round(sent / sent_total, 4) if sent_total else None,
            "codes": codes, "journals": statuses, "completed": done,
            "completed_per_s": rate(done, window_s),
            "conflicts_409": codes.get("409", 0)}
        if kind + ">transfer" in answers:
            out["fallbacks"][kind] = answers[kind + ">transfer"]
    out["completed"] = sum(k["completed"] for k in out["by_kind"].values())
    out["failed"] = sum(n for k, n in journals.items() if k.endswith(":failed"))
    out["conflicts_409"] = sum(k["conflicts_409"] for k in out["by_kind"].values())
    return out


def failures(result: dict[str, Any], scenario: Scenario) -> list[str]:
    out = [f"invariant broken: {name}: {rows}" for name, rows in result["violations"].items()]
    if scenario.journals:
        if result["backlog_after_drain"]:
            out.append(f"{result['backlog_after_drain']} accepted journals still processing "
                       f"after the drain timeout: a 202 did not reach a final status")
        if result["unpublished_after_drain"]:
            out.append(f"{result['unpublished_after_drain']} finished journals' events still "
                       "unpublished after the drain timeout")
        if result["accepted"] > result["journals_created"]:
            out.append(f"{result['accepted']} accepted but only {result['journals_created']} "
                       "journals written: an answer was given before the request was durable")
    defects = {c: n for c, n in result["codes"].items() if c.startswith("5") and c != "503"}
    if defects:
        out.append(f"5xx other than 503 (a defect per docs/api.md): {defects}")
    return out


def warnings(result: dict[str, Any]) -> list[str]:
    out = []
    errors = {k: v for k, v in result["socket_errors"].items() if v and k != "status"}
    if errors:
        out.append(f"load tool socket errors: {errors}")
    crossed = [rule for rule, passed in result["k6_thresholds"].items() if not passed]
    if crossed:
        out.append(f"k6 thresholds crossed: {crossed}")
    refused = {c: n for c, n in result["codes"].items() if c in ("503", "429")}
    if refused:
        out.append(f"refused requests: {refused}")
    if result["server_log_issues"]:
        out.append(f"server log: {len(result['server_log_issues'])} distinct WARNING/ERROR lines")
    return out


def log_issues(log_path: Path, offset: int, limit: int = 10) -> list[str]:
    """Distinct WARNING/ERROR/Traceback lines the server logged during the scenario."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    seen: dict[str, None] = {}
    for line in text.splitlines():
        if any(w in line for w in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")):
            # Drop the timestamp and pid so repeats of one message count once.
            seen.setdefault(line.split("] ", 1)[-1][:300], None)
    return list(seen)[:limit]

