"""Start and stop `kassa serve` for a benchmark run: the tests' launcher
(tests/fixtures/kassa_server.py) with the benchmark's configuration and accounting.

`StackConfig.kassa` may be another checkout's venv `kassa` script (`--kassa-bin`): it then
runs from that checkout, because its gRPC services start with `python -m server.process.cli` and
`-m` puts the working directory first on sys.path.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs
from server.process.embedded import free_port
from tests.fixtures.kassa_server import (
    KASSA,
    STOP_TIMEOUT_S,
    KassaProcess,
    start_kassa,
    stop_process,
)

__all__ = ["API_KEY", "KASSA", "Server", "StackConfig", "checkout_of", "free_port", "start",
           "stop_process"]

API_KEY = "bench-admin"
READY_TIMEOUT_S = 60.0


@dataclass
class StackConfig:
    workers: int = 2
    database_url: str | None = None
    redis_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    kassa: Path = KASSA


@dataclass
class Server(KassaProcess):
    """A running `kassa serve`, with the database the benchmark seeds and reads."""

    dsn: str = ""
    embedded_pg: bool = True
    kassa: Path = KASSA  # the build's console script: its own `kassa verify` checks it

    def stop(self, sig: int = signal.SIGTERM,  # type: ignore[override]
             timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """As KassaProcess.stop, but a server that had to be killed gives None instead of
        an error: the benchmark reports its exit code and goes on."""
        return stop_process(self.process, sig, timeout_s)

    def layout(self) -> procs.Layout:
        """Its processes for the CPU accounting: it is the gunicorn master and the parent
        of the embedded services; the postmaster only when PostgreSQL is embedded."""
        pg = procs.postmaster_pid(self.data_dir / "pg") if self.embedded_pg else None
        return procs.Layout(self.process.pid, self.process.pid, pg)

    def discard(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)


def server_env(config: StackConfig) -> dict[str, str]:
    """The benchmark's KASSA_* settings (the launcher drops any from the caller's shell, so
    they cannot change the numbers)."""
    env = {"KASSA_API_KEYS": f"{API_KEY}:admin"}
    if config.database_url:
        env["KASSA_DATABASE_URL"] = config.database_url
    if config.redis_url:
        env["KASSA_REDIS_URL"] = config.redis_url
    env.update(config.extra_env)
    return env


def checkout_of(kassa: Path) -> Path | None:
    """<checkout>/.venv/bin/kassa -> <checkout>, if that holds the server package."""
    root = kassa.absolute().parent.parent.parent
    return root if (root / "server").is_dir() else None


def start(config: StackConfig) -> Server:
    # Under /tmp: pgserver makes every parent of its data dir world-readable.
    data_dir = Path(tempfile.mkdtemp(prefix="kassa-bench-", dir="/tmp"))
    kassa = start_kassa(server_env(config), workers=config.workers, data_dir=data_dir,
                        timeout_s=READY_TIMEOUT_S, kassa=config.kassa,
                        cwd=checkout_of(config.kassa) or data_dir)
    dsn = config.database_url or f"postgresql://postgres:@/postgres?host={data_dir}/pg"
    return Server(kassa.process, kassa.port, kassa.data_dir, kassa.log_path, dsn,
                  embedded_pg=not config.database_url, kassa=config.kassa)
