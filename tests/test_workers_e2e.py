"""`kassa serve` without --workers takes its worker count from the CPUs it may use: under
`taskset -c 0`, one worker, and the start log says so (server/process/cpus.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.process.embedded import free_port
from tests.conftest import new_database
from tests.fixtures.kassa_server import KASSA, KassaProcess, serve_env, stop_process, wait_healthy
from tests.fixtures.servers import PostgresServer, RedisServer
from tests.load import SERVE_ENV

pytestmark = pytest.mark.slow


def start_pinned(env: dict[str, str], data_dir: Path, cpus: str = "0") -> KassaProcess:
    """`taskset -c <cpus> kassa serve` with no --workers, started as start_kassa starts it
    (which always passes --workers and runs the console script itself)."""
    port = free_port()
    log_path = data_dir / "serve.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            ["taskset", "-c", cpus, str(KASSA), "serve", "--port", str(port),
             "--data-dir", str(data_dir)],
            stdout=log_file, stderr=subprocess.STDOUT,
            env=serve_env({**env, "KASSA_LOG_LEVEL": "info"}))
    server = KassaProcess(process, port, data_dir, log_path)
    try:
        wait_healthy(server, 60)
    except BaseException:
        stop_process(process)
        raise
    return server


@pytest.fixture
def pinned(pg_server: PostgresServer, redis_server: RedisServer,
           tmp_path: Path) -> Iterator[KassaProcess]:
    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is not installed")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU already: taskset -c 0 would not narrow anything")
    dsn = asyncio.run(new_database(pg_server))
    kassa = start_pinned({**SERVE_ENV, "KASSA_DATABASE_URL": dsn,
                          "KASSA_REDIS_URL": redis_server.url}, tmp_path)
    yield kassa
    assert kassa.stop() == 0, kassa.log_tail(100)


def test_taskset_one_cpu_starts_one_worker(pinned: KassaProcess) -> None:
    assert len(pinned.worker_pids()) == 1, pinned.log_tail(100)
    log = pinned.log()
    assert f"workers: 1 (from affinity 1 of {os.cpu_count()} CPUs)" in log, log
    # 1 worker: its relay connection, plus the receipt (10) and notification (4) services
    # 14 for the services' pools, 1 relay, 1 webhook sender.
    assert "database pool: 10 per worker × 1 workers + 16 others ≤ budget 80" in log, log
    assert "Traceback" not in log


def test_a_budget_too_small_for_the_workers_refuses_to_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(KASSA), "serve", "--data-dir", str(tmp_path / "data")],
        env=serve_env({"KASSA_WORKERS": "8", "KASSA_DB_CONNECTIONS_MAX": "20"}),
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "KASSA_DB_CONNECTIONS_MAX=20" in lines[0] and "KASSA_WORKERS=8" in lines[0]
    assert not (tmp_path / "data").exists(), "refused before starting anything"
