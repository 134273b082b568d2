"""Issue 18, D1 (point 3): a worker that cannot start because PostgreSQL is down retries
with backoff; gunicorn's master does not halt the server (it does on a worker exiting with
WORKER_BOOT_ERROR, 3, which is how uvicorn's worker ends a failed startup). When the
database is back, the server serves again without a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.kassa_server import start_kassa
from tests.fixtures.servers import PostgresServer, RedisServer, running_postgres
from tests.load import SERVE_ENV

pytestmark = pytest.mark.slow


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A cluster of this test's own, stopped and started again by it."""
    with running_postgres() as server:
        yield server


async def test_a_worker_booting_while_the_database_is_down_waits_for_it(
        own_postgres: PostgresServer, redis_server: RedisServer, kafka_broker: KafkaBroker) -> None:
    from server.adapters.postgres.migrate import apply_migrations

    pg = own_postgres
    await apply_migrations(pg.dsn())
    kassa = await asyncio.to_thread(start_kassa, {
        **SERVE_ENV, "KASSA_DATABASE_URL": pg.dsn(), "KASSA_REDIS_URL": redis_server.url,
        "KASSA_KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap, "KASSA_LOG_LEVEL": "warning"})
    try:
        workers = kassa.worker_pids()
        assert len(workers) == 2
        await asyncio.to_thread(pg.pg_ctl, "-m", "fast", "stop")
        os.kill(workers[0], signal.SIGKILL)  # its replacement boots with the database down
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and "startup failed" not in kassa.log():
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # a few more attempts
        assert kassa.process.poll() is None, f"kassa serve exited:\n{kassa.log_tail(60)}"
        log = kassa.log()
        assert "a dependency is unavailable" in log, kassa.log_tail(60)
        assert "Worker failed to boot" not in log, kassa.log_tail(60)
        assert "Traceback" not in log, kassa.log_tail(60)  # one line per retry, no traceback

        await asyncio.to_thread(pg.start_again)
        started = time.monotonic()
        accepted = False
        async with httpx.AsyncClient(base_url=kassa.url, timeout=5,
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            while time.monotonic() - started < 30 and not accepted:
                r = await http.post("/v1/accounts", json={"id": "boot1", "currency": "USD"})
                accepted = r.status_code in (201, 409)
                if not accepted:
                    assert r.status_code == 503, r.text
                    await asyncio.sleep(0.2)
            assert accepted, kassa.log_tail(60)
            # Both workers serve: the one that waited for the database too.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(kassa.worker_pids()) != 2:
                await asyncio.sleep(0.2)
            assert len(kassa.worker_pids()) == 2
            # Ready again by itself, and it stays so: 20 answers 200 in a row within 20 s. A
            # worker may say 503 for a moment after the outage (each pooled connection that
            # died with the server fails once when next used; the receipt service's breaker,
            # opened by the outage, waits KASSA_BREAKER_RESET_S).
            deadline, in_a_row = time.monotonic() + 20, 0
            while in_a_row < 20:
                ready = await http.get("/readyz")
                in_a_row = in_a_row + 1 if ready.status_code == 200 else 0
                assert time.monotonic() < deadline, ready.text
                if ready.status_code != 200:
                    await asyncio.sleep(0.2)
        assert kassa.process.poll() is None
    finally:
        code = await asyncio.to_thread(kassa.stop)
    assert code == 0, kassa.log_tail(60)

