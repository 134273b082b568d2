"""The `naive` scenario: bench/naive_server.py under gunicorn, on the PostgreSQL, Redis and
broker of the `kassa serve` already running for this group (the same binaries and the same
instances Kassa uses in this run; Kassa's own processes stay idle meanwhile).

Where they listen: the DSN the harness already knows; Redis and the broker from the command
lines of serve's children (bench/procs.py), unless --redis-url or --set
KASSA_KAFKA_BOOTSTRAP_SERVERS pointed Kassa elsewhere. The prototype gets its own table,
Redis key and topic. Completed = 2xx answers; the window for completed/s and CPU runs from
the start of the load until the topic holds one record per 2xx answer (the prototype's
"drain": its Kafka sends are not awaited before the answer).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bench import cpu, indexes, procs, wal
from bench.naive_server import REDIS_KEY, SCHEMA, TABLE, TOPIC
from bench.scenarios import (
    RunOptions,
    Scenario,
    cost_figures,
    failures,
    load_env,
    load_figures,
    log_issues,
    rate,
    warnings,
)
from bench.stack import Server, StackConfig, free_port, stop_process
from bench.wrk import ROOT

READY_TIMEOUT_S = 30.0
POLL_S = 0.1


@dataclass(frozen=True)
class Backends:
    dsn: str
    redis_url: str
    kafka: str


def backends_of(server: Server, config: StackConfig) -> Backends:
    found = procs.embedded_addresses(server.process.pid)
    redis_url = config.redis_url or found.get("redis")
    kafka = config.extra_env.get("KASSA_KAFKA_BOOTSTRAP_SERVERS") or found.get("kafka")
    if not (redis_url and kafka):
        raise RuntimeError(f"kassa serve's Redis or broker not found among its children: {found}")
    return Backends(server.dsn, redis_url, kafka)


@dataclass
class Counts:
    rows: int
    counter: int
    published: int


class Probe:
    """The prototype's effects, counted: table rows, Redis counter, records in the topic."""

    def __init__(self, backends: Backends) -> None:
        self.b = backends
        self.conn: asyncpg.Connection | None = None
        self.redis = aioredis.Redis.from_url(backends.redis_url)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=backends.kafka)

    async def __aenter__(self) -> Probe:
        try:
            await self._prepare()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _prepare(self) -> None:
        self.conn = await asyncpg.connect(self.b.dsn)
        # Here, before the workers fork: two workers racing through CREATE TABLE IF NOT
        # EXISTS can fail with a UniqueViolationError.
        await self.conn.execute(SCHEMA)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.b.kafka)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()
        await self.consumer.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.redis.aclose()
        if self.conn is not None:
            await self.conn.close()

    async def published(self) -> int:
        tp = TopicPartition(TOPIC, 0)
        return int((await self.consumer.end_offsets([tp]))[tp])

    async def counts(self) -> Counts:
        assert self.conn is not None
        rows = await self.conn.fetchval(f"SELECT count(*) FROM {TABLE}")
        return Counts(rows, int(await self.redis.get(REDIS_KEY) or 0), await self.published())

    async def lsn(self) -> str | None:
        assert self.conn is not None
        return await wal.current_lsn(self.conn)

    async def wait_published(self, target: int, timeout_s: float) -> float:
        """Seconds until the topic holds `target` records (or the timeout)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if await self.published() >= target:
                break
            await asyncio.sleep(POLL_S)
        return time.monotonic() - started


@dataclass
class NaiveServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int | None:
        return stop_process(self.process)


def start(backends: Backends, workers: int, log_path: Path) -> NaiveServer:
    return start_gunicorn("bench.naive_server", "NaiveWorker", workers, log_path, {
        "NAIVE_DATABASE_URL": backends.dsn, "NAIVE_REDIS_URL": backends.redis_url,
        "NAIVE_KAFKA_BOOTSTRAP": backends.kafka})


def start_gunicorn(module: str, worker: str, workers: int, log_path: Path,
                   env: dict[str, str]) -> NaiveServer:
    """`module:app` under gunicorn with `workers` `module.worker` workers on a free port of
    127.0.0.1, once its /healthz answers 200 (the naive prototype, the function ledger)."""
    port = free_port()
    # As Kassa's gunicorn_options: the same backlog and keep-alive, no control socket.
    # -c: not Kassa's ./gunicorn.conf.py, which gunicorn would read from the cwd otherwise.
    argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "bench" / "naive_gunicorn.conf.py"),
            "--workers", str(workers),
            "--worker-class", f"{module}.{worker}", "--bind", f"127.0.0.1:{port}",
            "--backlog", "2048", "--keep-alive", "30", "--log-level", "warning",
            "--no-control-socket", f"{module}:app"]
    with open(log_path, "ab") as log_file:  # the child keeps its own descriptor
        process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    server = NaiveServer(process, port, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{module} exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise TimeoutError(f"{module} not ready after {READY_TIMEOUT_S}s; see {log_path}")


async def run(kassa: Server, config: StackConfig, scenario: Scenario,
              opts: RunOptions) -> dict[str, Any]:
    conns = opts.connections or scenario.connections
    backends = backends_of(kassa, config)
    log_path = kassa.data_dir / "naive.log"
    async with Probe(backends) as probe:
        naive = await asyncio.to_thread(start, backends, config.workers, log_path)
        try:
            layout = procs.Layout(naive.process.pid, kassa.process.pid, kassa.layout().postmaster,
                                  services=("redis", "broker"))
            assert probe.conn is not None
            stats_start = await indexes.snapshot(probe.conn) if opts.index_entries else None
            load_before = os.getloadavg()
            before = await probe.counts()
            lsn_start = await probe.lsn()
            cpu_start, idle_start = cpu.take(layout), cpu.take(kassa.layout())
            load = await opts.tool(naive.url, scenario, conns, opts.duration_s,
                                   load_env(scenario))
            drain_s = await probe.wait_published(before.published + load.items_ok,
                                                 opts.drain_timeout_s)
            cpu_end, idle_end = cpu.take(layout), cpu.take(kassa.layout())
            lsn_end = await probe.lsn()
            after = await probe.counts()
            stats_end = await indexes.snapshot(probe.conn) if opts.index_entries else None
        finally:
            code = await asyncio.to_thread(naive.stop)
    result = {
        **load_figures(scenario, opts, conns, load),
        "completed_per_s": rate(load.items_ok, load.duration_s),
        "completed_overall_per_s": rate(load.items_ok, cpu_end.t - cpu_start.t),
        "publish_drain_s": round(drain_s, 2),
        "effects": {"rows": after.rows - before.rows, "redis_incr": after.counter - before.counter,
                    "kafka_records": after.published - before.published},
        "backends": vars(backends), "naive_exit_code": code,
        "server_log_issues": log_issues(log_path, 0),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "invariants_ok": True, "violations": {},
        **cost_figures(load.items_ok, cpu_start, cpu_end, lsn_start, lsn_end, stats_start, stats_end),
        # Kassa's own processes, idle beside the prototype: what they took from it.
        "kassa_idle_cpu_s": cpu.idle_kassa(idle_start, idle_end),
    }
    result["failures"] = failures(result, scenario) + effect_failures(result)
    result["warnings"] = warnings(result)
    return result


def effect_failures(result: dict[str, Any]) -> list[str]:
    """Every 2xx answer must have left its row, its increment and its Kafka record. More
    than 2xx is possible (a request the load tool gave up on still ran); fewer is a bug."""
    ok = result["accepted"]
    return [f"naive: {n} {what} for {ok} 2xx answers" for what, n in result["effects"].items()
            if n < ok]
