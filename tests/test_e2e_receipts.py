"""The receipt service killed under load, through `kassa serve`: the workers' stocks of
codes carry the traffic for a while, then 503s come at once (never a hang), the service
coming back is picked up by itself, and every journal ends up registered with its final
status (registrations wait out the outage)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import asyncpg
import pytest

from tests.conftest import new_database
from tests.fixtures.kassa_server import KASSA, start_kassa
from tests.fixtures.servers import PostgresServer, RedisServer, free_port, wait_for_port
from tests.invariants import assert_invariants
from tests.load import SERVE_ENV, Reply, drive, open_accounts, random_transfers, wait_terminal

pytestmark = pytest.mark.slow

BLOCK = 100  # codes per block: a worker holds 50 to 150 codes once warmed up
WORKERS = 2


def receipt_service(dsn: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KASSA_DATABASE_URL": dsn, "KASSA_LOG_LEVEL": "warning"}
    process = subprocess.Popen([str(KASSA), "receipt-service", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return process


def accepted(replies: list[Reply | Exception]) -> list[str]:
    return [r.body["receipt_code"] for r in replies if isinstance(r, Reply) and r.status == 202]


async def unregistered(dsn: str) -> list[tuple[str, str, str | None]]:
    """Journals whose receipt the receipt service does not hold with the journal's status."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT j.external_ref, j.status, r.status AS registered FROM journals j"
            " LEFT JOIN receipts r ON r.code = j.external_ref"
            " WHERE r.status IS DISTINCT FROM j.status")
    finally:
        await conn.close()
    return [(r["external_ref"], r["status"], r["registered"]) for r in rows]


async def test_receipt_service_outage(pg_server: PostgresServer, redis_server: RedisServer) -> None:
    dsn = await new_database(pg_server)
    port = free_port()
    service = receipt_service(dsn, port)
    kassa = start_kassa({**SERVE_ENV, "KASSA_DATABASE_URL": dsn, "KASSA_REDIS_URL": redis_server.url,
                         "KASSA_RECEIPT_SERVICE_ADDR": f"127.0.0.1:{port}",
                         "KASSA_RECEIPT_BLOCK_SIZE": str(BLOCK),
                         "KASSA_RECEIPT_RETRY_MAX_MS": "300",
                         "KASSA_BREAKER_FAILURES_MAX": "3", "KASSA_BREAKER_RESET_S": "1"},
                        workers=WORKERS)
    try:
        ids = [f"s{i}" for i in range(20)]
        await open_accounts(kassa.url, ids, 100_000)
        before = await drive(kassa.url, random_transfers(ids, 200, 10), 20)
        assert all(isinstance(r, Reply) and r.status == 202 for r in before)
        await asyncio.sleep(0.5)  # the last refills land
        service.send_signal(signal.SIGKILL)
        service.wait()

        during = await drive(kassa.url, random_transfers(ids, 1000, 10, seed=8), 20)
        served = accepted(during)
        refused = [r for r in during if isinstance(r, Reply) and r.status == 503]
        assert len(served) + len(refused) == len(during), "a 202 or a clean 503, nothing else"
        assert BLOCK // 2 <= len(served) <= WORKERS * (BLOCK + BLOCK // 2), \
            "the stocks outlive the service, and they are bounded"
        assert all(r.body["error"]["code"] == "unavailable" and r.headers["Retry-After"]
                   for r in refused)
        assert max(r.elapsed_s for r in refused) < 3.0, "no request hangs past the 2 s timeout"
        fast = sorted(r.elapsed_s for r in refused)[len(refused) // 2]
        assert fast < 0.1, f"a dry stock fails fast (median {fast:.3f}s)"

        service = receipt_service(dsn, port)
        after: list[Reply | Exception] = []
        for _ in range(50):  # recovers by itself: the stocks are refilled in the background
            after = await drive(kassa.url, random_transfers(ids, 20, 10, seed=9), 5)
            if all(isinstance(r, Reply) and r.status == 202 for r in after):
                break
            await asyncio.sleep(0.2)
        assert all(isinstance(r, Reply) and r.status == 202 for r in after), after[:3]

        receipts = accepted(before) + served + accepted(after)
        assert len(set(receipts)) == len(receipts)
        await wait_terminal(kassa.url, receipts, 30)
        deadline = time.monotonic() + 30
        while missing := await unregistered(dsn):  # those of the outage were retried
            assert time.monotonic() < deadline, f"{len(missing)} receipts unregistered: {missing[:3]}"
            await asyncio.sleep(0.2)
        await assert_invariants(dsn)
    finally:
        kassa.stop()
        if service.poll() is None:
            service.terminate()
            service.wait()
