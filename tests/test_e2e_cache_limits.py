"""The account cache and the rate limiter through `kassa serve --workers 2`.

In the cache tests entries live 60 s, so expiry never explains what they see: only a
process's own commits, refusals' fresh reads and invalidations do. Requests go out on
fresh connections, all at once, in rounds until /metrics shows that both workers served
some.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import new_database
from tests.fixtures.kassa_server import KassaProcess, start_kassa
from tests.fixtures.servers import PostgresServer, RedisServer
from tests.invariants import assert_invariants
from tests.load import SERVE_ENV, Reply, drive, open_accounts

pytestmark = pytest.mark.slow
# A PATCH reaches every process's pre-validation within a Redis pub/sub delivery
# (milliseconds); the tests allow this much.
INVALIDATION_BOUND_S = 0.1


@pytest.fixture
async def cached(pg_server: PostgresServer, redis_server: RedisServer
                 ) -> AsyncIterator[tuple[KassaProcess, str]]:
    dsn = await new_database(pg_server)
    kassa = start_kassa({**SERVE_ENV, "KASSA_DATABASE_URL": dsn, "KASSA_REDIS_URL": redis_server.url,
                         "KASSA_ACCOUNT_CACHE_TTL_MS": "60000"})
    try:
        yield kassa, dsn
    finally:
        kassa.stop()


async def fresh_connections(url: str, request: tuple[str, str, object], n: int = 24) -> list[Reply]:
    """n copies of one request, each on its own connection, all at once."""
    replies = await asyncio.gather(*(drive(url, [request], 1) for _ in range(n)))
    out = [r[0] for r in replies]
    assert all(isinstance(r, Reply) for r in out), out
    return out  # type: ignore[return-value]


Answer = tuple[int, str | None]


def answers(replies: list[Reply]) -> set[Answer]:
    return {(r.status, r.body["error"]["code"] if r.status >= 400 else None) for r in replies}


async def lookups(url: str) -> dict[str, float]:
    """pid → account lookups that worker made so far."""
    reply = (await drive(url, [("GET", "/metrics", None)], 1))[0]
    assert isinstance(reply, Reply) and reply.status == 200
    return {s.labels["pid"]: s.value for family in text_string_to_metric_families(reply.body)
            if family.name == "kassa_account_cache_lookups" for s in family.samples}


async def from_both_workers(url: str, request: tuple[str, str, object], allowed: set[Answer],
                            rounds_max: int = 10) -> list[Reply]:
    """Rounds of fresh connections until both workers have served some (each one looked
    accounts up); every answer must be in `allowed`. The kernel, not us, picks the worker."""
    before = await lookups(url)
    replies: list[Reply] = []
    for _ in range(rounds_max):
        replies += await fresh_connections(url, request)
        assert answers(replies) <= allowed, answers(replies)
        after = await lookups(url)
        if len(after) == 2 and all(after[pid] > before.get(pid, 0) for pid in after):
            return replies
    raise AssertionError(f"one worker served all {len(replies)} requests")


def transfer(source: str, destination: str, amount: int) -> tuple[str, str, object]:
    return ("POST", "/v1/transactions", {"type": "transfer", "currency": "USD", "source": source,
                                         "destination": destination, "amount": amount})


def receipts(replies: list[Reply]) -> list[str]:
    return [r.body["receipt_code"] for r in replies if r.status == 202]


async def outcomes(dsn: str, codes: list[str], timeout_s: float = 30) -> set[tuple[str, str | None]]:
    """The (status, error code) pairs of these receipts' journals once all are final."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = await conn.fetch("SELECT status, error_code FROM journals "
                                    "WHERE external_ref = ANY($1::text[])", codes)
            if len(rows) == len(codes) and all(r["status"] in ("completed", "failed") for r in rows):
                return {(r["status"], r["error_code"]) for r in rows}
            assert time.monotonic() < deadline, "journals not final before the deadline"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_a_credit_committed_in_one_process_is_never_refused_in_the_other(
        cached: tuple[KassaProcess, str]) -> None:
    kassa, dsn = cached
    await open_accounts(kassa.url, ["la", "lb"], 0)
    probe = transfer("la", "lb", 10)
    # Both processes now cache la at 0.
    await from_both_workers(kassa.url, probe, {(422, "insufficient_funds")})
    deposit = await drive(kassa.url, [("POST", "/v1/transactions?wait=true", {
        "type": "deposit", "currency": "USD", "destination": "la", "amount": 10_000})], 1)
    assert isinstance(deposit[0], Reply) and deposit[0].status == 201, deposit
    # The process that did not commit the deposit still caches 0: its refusal reads again.
    replies = await from_both_workers(kassa.url, probe, {(202, None)})
    assert await outcomes(dsn, receipts(replies)) == {("completed", None)}
    await assert_invariants(dsn)


async def test_a_stale_high_balance_is_corrected_by_its_first_failure(
        cached: tuple[KassaProcess, str]) -> None:
    kassa, dsn = cached
    await open_accounts(kassa.url, ["ha", "hb"], 100)
    # Both processes now cache ha at 100.
    await from_both_workers(kassa.url, transfer("ha", "hb", 1000), {(422, "insufficient_funds")})
    drained = await drive(kassa.url, [("POST", "/v1/transactions?wait=true", {
        "type": "withdrawal", "currency": "USD", "source": "ha", "amount": 100})], 1)
    assert isinstance(drained[0], Reply) and drained[0].status == 201, drained
    # The other process still caches 100: its requests get 202 and fail under lock, and
    # that batch's locked balance (0) corrects its view.
    probe = transfer("ha", "hb", 30)
    stale = await from_both_workers(kassa.url, probe, {(202, None), (422, "insufficient_funds")})
    assert await outcomes(dsn, receipts(stale)) <= {("failed", "insufficient_funds")}
    # From then on every process refuses at once.
    await from_both_workers(kassa.url, probe, {(422, "insufficient_funds")})
    await assert_invariants(dsn)


async def test_an_account_patched_locked_is_refused_by_every_process(
        cached: tuple[KassaProcess, str]) -> None:
    kassa, dsn = cached
    await open_accounts(kassa.url, ["pa", "pb"], 1000)
    probe = transfer("pa", "pb", 1)
    # Both processes now cache pa as active.
    replies = await from_both_workers(kassa.url, probe, {(202, None)})
    for status, allowed in (("locked", {(422, "account_inactive")}), ("active", {(202, None)})):
        # Finished first, so that no 202 of the round before meets the new status under lock.
        assert await outcomes(dsn, receipts(replies)) <= {("completed", None)}
        patched = await drive(kassa.url, [("PATCH", "/v1/accounts/pa", {"status": status})], 1)
        assert isinstance(patched[0], Reply) and patched[0].status == 200, patched
        await asyncio.sleep(INVALIDATION_BOUND_S)
        replies = await from_both_workers(kassa.url, probe, allowed)
    assert await outcomes(dsn, receipts(replies)) == {("completed", None)}
    await assert_invariants(dsn)


async def test_rate_limit_per_api_key(pg_server: PostgresServer, redis_server: RedisServer) -> None:
    dsn = await new_database(pg_server)
    kassa = start_kassa({**SERVE_ENV, "KASSA_DATABASE_URL": dsn, "KASSA_REDIS_URL": redis_server.url,
                         "KASSA_RATE_LIMIT": "10/1"})
    try:
        burst = await drive(kassa.url, [("GET", "/v1/accounts/nobody", None)] * 40, 8)
        codes = [r.status for r in burst if isinstance(r, Reply)]
        assert codes.count(404) >= 10 and codes.count(429) >= 20, codes
        limited = next(r for r in burst if isinstance(r, Reply) and r.status == 429)
        assert limited.body["error"]["code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        exempt = await drive(kassa.url, [("GET", "/healthz", None), ("GET", "/readyz", None),
                                         ("GET", "/metrics", None)] * 10, 4)
        assert all(isinstance(r, Reply) and r.status == 200 for r in exempt)
        await asyncio.sleep(1.2)  # the bucket refills at 10 per second
        again = await drive(kassa.url, [("GET", "/v1/accounts/nobody", None)] * 5, 1)
        assert [r.status for r in again if isinstance(r, Reply)] == [404] * 5
    finally:
        kassa.stop()
