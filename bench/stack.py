"""Start and stop `kassa serve` the README way, as a child we own and stop by PID.

`StackConfig.kassa` may be another checkout's venv `kassa` script (`--kassa-bin`): it then
runs from that checkout, because its gRPC services start with `python -m server.process.cli` and
`-m` puts the working directory first on sys.path.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import procs

KASSA = Path(sys.executable).parent / "kassa"
API_KEY = "bench-admin"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


@dataclass
class StackConfig:
    workers: int = 2
    database_url: str | None = None
    redis_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    kassa: Path = KASSA


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    dsn: str
    embedded_pg: bool = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "serve.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> int | None:
        return stop_process(self.process)

    def layout(self) -> procs.Layout:
        """Its processes for the CPU accounting: it is the gunicorn master and the parent
        of the embedded services; the postmaster only when PostgreSQL is embedded."""
        pg = procs.postmaster_pid(self.data_dir / "pg") if self.embedded_pg else None
        return procs.Layout(self.process.pid, self.process.pid, pg)

    def discard(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)


def stop_process(process: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then wait; SIGKILL only our own process if it ignores us (then None)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(config: StackConfig) -> dict[str, str]:
    # Our own KASSA_* only: a stray variable in the caller's shell must not change the numbers.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASSA_")}
    env.update({"KASSA_API_KEYS": f"{API_KEY}:admin", "KASSA_LOG_LEVEL": "warning"})
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
    port = free_port()
    dsn = config.database_url or f"postgresql://postgres:@/postgres?host={data_dir}/pg"
    with open(data_dir / "serve.log", "ab") as log_file:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [str(config.kassa), "serve", "--workers", str(config.workers), "--port", str(port),
             "--data-dir", str(data_dir)],
            stdout=log_file, stderr=subprocess.STDOUT, env=server_env(config),
            cwd=checkout_of(config.kassa) or data_dir,
        )
    server = Server(process, port, data_dir, dsn, embedded_pg=not config.database_url)
    try:
        wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"kassa serve exited with {server.process.returncode}:\n"
                               f"{server.log_tail()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"kassa serve not ready after {READY_TIMEOUT_S}s:\n{server.log_tail()}")
