"""`kassa serve` restarts the children it started, and /readyz says when this process cannot
accept writes (issue 18, D5).

Unit tests: the backoff, the supervisor's decisions with fake children and a fake clock, the
readiness rules with fakes. End to end: a real `kassa serve` whose receipt service and
embedded Redis are SIGKILLed (restarted on the same port, writes succeed again) and whose
receipt service is SIGSTOPped with a tiny code block (/readyz 503 with the reason, then 200
again after SIGCONT)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from core.kit.code_cipher import CodeCipher
from core.pipeline.health import CodeSupply, HealthCheck, code_state
from server.process.supervisor import Backoff, Supervisor
from tests.conftest import new_database
from tests.fakes.clocks import FakeClock, FakePing
from tests.fixtures.kassa_server import KassaProcess, start_kassa
from tests.fixtures.servers import PostgresServer
from tests.invariants import assert_invariants
from tests.load import SERVE_ENV, Reply, client, drive, open_accounts, status_counts

# ---- the backoff ------------------------------------------------------------------------


def test_backoff_doubles_to_the_cap_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(min_s=0.5, max_s=30.0, stable_s=60.0)
    delays = [backoff.delay(1.0) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff.delay(0.0) == 30.0  # a failed start is a quick death too
    assert backoff.delay(60.0) == 0.5  # it ran a stable period: from the minimum again
    assert backoff.delay(59.0) == 1.0


# ---- the supervisor, with fake children and a fake clock ------------------------------


class FakeChild:
    def __init__(self, name: str, *, fail_starts: int = 0) -> None:
        self.name = name
        self.alive = True
        self.fail_starts = fail_starts
        self.starts = 0
        self._pid = 1000

    def pid(self) -> int | None:
        return self._pid

    def exited(self) -> str | None:
        return None if self.alive else "was killed by SIGKILL"

    def restart(self) -> None:
        self.starts += 1
        if self.fail_starts:
            self.fail_starts -= 1
            raise RuntimeError("port still taken")
        self.alive = True
        self._pid += 1


def test_a_dead_child_is_restarted_after_the_backoff_and_only_it() -> None:
    clock, restarted = FakeClock(), []
    service, redis = FakeChild("receipt-service"), FakeChild("redis")
    supervisor = Supervisor([service, redis], backoff_min_s=0.5, backoff_max_s=30,
                            clock=clock, on_restart=restarted.append)
    supervisor.check()
    assert service.starts == redis.starts == 0
    service.alive = False
    clock.now += 1
    supervisor.check()  # noticed: restart due in 0.5 s
    assert service.starts == 0
    clock.now += 0.4
    supervisor.check()
    assert service.starts == 0
    clock.now += 0.1
    supervisor.check()
    assert (service.starts, service.alive, service.pid()) == (1, True, 1001)
    assert redis.starts == 0 and restarted == ["receipt-service"]
    assert supervisor.restarts == {"receipt-service": 1, "redis": 0}


def test_quick_deaths_and_failed_starts_back_off_and_a_stable_run_resets() -> None:
    clock = FakeClock()
    child = FakeChild("notification-service", fail_starts=2)
    supervisor = Supervisor([child], backoff_min_s=0.5, backoff_max_s=4, stable_s=60,
                            clock=clock)
    child.alive = False
    supervisor.check()
    clock.now += 0.5
    supervisor.check()  # first try fails: next in 1 s
    assert child.starts == 1 and not child.alive
    clock.now += 0.9
    supervisor.check()
    assert child.starts == 1
    clock.now += 0.1
    supervisor.check()  # second try fails: next in 2 s
    assert child.starts == 2
    clock.now += 2
    supervisor.check()
    assert child.starts == 3 and child.alive
    child.alive = False  # dies again at once: 4 s (the cap)
    clock.now += 1
    supervisor.check()
    clock.now += 3.9
    supervisor.check()
    assert child.starts == 3
    clock.now += 0.1
    supervisor.check()
    assert child.starts == 4 and child.alive
    clock.now += 60  # a stable run: back to 0.5 s
    child.alive = False
    supervisor.check()
    clock.now += 0.5
    supervisor.check()
    assert child.starts == 5 and child.alive


def test_no_restart_once_stopped() -> None:
    clock = FakeClock()
    child = FakeChild("kafka")
    supervisor = Supervisor([child], clock=clock)
    supervisor.start(poll_s=0.01)
    supervisor.stop()
    child.alive = False
    clock.now += 100
    supervisor.check()
    assert child.starts == 0


def test_the_thread_restarts_a_dead_child() -> None:
    child = FakeChild("redis")
    supervisor = Supervisor([child], backoff_min_s=0.01)
    supervisor.start(poll_s=0.01)
    try:
        child.alive = False
        deadline = time.monotonic() + 5
        while child.starts == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.starts == 1 and child.alive
    finally:
        supervisor.stop()


# ---- readiness rules, with fakes -------------------------------------------------------


def health(*, codes: CodeSupply | None = None, states: dict[str, str] | None = None,
           database: bool = True, redis: bool = True, room: bool = True) -> HealthCheck:
    return HealthCheck(database=FakePing(database), redis=FakePing(redis), has_room=lambda: room,
                       dependency_states=lambda: dict(states or {}), stopping=lambda: False,
                       receipt_codes=(lambda: codes) if codes is not None else None,
                       required=("receipt_service",) if codes is not None else ())


def test_code_states() -> None:
    assert code_state(CodeSupply(5, source_failing=True)) == "ok"
    assert code_state(CodeSupply(0, source_failing=False)) == "refilling"
    assert code_state(CodeSupply(0, source_failing=True)) == "exhausted"


async def test_readiness_needs_receipt_codes_or_a_reachable_receipt_service() -> None:
    closed = {"receipt_service": "closed", "notification_service": "closed"}
    ready = await health(codes=CodeSupply(10, False), states=closed).readiness()
    assert ready.ready and ready.reasons == () and ready.checks["receipt_codes"] == "ok"
    refilling = await health(codes=CodeSupply(0, False), states=closed).readiness()
    assert refilling.ready
    dry = await health(codes=CodeSupply(0, True), states=closed).readiness()
    assert not dry.ready and dry.checks["receipt_codes"] == "exhausted"
    assert dry.reasons[0].startswith("receipt_codes: exhausted")


async def test_readiness_fails_when_a_required_breaker_is_open_only() -> None:
    opened = await health(codes=CodeSupply(100, True),
                          states={"receipt_service": "open"}).readiness()
    assert not opened.ready and opened.checks["receipt_service"] == "open"
    assert any(r.startswith("receipt_service: open") for r in opened.reasons)
    others = await health(codes=CodeSupply(100, False),
                          states={"receipt_service": "half_open", "receipt_service_reads": "open",
                                  "notification_service": "open", "redis_breaker": "open"},
                          redis=False).readiness()
    assert others.ready, others.reasons
    assert others.checks["redis"] == "down"


def test_the_runtime_reports_the_receipt_clients_codes_and_breaker() -> None:
    """The composition root's view of a ReceiptClient for /readyz: its stock, and failing
    as soon as a call failed (before the breaker opens) or while the breaker is not closed."""
    from types import SimpleNamespace

    from server.adapters.grpc.clients import ReceiptClient
    from server.process.runtime import Runtime

    receipts = ReceiptClient("127.0.0.1:1", cipher=CodeCipher(b"supervision secret"),
                             breaker_failures_max=2, breaker_reset_ms=60_000)
    runtime: Any = SimpleNamespace(receipts=receipts)
    assert Runtime.receipt_codes(runtime) == CodeSupply(0, source_failing=False)
    receipts.breaker.record_failure()
    assert Runtime.receipt_codes(runtime) == CodeSupply(0, source_failing=True)
    receipts.breaker.record_failure()  # open
    assert receipts.breaker.state == "open"
    assert Runtime.receipt_codes(runtime).source_failing


async def test_readiness_reasons_for_database_and_pool() -> None:
    down = await health(database=False, room=False).readiness()
    assert not down.ready
    assert [r.split(":")[0] for r in down.reasons] == ["postgres", "worker_pool"]
    assert down.checks["postgres"] == "down" and down.checks["worker_pool"] == "full"


# ---- end to end: a real kassa serve -----------------------------------------------------

# A tiny code block runs out after a few writes; short receipt timeouts and breaker make
# an unreachable receipt service visible within a second or two.
SUPERVISED_ENV = {
    **SERVE_ENV, "KASSA_RECEIPT_BLOCK_SIZE": "20", "KASSA_RECEIPT_TIMEOUT_MS": "300",
    "KASSA_RECEIPT_RETRY_MAX_MS": "200", "KASSA_BREAKER_FAILURES_MAX": "2",
    "KASSA_BREAKER_RESET_S": "1", "KASSA_RESTART_BACKOFF_MIN_MS": "200",
}


def children(kassa: KassaProcess) -> dict[int, bytes]:
    """The master's children (of any of its threads) → their command lines."""
    found: dict[int, bytes] = {}
    for task in Path(f"/proc/{kassa.pid}/task").iterdir():
        try:
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in map(int, pids):
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                pass
    return found


def child_pid(kassa: KassaProcess, marker: bytes) -> int | None:
    pids = [pid for pid, cmdline in children(kassa).items() if marker in cmdline]
    return pids[0] if pids else None


def wait_restarted(kassa: KassaProcess, marker: bytes, old_pid: int, timeout_s: float) -> int:
    """The new pid once the supervisor logged the restart (the child then serves)."""
    name = {b"redis-server": "redis", b"tansu": "kafka"}.get(marker, marker.decode())
    before = kassa.log().count(f"[SUPERVISOR] restarted {name}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = child_pid(kassa, marker)
        if (pid is not None and pid != old_pid
                and kassa.log().count(f"[SUPERVISOR] restarted {name}") > before):
            return pid
        time.sleep(0.05)
    raise AssertionError(f"{marker!r} not restarted within {timeout_s}s:\n{kassa.log_tail(60)}")


def wait_ready(kassa: KassaProcess, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        r = httpx.get(kassa.url + "/readyz", timeout=2)
        body = r.json()
        if r.status_code == 200:
            return body
        time.sleep(0.1)
    raise AssertionError(f"not ready within {timeout_s}s: {body}")


def deposits(n: int, account: str) -> list[tuple[str, str, object]]:
    return [("POST", "/v1/transactions", {"type": "deposit", "currency": "USD",
                                          "destination": account, "amount": 1})
            for _ in range(n)]


async def keyed_deposits(url: str, n: int, account: str, concurrency: int = 10) -> dict[str, int]:
    """`n` deposits, each with an Idempotency-Key of its own: status → count."""
    counts: dict[str, int] = {}
    keys = iter(range(n))
    body = {"type": "deposit", "currency": "USD", "destination": account, "amount": 1}

    async def one(http: aiohttp.ClientSession) -> None:
        for _ in keys:
            headers = {"Idempotency-Key": uuid.uuid4().hex}
            async with http.post("/v1/transactions", json=body, headers=headers) as r:
                await r.read()
                counts[str(r.status)] = counts.get(str(r.status), 0) + 1

    async with client(url, concurrency) as http:
        await asyncio.gather(*(one(http) for _ in range(concurrency)))
    return counts


@pytest.fixture(scope="module")
def supervised(pg_server: PostgresServer) -> Iterator[tuple[KassaProcess, str]]:
    """One worker (so /readyz always describes the process under test), the embedded
    Redis and broker, the receipt and notification services as children."""
    dsn = asyncio.run(new_database(pg_server))
    kassa = start_kassa({**SUPERVISED_ENV, "KASSA_DATABASE_URL": dsn}, workers=1, timeout_s=60)
    try:
        asyncio.run(open_accounts(kassa.url, ["sup"], 0))
        yield kassa, dsn
    finally:
        for pid in children(kassa):  # a test that failed mid-way may leave one stopped
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert kassa.stop() == 0, kassa.log_tail(100)


@pytest.mark.slow
def test_a_sigkilled_receipt_service_is_restarted_and_writes_succeed_again(supervised) -> None:  # type: ignore[no-untyped-def]
    kassa, dsn = supervised
    old = child_pid(kassa, b"receipt-service")
    assert old is not None, children(kassa)
    os.kill(old, signal.SIGKILL)
    killed_at = time.monotonic()
    new = wait_restarted(kassa, b"receipt-service", old, timeout_s=10)
    assert time.monotonic() - killed_at < 5
    wait_ready(kassa, 15)
    # Far more than the 20-code block: without a live service these would be 503s.
    replies = asyncio.run(drive(kassa.url, deposits(300, "sup"), concurrency=10))
    assert status_counts(replies) == {"202": 300}, status_counts(replies)
    assert child_pid(kassa, b"receipt-service") == new
    assert "[SUPERVISOR] restarted receipt-service" in kassa.log()
    asyncio.run(assert_invariants(dsn))


@pytest.mark.slow
def test_readyz_is_503_with_the_reason_while_receipt_codes_are_gone(supervised) -> None:  # type: ignore[no-untyped-def]
    kassa, dsn = supervised
    wait_ready(kassa, 15)
    pid = child_pid(kassa, b"receipt-service")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # alive but unreachable: not restarted, calls time out
    try:
        # The codes in hand (a block of 20) are used up; then writes are refused.
        seen = asyncio.run(drive(kassa.url, deposits(100, "sup"), concurrency=5))
        assert status_counts(seen).get("503", 0) > 0, status_counts(seen)
        ready = httpx.get(kassa.url + "/readyz", timeout=5)
        body = ready.json()
        assert ready.status_code == 503, (body, status_counts(seen))
        assert body["status"] == "not_ready"
        assert body["receipt_codes"] == "exhausted", body
        assert any(r.startswith("receipt_codes: exhausted") for r in body["reasons"]), body
        assert body["postgres"] == "ok" and body["worker_pool"] == "ok"
        # What /readyz says is what writes get: refused, nothing accepted.
        refused = asyncio.run(drive(kassa.url, deposits(5, "sup"), concurrency=5))
        assert all(isinstance(r, Reply) and r.status == 503 for r in refused), \
            status_counts(refused)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_ready(kassa, 15)
    # Writes are accepted from the first 200 of /readyz: it waits, as take() does, for a
    # reservation that succeeded since the stall (tests/test_readiness_receipts.py).
    first = asyncio.run(drive(kassa.url, deposits(5, "sup"), concurrency=5))
    assert status_counts(first) == {"202": 5}, status_counts(first)
    replies = asyncio.run(drive(kassa.url, deposits(100, "sup"), concurrency=10))
    assert status_counts(replies) == {"202": 100}, status_counts(replies)
    asyncio.run(assert_invariants(dsn))


@pytest.mark.slow
def test_a_sigkilled_embedded_redis_is_restarted_on_its_port(supervised) -> None:  # type: ignore[no-untyped-def]
    kassa, dsn = supervised
    old = child_pid(kassa, b"redis-server")
    assert old is not None, children(kassa)
    address = children(kassa)[old]  # redis-server shows "redis-server 127.0.0.1:<port>"
    assert b"127.0.0.1:" in address, address
    os.kill(old, signal.SIGKILL)
    new = wait_restarted(kassa, b"redis-server", old, timeout_s=10)
    assert children(kassa)[new] == address  # the same port: the workers reconnect
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        body = wait_ready(kassa, 15)
        if body["redis"] == "ok":
            break
        time.sleep(0.2)
    assert body["redis"] == "ok", body
    assert asyncio.run(keyed_deposits(kassa.url, 100, "sup")) == {"202": 100}
    asyncio.run(assert_invariants(dsn))


@pytest.mark.slow
def test_the_embedded_postgres_and_broker_are_restarted() -> None:
    """Everything embedded: a SIGKILLed postmaster is started again on the same socket by
    pgserver, the broker on its port; writes succeed after each."""
    kassa = start_kassa({**SUPERVISED_ENV, "KASSA_RECEIPT_BLOCK_SIZE": "8192"}, workers=1,
                        timeout_s=90)
    try:
        asyncio.run(open_accounts(kassa.url, ["pg"], 0))
        pid_file = kassa.data_dir / "pg" / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "[SUPERVISOR] restarted postgres" not in kassa.log():
            assert time.monotonic() < deadline, kassa.log_tail(60)
            time.sleep(0.1)
        assert int(pid_file.read_text().split()[0]) != postmaster
        wait_ready(kassa, 30)
        replies = asyncio.run(drive(kassa.url, deposits(100, "pg"), concurrency=10))
        assert status_counts(replies) == {"202": 100}, status_counts(replies)
        broker = child_pid(kassa, b"tansu")
        assert broker is not None, children(kassa)
        os.kill(broker, signal.SIGKILL)
        wait_restarted(kassa, b"tansu", broker, timeout_s=15)
        assert child_pid(kassa, b"tansu") not in (None, broker)
        replies = asyncio.run(drive(kassa.url, deposits(100, "pg"), concurrency=10))
        assert status_counts(replies) == {"202": 100}, status_counts(replies)
        from server.process.embedded import running_postgres_dsn

        asyncio.run(assert_invariants(running_postgres_dsn(kassa.data_dir)))
    finally:
        assert kassa.stop() == 0, kassa.log_tail(100)


# ---- the measurement of issue 18 (D5), not a test ---------------------------------------


async def load_and_probe(url: str, seconds: float, concurrency: int
                         ) -> tuple[dict[int, int], dict[int, int]]:
    """Unkeyed deposits for `seconds`, and /readyz every 0.1 s: (write statuses, readyz
    statuses), each status → count."""
    deadline = time.perf_counter() + seconds
    writes: dict[int, int] = {}
    probes: dict[int, int] = {}
    body = {"type": "deposit", "currency": "USD", "destination": "sup", "amount": 1}

    async def one(http: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            async with http.post("/v1/transactions", json=body) as r:
                await r.read()
            writes[r.status] = writes.get(r.status, 0) + 1

    async def probe(http: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            async with http.get("/readyz") as r:
                await r.read()
            probes[r.status] = probes.get(r.status, 0) + 1
            await asyncio.sleep(0.1)

    async with client(url, concurrency + 1) as http:
        await asyncio.gather(probe(http), *(one(http) for _ in range(concurrency)))
    return writes, probes


def measure(kassa_bin: str, seconds: float, concurrency: int, block_size: int,
            env: dict[str, str]) -> None:
    """Writes and /readyz before and after SIGKILLing both gRPC services (a small code
    block makes the codes in hand run out within the run)."""
    from tests.fixtures.servers import start_postgres

    pg = start_postgres()
    try:
        dsn = pg.dsn()
        asyncio.run(_migrated(dsn))
        kassa = start_kassa({**SERVE_ENV, "KASSA_DATABASE_URL": dsn,
                             "KASSA_RECEIPT_BLOCK_SIZE": str(block_size), **env},
                            workers=1, timeout_s=60, kassa=Path(kassa_bin))
        try:
            asyncio.run(open_accounts(kassa.url, ["sup"], 0))
            for phase in ("normal", "services SIGKILLed"):
                if phase != "normal":
                    for marker in (b"receipt-service", b"notification-service"):
                        pid = child_pid(kassa, marker)
                        assert pid is not None
                        os.kill(pid, signal.SIGKILL)
                writes, probes = asyncio.run(load_and_probe(kassa.url, seconds, concurrency))
                total = sum(writes.values())
                print(f"{phase:20} writes {total / seconds:6.0f}/s {writes}  "
                      f"503: {writes.get(503, 0) / total:.0%}  /readyz {probes}", flush=True)
            alive = {m.decode(): child_pid(kassa, m) is not None
                     for m in (b"receipt-service", b"notification-service")}
            print(f"services running at the end: {alive}")
        finally:
            kassa.stop()
    finally:
        pg.stop()


async def _migrated(dsn: str) -> None:
    from server.adapters.postgres.migrate import apply_migrations

    await apply_migrations(dsn)


if __name__ == "__main__":
    import argparse

    from tests.fixtures.kassa_server import KASSA

    parser = argparse.ArgumentParser(description="writes and /readyz when the services die")
    parser.add_argument("--kassa", default=str(KASSA), help="console script to measure")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--block-size", type=int, default=500)
    parser.add_argument("--env", action="append", default=[], metavar="KASSA_X=value",
                        help="another setting for the server (repeatable)")
    options = parser.parse_args()
    measure(options.kassa, options.seconds, options.concurrency, options.block_size,
            dict(item.split("=", 1) for item in options.env))
