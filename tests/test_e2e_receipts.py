"""The receipt service killed under load, through `kassa serve`: 503s bounded by the
timeout and the breaker, recovery on its own, and no 202 without a persisted receipt."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import asyncpg
import pytest

from tests.conftest import new_database
from tests.fixtures.kassa_server import KASSA, start_kassa
from tests.fixtures.servers import PostgresServer, RedisServer, free_port, wait_for_port
from tests.invariants import assert_invariants
from tests.load import SERVE_ENV, Reply, drive, open_accounts, random_transfers, wait_terminal

pytestmark = pytest.mark.slow


def receipt_service(dsn: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KASSA_DATABASE_URL": dsn, "KASSA_LOG_LEVEL": "warning"}
    process = subprocess.Popen([str(KASSA), "receipt-service", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return process


async def test_receipt_service_outage(pg_server: PostgresServer, redis_server: RedisServer) -> None:
    dsn = await new_database(pg_server)
    port = free_port()
    service = receipt_service(dsn, port)
    kassa = start_kassa({**SERVE_ENV, "KASSA_DATABASE_URL": dsn, "KASSA_REDIS_URL": redis_server.url,
                         "KASSA_RECEIPT_SERVICE_ADDR": f"127.0.0.1:{port}",
                         "KASSA_BREAKER_FAILURES_MAX": "3", "KASSA_BREAKER_RESET_S": "1"})
    try:
        ids = [f"s{i}" for i in range(20)]
        await open_accounts(kassa.url, ids, 100_000)
        before = await drive(kassa.url, random_transfers(ids, 200, 10), 20)
        assert all(isinstance(r, Reply) and r.status == 202 for r in before)
        service.send_signal(signal.SIGKILL)
        service.wait()
        during = await drive(kassa.url, random_transfers(ids, 300, 10, seed=8), 20)
        refused = [r for r in during if isinstance(r, Reply) and r.status == 503]
        assert len(refused) == len(during), "no 202 without the receipt service"
        assert all(r.body["error"]["code"] == "unavailable" and r.headers["Retry-After"] for r in refused)
        assert max(r.elapsed_s for r in refused) < 3.0, "no request hangs past the 2 s timeout"
        fast = sorted(r.elapsed_s for r in refused)[len(refused) // 2]
        assert fast < 0.1, f"an open breaker fails fast (median {fast:.3f}s)"
        service = receipt_service(dsn, port)
        after: list[Reply | Exception] = []
        for _ in range(50):  # recovers by itself: half-open trial calls close the breaker
            after = await drive(kassa.url, random_transfers(ids, 20, 10, seed=9), 5)
            if all(isinstance(r, Reply) and r.status == 202 for r in after):
                break
            await asyncio.sleep(0.2)
        assert all(isinstance(r, Reply) and r.status == 202 for r in after), after[:3]
        receipts = [r.body["receipt_code"] for r in before + after if isinstance(r, Reply)]
        await wait_terminal(kassa.url, receipts, 30)
        conn = await asyncpg.connect(dsn)
        try:
            stored = await conn.fetchval("SELECT count(*) FROM receipts WHERE code = ANY($1)", receipts)
            journals = await conn.fetchval("SELECT count(*) FROM journals")
            all_receipts = await conn.fetchval(
                "SELECT count(*) FROM journals j JOIN receipts r ON r.code = j.external_ref")
        finally:
            await conn.close()
        assert stored == len(receipts), "every 202 has its receipt persisted"
        assert all_receipts == journals, "no journal without a persisted receipt"
        await assert_invariants(dsn)
    finally:
        kassa.stop()
        if service.poll() is None:
            service.terminate()
            service.wait()

