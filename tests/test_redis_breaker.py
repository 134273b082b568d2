"""The circuit breaker around Redis (issue 18, D6): a stalled Redis costs a few socket
timeouts, then keyed requests use the database's idempotency check at once; an OOM answer
is an outage too (fallback, never a 500).

Unit tests with fake clients; end to end, a real `kassa serve` whose embedded Redis is
SIGSTOPped under keyed load (requests keep succeeding fast), then SIGCONTed (back to
Redis), and filled past maxmemory (OOM: still 202)."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from core.kit.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from core.ledger.errors import Unavailable
from core.pipeline.idempotency import IdempotencyGate, submission
from core.pipeline.ports import IdempotencyRecord
from server.adapters.redis.client import converted_errors
from server.adapters.redis.health import RedisPing
from server.adapters.redis.idempotency import RedisIdempotencyCache
from server.adapters.redis.status import RedisStatusStore
from tests.conftest import new_database
from tests.fixtures.kassa_server import KassaProcess, start_kassa
from tests.fixtures.servers import PostgresServer
from tests.invariants import assert_invariants
from tests.load import SERVE_ENV, client, open_accounts
from tests.test_supervision import child_pid, children


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, failures_max: int = 3) -> CircuitBreaker:
    return CircuitBreaker("redis", failures_max=failures_max, reset_ms=1000, clock=clock)


async def fail_with(guard: CircuitBreaker, error: BaseException) -> None:
    async with converted_errors("test", guard):
        raise error


# ---- converted_errors with a breaker ---------------------------------------------------


async def test_timeouts_open_the_breaker_then_calls_are_refused_without_running() -> None:
    clock = Clock()
    guard = breaker(clock)
    for _ in range(3):
        with pytest.raises(Unavailable):
            await fail_with(guard, RedisTimeout("Timeout reading from 127.0.0.1:6379"))
    assert guard.state == OPEN
    ran = False
    with pytest.raises(Unavailable) as refused:
        async with converted_errors("idempotency", guard):
            ran = True
    assert not ran and "circuit open" in refused.value.message
    assert "6379" not in refused.value.message
    clock.now += 1.0  # one trial after the reset: it succeeds, the breaker closes
    async with converted_errors("idempotency", guard):
        pass
    assert guard.state == CLOSED


async def test_oom_is_an_outage_and_other_redis_errors_are_not() -> None:
    clock = Clock()
    guard = breaker(clock, failures_max=2)
    for _ in range(5):  # a working Redis answering an error: converted, not counted
        with pytest.raises(Unavailable):
            await fail_with(guard, ResponseError("WRONGTYPE Operation against a key"))
    assert guard.state == CLOSED
    oom = OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'.")
    for _ in range(2):
        with pytest.raises(Unavailable):
            await fail_with(guard, oom)
    assert guard.state == OPEN


async def test_a_cancelled_trial_gives_its_slot_back() -> None:
    clock = Clock()
    guard = breaker(clock, failures_max=1)
    with pytest.raises(Unavailable):
        await fail_with(guard, ConnectionError("refused"))
    clock.now += 1.0
    with pytest.raises(asyncio.CancelledError):
        await fail_with(guard, asyncio.CancelledError())
    assert guard.state == HALF_OPEN
    async with converted_errors("trial", guard):  # the slot is free again
        pass
    assert guard.state == CLOSED


# ---- the wiring: one breaker for idempotency, statuses and the readiness ping ----------


class StalledRedis:
    """A fake redis-py client whose every command waits `stall_s`, then times out."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.calls = 0

    async def _stall(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(self.stall_s)
        raise RedisTimeout("Timeout reading from socket")

    set = get = delete = hget = ping = _stall

    def register_script(self, script: str) -> Any:
        return self._stall


async def test_a_stalled_redis_costs_a_few_timeouts_then_the_gate_falls_back_at_once() -> None:
    redis = StalledRedis(stall_s=0.05)
    guard = CircuitBreaker("redis", failures_max=3, reset_ms=60_000)
    cache = RedisIdempotencyCache(redis, ttl_s=60, breaker=guard)  # type: ignore[arg-type]
    statuses = RedisStatusStore(redis, breaker=guard)  # type: ignore[arg-type]
    ping = RedisPing(redis, guard)  # type: ignore[arg-type]
    gate = IdempotencyGate(cache)
    from core.ledger.models import Leg, Transaction

    tx = Transaction("deposit", "USD", (Leg("@world:USD", "a", 1),))
    for _ in range(3):  # each pays the stall: the breaker counts them
        assert await gate.begin(submission(tx, "key", uuid.uuid4().hex, False)) == (None, False)
    assert guard.state == OPEN and redis.calls == 3
    started = time.perf_counter()
    for _ in range(100):  # the database's unique key decides, no Redis call, no waiting
        assert await gate.begin(submission(tx, "key", uuid.uuid4().hex, False)) == (None, False)
        await gate.remember(submission(tx, "key", uuid.uuid4().hex, False), "RCP", "1ms")
    with pytest.raises(Unavailable):
        await statuses.read_status("RCP-x")
    with pytest.raises(Unavailable):
        await ping.ping()
    assert time.perf_counter() - started < 0.05
    assert redis.calls == 3


async def test_oom_on_the_idempotency_marker_falls_back_to_the_database() -> None:
    class FullRedis:
        async def set(self, *args: Any, **kwargs: Any) -> Any:
            raise OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'.")

    cache = RedisIdempotencyCache(FullRedis(), ttl_s=60,  # type: ignore[arg-type]
                                  breaker=CircuitBreaker("redis", failures_max=5))
    with pytest.raises(Unavailable):
        await cache.begin("scope", "k", "hash")
    with pytest.raises(Unavailable):
        await cache.complete("scope", "k", IdempotencyRecord("hash", "RCP", "async"))


# ---- end to end: a real kassa serve with its embedded Redis ----------------------------

ENV = {**SERVE_ENV, "KASSA_REDIS_BREAKER_RESET_MS": "1000"}
BODY = {"type": "deposit", "currency": "USD", "destination": "rb", "amount": 1}


@pytest.fixture(scope="module")
def served(pg_server: PostgresServer) -> Iterator[tuple[KassaProcess, str, int]]:
    """One worker; Redis, broker and services embedded. Yields the embedded Redis's pid."""
    dsn = asyncio.run(new_database(pg_server))
    kassa = start_kassa({**ENV, "KASSA_DATABASE_URL": dsn}, workers=1, timeout_s=60)
    redis_pid = child_pid(kassa, b"redis-server")
    try:
        assert redis_pid is not None, children(kassa)
        asyncio.run(open_accounts(kassa.url, ["rb"], 0))
        yield kassa, dsn, redis_pid
    finally:
        if redis_pid is not None:
            try:
                os.kill(redis_pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert kassa.stop() == 0, kassa.log_tail(100)


def redis_url(kassa: KassaProcess, pid: int) -> str:
    """The embedded Redis's URL, from its command line ("redis-server 127.0.0.1:<port>")."""
    address = children(kassa)[pid].split(b"\0")[0].split()[-1].decode()
    return f"redis://{address}/0"


async def keyed_load(url: str, n: int, concurrency: int = 20,
                     keys: list[str] | None = None) -> tuple[dict[int, int], list[float], float]:
    """`n` keyed deposits: (status → count, latencies in seconds, wall time)."""
    keys = keys or [uuid.uuid4().hex for _ in range(n)]
    todo = iter(keys)
    counts: dict[int, int] = {}
    latencies: list[float] = []

    async def one(http: aiohttp.ClientSession) -> None:
        for key in todo:
            started = time.perf_counter()
            async with http.post("/v1/transactions", json=BODY,
                                 headers={"Idempotency-Key": key}) as r:
                await r.read()
            latencies.append(time.perf_counter() - started)
            counts[r.status] = counts.get(r.status, 0) + 1

    started = time.perf_counter()
    async with client(url, concurrency) as http:
        await asyncio.gather(*(one(http) for _ in range(concurrency)))
    return counts, latencies, time.perf_counter() - started


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1]


@pytest.mark.slow
def test_a_stopped_redis_costs_keyed_requests_nothing_and_sigcont_brings_it_back(served) -> None:  # type: ignore[no-untyped-def]
    kassa, dsn, pid = served
    counts, normal, _ = asyncio.run(keyed_load(kassa.url, 300))
    assert counts == {202: 300}
    os.kill(pid, signal.SIGSTOP)
    try:
        # The first requests pay Redis's 0.5 s timeout until the breaker opens.
        counts, _, _ = asyncio.run(keyed_load(kassa.url, 60))
        assert counts == {202: 60}, counts
        counts, stalled, _ = asyncio.run(keyed_load(kassa.url, 400))
        assert counts == {202: 400}, counts
        p50, p95 = statistics.median(stalled), quantile(stalled, 0.95)
        # Without the breaker every keyed request waits 0.5 s (p50 >= 0.5 s).
        assert p50 < 0.1 and p95 < 0.25, (p50, p95, statistics.median(normal))
        started = time.perf_counter()
        ready = httpx.get(kassa.url + "/readyz", timeout=5)
        assert time.perf_counter() - started < 0.4  # no PING waiting on the stalled Redis
        assert ready.status_code == 200, ready.json()  # Redis is not required for writes
        assert ready.json()["redis"] == "down" and ready.json()["redis_breaker"] == "open"
        # A repeat is still answered as one, by the database's unique key.
        key = uuid.uuid4().hex
        first = httpx.post(kassa.url + "/v1/transactions", json=BODY, timeout=5,
                           headers={**auth(), "Idempotency-Key": key})
        again = httpx.post(kassa.url + "/v1/transactions", json=BODY, timeout=5,
                           headers={**auth(), "Idempotency-Key": key})
        assert first.status_code == 202 and again.status_code in (200, 202), again.text
        assert again.json()["receipt_code"] == first.json()["receipt_code"]
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = httpx.get(kassa.url + "/readyz", timeout=5).json()
        if body["redis"] == "ok" and body["redis_breaker"] == "closed":
            break
        time.sleep(0.2)
    assert body["redis"] == "ok" and body["redis_breaker"] == "closed", body
    # Back to Redis: new keys are remembered there again.
    keys = [uuid.uuid4().hex for _ in range(20)]
    counts, _, _ = asyncio.run(keyed_load(kassa.url, 20, keys=keys))
    assert counts == {202: 20}
    assert asyncio.run(idempotency_keys_in_redis(redis_url(kassa, pid), keys)) == len(keys)
    asyncio.run(assert_invariants(dsn))


@pytest.mark.slow
def test_a_redis_out_of_memory_is_a_fallback_not_an_error(served) -> None:  # type: ignore[no-untyped-def]
    kassa, dsn, pid = served
    url = redis_url(kassa, pid)
    memory, policy = asyncio.run(redis_config(url, "maxmemory")), asyncio.run(
        redis_config(url, "maxmemory-policy"))
    asyncio.run(redis_config(url, "maxmemory-policy", "noeviction"))
    asyncio.run(redis_config(url, "maxmemory", "1"))  # every write now answers OOM
    try:
        counts, latencies, _ = asyncio.run(keyed_load(kassa.url, 200))
        assert counts == {202: 200}, counts
        assert "OutOfMemoryError" in kassa.log()  # logged, then the breaker stops the calls
        key = uuid.uuid4().hex
        first = httpx.post(kassa.url + "/v1/transactions", json=BODY, timeout=5,
                           headers={**auth(), "Idempotency-Key": key})
        again = httpx.post(kassa.url + "/v1/transactions", json=BODY, timeout=5,
                           headers={**auth(), "Idempotency-Key": key})
        assert again.json()["receipt_code"] == first.json()["receipt_code"]
    finally:
        asyncio.run(redis_config(url, "maxmemory", memory))
        asyncio.run(redis_config(url, "maxmemory-policy", policy))
    assert "Internal" not in kassa.log() and "Traceback" not in kassa.log()
    asyncio.run(assert_invariants(dsn))


def auth() -> dict[str, str]:
    from tests.conftest import ADMIN_KEY

    return {"Authorization": f"Bearer {ADMIN_KEY}"}


async def redis_config(url: str, name: str, value: str | None = None) -> str:
    """CONFIG SET name value, or with no value CONFIG GET name: the value (as a string)."""
    redis = aioredis.from_url(url, decode_responses=True)
    try:
        if value is None:
            return str((await redis.config_get(name))[name])
        await redis.config_set(name, value)
        return value
    finally:
        await redis.aclose()


async def idempotency_keys_in_redis(url: str, keys: list[str]) -> int:
    redis = aioredis.from_url(url)
    try:
        found = 0
        for key in keys:
            found += len([k async for k in redis.scan_iter(f"kassa:idem:*:{key}")])
        return found
    finally:
        await redis.aclose()


# ---- the measurement of issue 18 (D6), not a test ---------------------------------------


async def timed_load(url: str, seconds: float, concurrency: int) -> tuple[dict[int, int], list[float]]:
    """Keyed deposits for `seconds` with `concurrency` in flight: status → count, latencies."""
    deadline = time.perf_counter() + seconds
    counts: dict[int, int] = {}
    latencies: list[float] = []

    async def one(http: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with http.post("/v1/transactions", json=BODY,
                                 headers={"Idempotency-Key": uuid.uuid4().hex}) as r:
                await r.read()
            latencies.append(time.perf_counter() - started)
            counts[r.status] = counts.get(r.status, 0) + 1

    async with client(url, concurrency) as http:
        await asyncio.gather(*(one(http) for _ in range(concurrency)))
    return counts, latencies


def measure(kassa_bin: str, seconds: float, concurrency: int, workers: int) -> None:
    """Keyed throughput with the embedded Redis running, SIGSTOPped, SIGCONTed: one line
    per phase. `kassa_bin`: the console script to measure (another checkout's for a
    before/after)."""
    from pathlib import Path

    from tests.fixtures.servers import start_postgres

    pg = start_postgres()
    try:
        dsn = asyncio.run(_fresh_database(pg))
        kassa = start_kassa({**ENV, "KASSA_DATABASE_URL": dsn}, workers=workers, timeout_s=60,
                            kassa=Path(kassa_bin))
        try:
            asyncio.run(open_accounts(kassa.url, ["rb"], 0))
            pid = child_pid(kassa, b"redis-server")
            assert pid is not None
            rates = {}
            for phase in ("normal", "redis SIGSTOPped", "after SIGCONT"):
                if phase == "redis SIGSTOPped":
                    os.kill(pid, signal.SIGSTOP)
                elif phase == "after SIGCONT":
                    os.kill(pid, signal.SIGCONT)
                try:
                    counts, latencies = asyncio.run(timed_load(kassa.url, seconds, concurrency))
                finally:
                    os.kill(pid, signal.SIGCONT)  # never leave it stopped
                    if phase == "redis SIGSTOPped":
                        os.kill(pid, signal.SIGSTOP)  # ... until the next phase
                rates[phase] = len(latencies) / seconds
                print(f"{phase:18} {rates[phase]:8.0f} req/s  statuses {counts}  "
                      f"p50 {statistics.median(latencies) * 1000:6.1f} ms  "
                      f"p99 {quantile(latencies, 0.99) * 1000:6.1f} ms", flush=True)
            print(f"stopped / normal: {rates['redis SIGSTOPped'] / rates['normal']:.0%}")
            asyncio.run(assert_invariants(dsn))
        finally:
            kassa.stop()
    finally:
        pg.stop()


async def _fresh_database(pg: PostgresServer) -> str:
    import asyncpg

    from server.adapters.postgres.migrate import apply_migrations

    conn = await asyncpg.connect(pg.dsn())
    await conn.execute("CREATE DATABASE kassa_measure")
    await conn.close()
    await apply_migrations(pg.dsn("kassa_measure"))
    return pg.dsn("kassa_measure")


if __name__ == "__main__":
    import argparse

    from tests.fixtures.kassa_server import KASSA

    parser = argparse.ArgumentParser(description="keyed throughput, Redis running vs SIGSTOPped")
    parser.add_argument("--kassa", default=str(KASSA), help="console script to measure")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    options = parser.parse_args()
    measure(options.kassa, options.seconds, options.concurrency, options.workers)
