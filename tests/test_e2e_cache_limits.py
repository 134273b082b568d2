"""The account cache and the rate limiter through `kassa serve --workers 2`."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import new_database
from tests.fixtures.kassa_server import start_kassa
from tests.fixtures.servers import PostgresServer, RedisServer
from tests.invariants import assert_invariants
from tests.load import SERVE_ENV, Reply, drive, open_accounts

pytestmark = pytest.mark.slow


async def fresh_connections(url: str, request: tuple[str, str, object], n: int) -> list[Reply]:
    """n copies of one request, each on its own connection, all at once (both workers serve)."""
    replies = await asyncio.gather(*(drive(url, [request], 1) for _ in range(n)))
    out = [r[0] for r in replies]
    assert all(isinstance(r, Reply) for r in out), out
    return out  # type: ignore[return-value]


async def test_a_balance_change_in_one_process_reaches_pre_validation_in_the_other(
        pg_server: PostgresServer, redis_server: RedisServer) -> None:
    dsn = await new_database(pg_server)
    # A long local TTL: only invalidation (not expiry) can refresh the cached balance.
    kassa = start_kassa({**SERVE_ENV, "KASSA_DATABASE_URL": dsn, "KASSA_REDIS_URL": redis_server.url,
                         "KASSA_ACCOUNT_CACHE_TTL_MS": "60000"})
    try:
        await open_accounts(kassa.url, ["ca", "cb"], 100)
        probe = ("POST", "/v1/transactions", {"type": "transfer", "currency": "USD",
                                              "source": "ca", "destination": "cb", "amount": 60})
        warm = await fresh_connections(kassa.url, probe, 24)
        assert {r.status for r in warm} <= {202, 422}
        # Both processes now cache "ca"; drain it to 0 through a sync withdrawal.
        await asyncio.sleep(0.3)
        drained = await drive(kassa.url, [("POST", "/v1/transactions?wait=true", {
            "type": "withdrawal", "currency": "USD", "source": "ca", "amount": 40})], 1)
        assert isinstance(drained[0], Reply) and drained[0].status == 201, drained
        replies = await fresh_connections(kassa.url, probe, 24)
        codes = {(r.status, r.body["error"]["code"] if r.status == 422 else None) for r in replies}
        assert codes == {(422, "insufficient_funds")}, codes
        await assert_invariants(dsn)
    finally:
        kassa.stop()


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
