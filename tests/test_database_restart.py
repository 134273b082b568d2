"""PostgreSQL restarts, or ends the sessions of a process's pool: once the database is back,
no request fails for it.

asyncpg replaces a pooled connection it knows is closed. It learns that one was closed
when its event loop reads the server's goodbye; a session that ended while the loop was
busy (a stall, a burst of work) is handed out still open and fails its next statement.
`pool.transaction` retries BEGIN once on a fresh connection then (nothing was done), and
`pool.read` a read; either expires the pool's other connections. A failure after BEGIN is
not retried (lost_commit handles a lost COMMIT acknowledgement).

Adapter tests: the real stores on a pool whose sessions were ended while the loop was
blocked. End to end: a real `kassa serve` (2 workers) whose PostgreSQL restarts, or whose
sessions are all terminated, under traffic; then 50 sequential requests all succeed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from core.ledger.errors import Unavailable
from core.pipeline.views import TransactionFilter
from server.adapters.postgres.accounts import PgAccountStore
from server.adapters.postgres.journals import PgJournalStore
from server.adapters.postgres.listing import PgListings
from server.adapters.postgres.migrate import apply_migrations
from server.adapters.postgres.pool import create_pool
from tests.fixtures.kassa_server import start_kassa
from tests.fixtures.servers import start_postgres
from tests.load import SERVE_ENV, drive, open_accounts, status_counts
from tests.test_supervision import wait_ready

# ---- the stores, on sessions ended while the loop was not looking ---------------------


async def end_sessions(dsn: str, *, database_only: bool = True) -> int:
    """Terminate every other client session (of this database), as an administrator or a
    failover would, and wait until they are gone; returns how many there were."""
    conn = await asyncpg.connect(dsn)
    where = ("pid <> pg_backend_pid() AND backend_type = 'client backend'"
             + (" AND datname = current_database()" if database_only else ""))
    try:
        ended = int(await conn.fetchval(
            f"SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE {where}"))
    finally:
        await conn.close()
    return ended


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(pg_dsn, min_size=4, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


async def ended_unseen(pool: asyncpg.Pool, dsn: str) -> None:
    """Every session of `pool` ended by the server, the goodbyes still unread: the ending
    happens in a thread while this loop is blocked (as a busy worker's would be)."""
    def end() -> int:
        return asyncio.run(end_sessions(dsn))

    ended = threading.Thread(target=end)
    ended.start()
    ended.join()  # blocking on purpose: the loop must not run until the sessions are gone
    assert all(not h._con.is_closed() for h in pool._holders if h._con is not None)


async def test_the_stores_replace_a_session_found_ended_instead_of_failing(
        pool: asyncpg.Pool, pg_dsn: str) -> None:
    accounts, journals, listings = PgAccountStore(pool), PgJournalStore(pool, lease_s=5), PgListings(pool)
    await asyncio.gather(*[pool.fetchval("SELECT pg_sleep(0.01)") for _ in range(4)])
    calls = [
        ("create", lambda: accounts.create("e1", "USD", 0, None, {})),
        ("get", lambda: accounts.get("e1")),
        ("update", lambda: accounts.update("e1", "locked", None)),
        ("entries", lambda: accounts.entries("e1", 10, None)),
        ("transaction", lambda: accounts.transaction("RCP-none")),
        ("journal_status", lambda: journals.journal_status("RCP-none")),
        ("get_accounts", lambda: journals.get_accounts(["e1"])),
        ("journal_of_key", lambda: journals.journal_of_key("s", "k")),
        ("journals", lambda: listings.journals(TransactionFilter(), 5, None)),
        ("accounts", lambda: listings.accounts(None, None, 5, None)),
    ]
    failed = []
    for name, call in calls:
        await ended_unseen(pool, pg_dsn)
        try:
            await call()
        except Unavailable:
            failed.append(name)
    assert failed == []
    await ended_unseen(pool, pg_dsn)
    async with journals.unit() as unit:  # the executor's unit of work (lost_commit)
        assert await unit.lock_accounts(["e1"]) != {}


async def test_a_session_ending_after_begin_is_not_retried(pool: asyncpg.Pool, pg_dsn: str) -> None:
    """After BEGIN the unit's statements may have reached the server: the failure is the
    caller's (503 unavailable, or the executor's own retry), and the body ran once."""
    journals = PgJournalStore(pool, lease_s=5)
    ran = 0
    with pytest.raises(Unavailable):
        async with journals.unit() as unit:
            ran += 1
            await unit.lock_accounts(["e1"])
            await end_sessions(pg_dsn)
            await unit.lock_accounts(["e1"])
    assert ran == 1


# ---- a real `kassa serve` -------------------------------------------------------------

ACCOUNTS = [f"r{i}" for i in range(3)]


def mixed(n: int, tag: str) -> list[tuple[str, str, Any]]:
    """`n` requests cycling through the routes that use a pooled connection: reads (an
    account, its entries, the listings) and writes (deposits, new accounts)."""
    kinds: list[tuple[str, str, Any]] = [
        ("GET", f"/v1/accounts/{ACCOUNTS[0]}", None),
        ("POST", "/v1/transactions?wait=true",
         {"type": "deposit", "currency": "USD", "destination": ACCOUNTS[1], "amount": 1}),
        ("GET", f"/v1/accounts/{ACCOUNTS[0]}/entries", None),
        ("GET", "/v1/transactions?limit=5", None),
        ("GET", "/v1/accounts?limit=5", None),
        ("POST", "/v1/transactions",
         {"type": "deposit", "currency": "USD", "destination": ACCOUNTS[2], "amount": 1}),
    ]
    return [kinds[i % len(kinds)] if i % 10 else ("POST", "/v1/accounts", {
        "id": f"{tag}-{i}", "currency": "USD"}) for i in range(n)]


def succeeded(counts: dict[str, int]) -> bool:
    return set(counts) <= {"200", "201", "202"}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["restart", "terminate"])
def test_every_request_succeeds_once_the_database_is_back(how: str) -> None:
    server = start_postgres()
    try:
        asyncio.run(apply_migrations(server.dsn()))
        kassa = start_kassa({**SERVE_ENV, "KASSA_DATABASE_URL": server.dsn()}, workers=2,
                            timeout_s=60)
        try:
            asyncio.run(open_accounts(kassa.url, ACCOUNTS, 100))
            # Concurrent traffic fills both workers' pools, and goes on while it happens.
            counts = status_counts(asyncio.run(drive(kassa.url, mixed(300, "a"), concurrency=40)))
            assert succeeded(counts), counts
            during = threading.Thread(target=lambda: asyncio.run(
                drive(kassa.url, mixed(200, "d"), concurrency=20)))
            during.start()
            if how == "restart":
                server.pg_ctl("-m", "fast", "-w", "stop")
                server.start_again()
            else:
                assert asyncio.run(end_sessions(server.dsn(), database_only=False)) > 0
            during.join()
            wait_ready(kassa, 30)
            replies = asyncio.run(drive(kassa.url, mixed(50, "b"), concurrency=1))
            counts = status_counts(replies)
            assert succeeded(counts), (counts, kassa.log_tail(40))
        finally:
            assert kassa.stop() == 0, kassa.log_tail(100)
    finally:
        server.stop()
