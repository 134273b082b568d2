"""PostgreSQL down: requests get a fast 503 `unavailable` with Retry-After, never a 500;
the log says so in a warning line per component every few seconds, without tracebacks,
while a defect still logs its traceback."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import asyncpg
import httpx
import pytest

from core.ledger.errors import Unavailable
from server.adapters.kafka.relay import OutboxRelay
from server.adapters.postgres.migrate import apply_migrations
from server.adapters.postgres.outbox import OutboxSession
from server.adapters.postgres.pool import PoolReconnectLog
from server.process.asgi import create_app
from server.process.runtime import build_runtime
from tests.conftest import ADMIN_KEY, make_settings
from tests.fixtures.kassa_server import start_kassa
from tests.fixtures.servers import start_postgres
from tests.invariants import unpublished_events
from tests.load import SERVE_ENV, drive, open_accounts, status_counts
from tests.test_supervision import deposits, wait_ready


async def test_database_down_answers_503(redis_url: str) -> None:
    server = await asyncio.to_thread(start_postgres)
    try:
        await apply_migrations(server.dsn())
        app = create_app()
        runtime = await build_runtime(make_settings(server.dsn(), redis_url, db_pool_min=1))
        app.state.runtime = runtime
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://k",
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
            assert (await client.post("/v1/accounts", json={"id": "d1", "currency": "USD"})).status_code == 201
            await asyncio.to_thread(server.stop)
            for request in (client.post("/v1/accounts", json={"id": "d2", "currency": "USD"}),
                            client.get("/v1/accounts/d1"), client.get("/v1/accounts/d1/entries"),
                            client.post("/v1/transactions", json={
                                "type": "deposit", "currency": "USD", "destination": "d1", "amount": 5}),
                            client.get("/v1/transactions/RCP-20261124-0000000000000000/status")):
                r = await asyncio.wait_for(request, 10)
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "unavailable" and r.headers["retry-after"]
                # The contract: error messages never carry driver, host or port text.
                message = r.json()["error"]["message"].lower()
                for leak in ("127.0.0.1", str(server.port), "asyncpg", "errno", "connect ", "refused",
                             "socket", "localhost"):
                    assert leak not in message, message
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["postgres"] == "down"
        await asyncio.wait_for(runtime.stop(), 60)
    finally:
        server.stop()


# ---- the log while the database is down ----------------------------------------------

OUTAGE_S = 16.0
# Each of these says the database is down in one line at most every 5 s (per process).
QUIET = ("kassa.outbox", "asyncpg.pool", "kassa.postgres", "kassa.expiry", "kassa.recovery")
LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) \[(?P<pid>\d+)\] \[[^]]*\] (?P<logger>[\w.]+): ")


@pytest.mark.slow
def test_a_database_outage_logs_one_line_per_component_every_few_seconds_and_no_traceback() -> None:
    """A real `kassa serve` (one worker: its relay publishes, its pool keeps a floor of
    connections, its sweepers tick every second or two) whose PostgreSQL stops for 16 s
    under a trickle of requests, then starts again on the same port."""
    server = start_postgres()
    try:
        asyncio.run(apply_migrations(server.dsn()))
        kassa = start_kassa({**SERVE_ENV, "KASSA_DATABASE_URL": server.dsn()}, workers=1,
                            timeout_s=60)
        try:
            asyncio.run(open_accounts(kassa.url, ["down"], 0))
            replies = asyncio.run(drive(kassa.url, deposits(20, "down"), concurrency=5))
            assert status_counts(replies) == {"202": 20}, status_counts(replies)
            offset = len(kassa.log())
            server.pg_ctl("-m", "fast", "-w", "stop")
            down_at = time.monotonic()
            while time.monotonic() - down_at < OUTAGE_S:
                replies = asyncio.run(drive(kassa.url, deposits(10, "down"), concurrency=5))
                assert set(status_counts(replies)) == {"503"}, status_counts(replies)
                time.sleep(1)
            outage = kassa.log()[offset:]
            server.start_again()

            assert "Traceback" not in outage, outage
            lines: dict[str, int] = {}
            for line in outage.splitlines():
                if (m := LINE.match(line)) and m["logger"] in QUIET:
                    assert m["level"] == "WARNING", line
                    lines[m["logger"]] = lines.get(m["logger"], 0) + 1
            elapsed = time.monotonic() - down_at
            for logger in QUIET:
                assert lines.get(logger, 0) <= elapsed / 5 + 2, (logger, lines, outage)
            for logger in ("kassa.outbox", "kassa.postgres", "kassa.expiry"):
                assert lines.get(logger), (logger, outage)  # the outage is still visible

            wait_ready(kassa, 30)
            replies = asyncio.run(drive(kassa.url, deposits(20, "down"), concurrency=5))
            assert status_counts(replies) == {"202": 20}, status_counts(replies)
            deadline = time.monotonic() + 30
            while asyncio.run(unpublished_events(server.dsn())):  # the relay publishes again
                assert time.monotonic() < deadline, kassa.log_tail(60)
                time.sleep(0.2)
            assert "outbox relay: database reachable again" in kassa.log()[offset:]
            assert "Traceback" not in kassa.log()[offset:], kassa.log()[offset:]
        finally:
            assert kassa.stop() == 0, kassa.log_tail(100)
    finally:
        server.stop()


# ---- a defect still logs its traceback ------------------------------------------------


def test_the_pool_reconnect_filter_strips_outages_and_keeps_defects() -> None:
    clock = [100.0]
    quiet = PoolReconnectLog(interval_s=5, clock=lambda: clock[0])

    def record(exc: Exception) -> logging.LogRecord:
        return logging.LogRecord("asyncpg.pool", logging.WARNING, __file__, 1,
                                 "Failed to restore the pool connection floor; retrying",
                                 None, (type(exc), exc, None))

    first = record(ConnectionRefusedError(111, "Connection refused"))
    assert quiet.filter(first) and first.exc_info is None
    assert "ConnectionRefusedError" in first.getMessage()
    assert not quiet.filter(record(OSError("again")))  # within 5 s: dropped
    clock[0] += 5
    assert quiet.filter(record(asyncpg.CannotConnectNowError("shutting down")))
    defect = record(KeyError("bug"))
    assert quiet.filter(defect) and defect.exc_info is not None
    assert quiet.filter(record(asyncpg.UndefinedTableError("no table")))
    assert any(isinstance(f, PoolReconnectLog) for f in logging.getLogger("asyncpg.pool").filters)


async def test_the_relay_logs_an_outage_briefly_and_a_defect_with_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    relay = OutboxRelay("postgresql://127.0.0.1:1/none", "127.0.0.1:1", "t")
    with caplog.at_level(logging.DEBUG, logger="kassa.outbox"):
        for _ in range(3):
            relay._database_failed("cannot connect to the database",
                                   ConnectionRefusedError(111, "Connection refused"))
        relay._database_failed("database error", asyncpg.UndefinedTableError("no outbox"))
        relay._database_back()
    records = [r for r in caplog.records if r.name == "kassa.outbox"]
    assert [(r.levelname, r.exc_info is not None) for r in records] == [
        ("WARNING", False), ("ERROR", True), ("WARNING", False)], records
    assert "database reachable again" in records[-1].getMessage()


async def test_a_sweeper_logs_an_outage_briefly_and_a_defect_with_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    from core.pipeline.recovery import RecoverySweeper

    class Failing(RecoverySweeper):
        def __init__(self) -> None:
            super().__init__(None, None, owner="o", lease_s=1, interval_s=0.001)  # type: ignore[arg-type]
            self.errors: list[BaseException] = [Unavailable("the database is unavailable")] * 5
            self.errors.append(RuntimeError("bug"))

        async def sweep(self) -> int:
            if self.errors:
                raise self.errors.pop(0)
            await asyncio.Event().wait()
            return 0

    sweeper = Failing()
    with caplog.at_level(logging.WARNING, logger="kassa.recovery"):
        task = asyncio.create_task(sweeper.run())
        while sweeper.errors:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
    records = [r for r in caplog.records if r.name == "kassa.recovery"]
    assert [(r.levelname, r.exc_info is not None) for r in records] == [
        ("WARNING", False), ("ERROR", True)], records


async def test_a_session_the_server_ended_is_lost_whatever_the_driver_raised(pg_dsn: str) -> None:
    """A backend ended while its connection is idle: the next statement may fail with
    asyncpg's InternalClientError ("another operation is in progress") rather than a
    connection error. The relay asks the session whether it is gone before calling an
    error a defect."""
    live = await OutboxSession.connect(pg_dsn)
    ended = await OutboxSession.connect(pg_dsn)
    try:
        pid = ended._conn.get_server_pid()
        await live._conn.execute("SELECT pg_terminate_backend($1)", pid)
        time.sleep(0.02)  # noqa: ASYNC251 - the goodbye arrives while the loop is not looking
        with pytest.raises(Exception):  # noqa: B017, PT011 - which one is the driver's choice
            await ended.due((1, 0), 10)
        assert await ended.lost()
        assert not await live.lost(grace_s=0.05)
    finally:
        await ended.close()
        await live.close()


async def test_writers_log_an_outage_briefly_and_a_defect_with_its_traceback(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.pipeline import writers
    from core.pipeline.executor import Executed

    failures: list[BaseException] = [Unavailable("the database is unavailable")] * 30

    async def execute_batch(*_: object) -> Executed:
        if failures:
            raise failures.pop(0)
        return Executed([], [])

    monkeypatch.setattr(writers, "execute_batch", execute_batch)
    writer = writers.BatchWriter(None, attempts_max=3, backoff_max_s=0.001,  # type: ignore[arg-type]
                                 observer=None, closing=lambda: False)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="kassa.pool"):
        assert await writer._execute_with_backoff([]) == Executed([], [])
        failures.append(RuntimeError("bug"))
        assert await writer._execute_with_backoff([]) is None  # left to recovery
    records = [r for r in caplog.records if r.name == "kassa.pool"]
    assert [(r.levelname, r.exc_info is not None) for r in records] == [
        ("WARNING", False), ("ERROR", True)], records
