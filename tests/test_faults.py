"""Network faults between `kassa serve` and its dependencies, injected by a TCP proxy
(tests/fixtures/proxy.py) under a moderate load: lost COMMIT acknowledgements from
PostgreSQL, a blackholed Redis, a slow receipt service, a broker cut off mid-publish.

Every case ends with the same checks: the ledger's invariants (`kassa verify`'s checks),
every 202 terminal, every 201/202 receipt a journal, and no 503 `unavailable` for a
request that landed (each request carries its own Idempotency-Key, so a refused one can
be looked up; `outcome_unknown` is allowed, and its retry with the same key posts once).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer

from core.ledger.errors import CommitUnknown
from server.adapters.postgres.journals import PgJournalStore
from server.adapters.postgres.pool import create_pool
from server.process.embedded_kafka import stop_tansu, tansu_binary
from tests.conftest import new_database
from tests.fixtures.kassa_server import KASSA, KassaProcess, start_kassa
from tests.fixtures.pipeline import pending
from tests.fixtures.proxy import PG_COMMIT, PG_READY, FaultProxy, fault_proxy
from tests.fixtures.servers import PostgresServer, RedisServer, free_port, wait_for_port
from tests.invariants import assert_invariants, unfinished, unpublished_events
from tests.load import SERVE_ENV, Reply, client, open_accounts, status_counts, wait_terminal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

FAST_RECOVERY = {"KASSA_LEASE_S": "2", "KASSA_SWEEP_INTERVAL_S": "0.5"}
TOPIC = "kassa.transactions"


@dataclass(frozen=True)
class Request:
    path: str
    body: dict[str, Any]
    key: str


@dataclass
class Sent:
    request: Request
    result: Reply | Exception
    started_s: float  # loop time when it was sent


def transfers(ids: list[str], n: int, amount_max: int, *, seed: int, tag: str,
              wait_every: int = 4) -> list[Request]:
    """Random transfers, every `wait_every`-th synchronous, each with its own key."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        source, destination = rng.sample(ids, 2)
        path = "/v1/transactions?wait=true" if wait_every and i % wait_every == 0 else "/v1/transactions"
        out.append(Request(path, {"type": "transfer", "currency": "USD", "source": source,
                                  "destination": destination, "amount": rng.randint(1, amount_max)},
                           f"{tag}-{seed}-{i}"))
    return out


async def send(http: aiohttp.ClientSession, request: Request) -> Reply:
    started = time.monotonic()
    async with http.post(request.path, json=request.body,
                         headers={"Idempotency-Key": request.key}) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return Reply(r.status, body, dict(r.headers), time.monotonic() - started)


async def drive(url: str, requests: list[Request], concurrency: int = 32,
                pace_s: float = 0.0, duration_s: float | None = None) -> list[Sent]:
    """Send with at most `concurrency` in flight, each worker pausing `pace_s` between
    requests, none sent after `duration_s` (a moderate load stretched over the fault);
    what was sent, in order."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s if duration_s else float("inf")
    sent: list[Sent | None] = [None] * len(requests)
    cursor = iter(range(len(requests)))

    async def worker(http: aiohttp.ClientSession) -> None:
        for i in cursor:
            started = loop.time()
            if started > deadline:
                return
            try:
                result: Reply | Exception = await send(http, requests[i])
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                result = exc
            sent[i] = Sent(requests[i], result, started)
            if pace_s:
                await asyncio.sleep(pace_s)

    async with client(url, concurrency) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return [s for s in sent if s is not None]


def replies(sent: list[Sent]) -> list[Reply | Exception]:
    return [s.result for s in sent]


def code_of(result: Reply | Exception) -> str | None:
    if isinstance(result, Reply) and result.status >= 400 and isinstance(result.body, dict):
        return str(result.body["error"]["code"])
    return None


def accepted(sent: list[Sent]) -> list[str]:
    return [s.result.body["receipt_code"] for s in sent
            if isinstance(s.result, Reply) and s.result.status == 202]


def created(sent: list[Sent]) -> list[str]:
    return [s.result.body["receipt_code"] for s in sent
            if isinstance(s.result, Reply) and s.result.status == 201]


async def fetch_column(dsn: str, sql: str, *args: object) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def wait_drained(dsn: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := await unfinished(dsn)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert left == 0, f"{left} journals still processing"


async def check_outcomes(dsn: str, url: str, sent: list[Sent]) -> None:
    """Every 202 terminal; every 201/202 a journal, each receipt once; no `unavailable`
    for a request whose journal exists; the ledger's invariants."""
    receipts = accepted(sent) + created(sent)
    assert len(set(receipts)) == len(receipts), "a receipt code was handed out twice"
    final = await wait_terminal(url, accepted(sent), 60)
    assert len(final) == len(accepted(sent))
    await wait_drained(dsn)
    known = set(await fetch_column(dsn, "SELECT external_ref FROM journals"
                                        " WHERE external_ref = ANY($1)", receipts))
    assert known == set(receipts), f"{len(set(receipts) - known)} answered receipts have no journal"
    refused = {s.request.key: s for s in sent if code_of(s.result) == "unavailable"}
    landed = await fetch_column(dsn, "SELECT (idempotency_key, external_ref, status) FROM journals"
                                     " WHERE idempotency_key = ANY($1)", list(refused))
    examples = [(row, refused[row[0]].request.path, refused[row[0]].result) for row in landed[:3]]
    assert not landed, (f"{len(landed)} of {len(refused)} 503 `unavailable` answers were for "
                        f"journals that landed, e.g. {examples}")
    await assert_invariants(dsn)


async def kassa_verify(dsn: str, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASSA_")}
    process = await asyncio.create_subprocess_exec(
        str(KASSA), "verify", *args, env={**env, "KASSA_DATABASE_URL": dsn},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, out.decode()


def proxied_dsn(pg_server: PostgresServer, dsn: str, proxy: FaultProxy) -> str:
    return dsn.replace(f"127.0.0.1:{pg_server.port}/", f"{proxy.addr}/")


def serve(**env: str) -> KassaProcess:
    return start_kassa({**SERVE_ENV, **FAST_RECOVERY, **env})


# -- a. PostgreSQL: the connection cut right after COMMIT was sent ------------------------

# Regression (server/adapters/postgres/lost_commit.py, `transaction`): when the connection
# fails during COMMIT, asyncpg has already detached the pool's connection proxy, so asking
# it for the session pid then raised InterfaceError and the group was answered 503
# `unavailable` although it landed (docs/api.md: only when nothing was accepted). The pid
# is now read at acquire, so the lost-acknowledgement check (fence, look up) runs.
async def test_a_lost_commit_acknowledgement_reaches_the_check(pg_server: PostgresServer) -> None:
    """The store alone, without HTTP: the cut COMMIT lands, and the store must say it
    does not know (CommitUnknown, with the session to fence), not Unavailable. The proxy
    resets the client only once PostgreSQL has answered the COMMIT (its ReadyForQuery),
    so the COMMIT has landed whatever the timing (reset at once, the test's teardown could
    overtake the COMMIT on its way to, or in, PostgreSQL)."""
    dsn = await new_database(pg_server)
    with fault_proxy(pg_server.port) as pg:
        pool = await create_pool(proxied_dsn(pg_server, dsn, pg), min_size=1, max_size=2)
        try:
            store = PgJournalStore(pool, lease_s=30)
            pg.cut_after(PG_COMMIT, answer=PG_READY)
            with pytest.raises(CommitUnknown) as lost:
                await store.insert_pending([pending("deposit", 10, destination="nobody")])
            assert isinstance(lost.value.session, int)
        finally:
            await pool.close()
    assert pg.cuts_after == 1
    landed = await fetch_column(dsn, "SELECT count(*) FROM journals")
    assert landed == [1], "the COMMIT was forwarded and landed"


async def test_lost_commit_acknowledgements_under_load(pg_server: PostgresServer,
                                                       redis_server: RedisServer) -> None:
    dsn = await new_database(pg_server)
    with fault_proxy(pg_server.port) as pg:
        kassa = serve(KASSA_DATABASE_URL=proxied_dsn(pg_server, dsn, pg),
                      KASSA_REDIS_URL=redis_server.url, KASSA_COMMIT_CHECK_TIMEOUT_MS="2000")
        try:
            ids = [f"c{i}" for i in range(30)]
            await open_accounts(kassa.url, ids, 50_000)
            load = asyncio.create_task(
                drive(kassa.url, transfers(ids, 2000, 300, seed=1, tag="a"), 32, pace_s=0.01))
            for _ in range(8):  # one lost acknowledgement every 0.4 s during the load
                await asyncio.sleep(0.4)
                pg.cut_after(PG_COMMIT)
            await asyncio.sleep(0.4)
            pg.disarm()
            sent = await load
            counts = status_counts(replies(sent))
            assert pg.cuts_after >= 3, f"only {pg.cuts_after} COMMITs were cut"
            assert set(counts) <= {"201", "202", "422", "503"}, counts
            assert {code_of(s.result) for s in sent if isinstance(s.result, Reply)
                    and s.result.status == 503} <= {"unavailable", "outcome_unknown"}, counts
            assert len(accepted(sent)) > 300, counts
            await check_outcomes(dsn, kassa.url, sent)

            # Retried with the same key, an unanswered request is applied exactly once.
            unsure = [s.request for s in sent if isinstance(s.result, Reply)
                      and s.result.status == 503]
            again = await drive(kassa.url, unsure, 8)
            assert all(isinstance(s.result, Reply) and s.result.status in (201, 202, 422)
                       for s in again), status_counts(replies(again))
            await check_outcomes(dsn, kassa.url, again)
            every = accepted(sent + again) + created(sent + again)
            assert len(set(every)) == len(every), "a retry was posted anew"
            answered = {s.request.key: s.result.body["receipt_code"] for s in again
                        if isinstance(s.result, Reply) and s.result.status in (201, 202)}
            rows = await fetch_column(dsn, "SELECT (idempotency_key, external_ref) FROM journals"
                                           " WHERE idempotency_key = ANY($1)", list(answered))
            assert dict(rows) == answered, "a retry's answer names another journal than its key's"
        finally:
            kassa.stop()
    code, out = await kassa_verify(dsn, "--no-receipts")
    assert code == 0, out


async def statuses_answered(url: str, ids: list[str]) -> None:
    """A new transaction is accepted, executed and its status read back within 5 s."""
    async with client(url, 4) as http, asyncio.timeout(5):
        r = await send(http, Request("/v1/transactions", {
            "type": "transfer", "currency": "USD", "source": ids[0], "destination": ids[1],
            "amount": 1}, f"probe-{time.time_ns()}"))
        assert r.status == 202, r.body
        path = f"/v1/transactions/{r.body['receipt_code']}/status"
        while True:
            async with http.get(path) as status:
                assert status.status == 200, await status.text()
                if (await status.json())["status"] in ("completed", "failed"):
                    break
            await asyncio.sleep(0.1)
        async with http.get(f"/v1/accounts/{ids[0]}") as account:
            assert account.status == 200, await account.text()


# -- b. Redis blackholed: connections open, nothing moves, no RST ------------------------

async def test_redis_blackholed_for_ten_seconds(pg_server: PostgresServer,
                                                redis_server: RedisServer) -> None:
    dsn = await new_database(pg_server)
    with fault_proxy(redis_server.port) as redis:
        kassa = serve(KASSA_DATABASE_URL=dsn,
                      KASSA_REDIS_URL=f"redis://{redis.addr}/0")
        try:
            ids = [f"b{i}" for i in range(30)]
            await open_accounts(kassa.url, ids, 50_000)
            loop = asyncio.get_running_loop()
            load = asyncio.create_task(
                drive(kassa.url, transfers(ids, 20_000, 300, seed=2, tag="b"), 16, pace_s=0.05,
                      duration_s=15))
            await asyncio.sleep(2)
            redis.blackhole()
            holed_at = loop.time()
            await asyncio.sleep(2)
            await statuses_answered(kassa.url, ids)
            await asyncio.sleep(max(0.0, holed_at + 10 - loop.time()))
            redis.restore()
            restored_at = loop.time()
            sent = await load
            counts = status_counts(replies(sent))
            assert set(counts) <= {"201", "202", "422"}, counts
            during = [s for s in sent if holed_at + 1 <= s.started_s <= restored_at - 1]
            assert len(during) > 100, f"only {len(during)} requests sent during the blackhole"
            assert all(isinstance(s.result, Reply) and s.result.status in (201, 202, 422)
                       for s in during)
            slowest = max(s.result.elapsed_s for s in during if isinstance(s.result, Reply))
            assert slowest < 5, f"a request took {slowest:.1f}s during the blackhole"
            await check_outcomes(dsn, kassa.url, sent)
        finally:
            kassa.stop()


# -- c. Receipt service slowed down --------------------------------------------------------

@contextlib.contextmanager
def receipt_service(dsn: str) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "KASSA_DATABASE_URL": dsn, "KASSA_LOG_LEVEL": "warning"}
    process = subprocess.Popen([str(KASSA), "receipt-service", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(10)


async def unregistered(dsn: str) -> int:
    rows = await fetch_column(dsn, "SELECT count(*) FROM journals j"
                                   " LEFT JOIN receipts r ON r.code = j.external_ref"
                                   " WHERE r.status IS DISTINCT FROM j.status")
    return int(rows[0])


async def test_slow_receipt_service(pg_server: PostgresServer, redis_server: RedisServer) -> None:
    dsn = await new_database(pg_server)
    with receipt_service(dsn) as port, fault_proxy(port) as receipts:
        kassa = serve(KASSA_DATABASE_URL=dsn, KASSA_REDIS_URL=redis_server.url,
                      KASSA_RECEIPT_SERVICE_ADDR=receipts.addr)
        try:
            ids = [f"s{i}" for i in range(30)]
            await open_accounts(kassa.url, ids, 50_000)
            loop = asyncio.get_running_loop()
            load = asyncio.create_task(
                drive(kassa.url, transfers(ids, 20_000, 300, seed=3, tag="c"), 16, pace_s=0.05,
                      duration_s=12))
            await asyncio.sleep(1.5)
            receipts.delay(1.0)  # one second each way: two seconds per call
            slowed_at = loop.time()
            await asyncio.sleep(8)
            receipts.restore()
            restored_at = loop.time()
            sent = await load
            counts = status_counts(replies(sent))
            assert set(counts) <= {"201", "202", "422"}, counts
            during = [s for s in sent if slowed_at + 0.5 <= s.started_s <= restored_at]
            assert len(during) > 100, f"only {len(during)} requests sent while slowed"
            await check_outcomes(dsn, kassa.url, sent)
            deadline = time.monotonic() + 30
            while missing := await unregistered(dsn):
                assert time.monotonic() < deadline, f"{missing} receipts never registered"
                await asyncio.sleep(0.2)
            await assert_invariants(dsn, receipts=True, grace_s=0)
            code, out = await kassa_verify(dsn, "--grace-s", "0")
            assert code == 0, out
        finally:
            kassa.stop()


# -- d. Broker cut off mid-publish ---------------------------------------------------------

@contextlib.contextmanager
def broker_behind_proxy() -> Iterator[FaultProxy]:
    """Tansu advertising the proxy's address, so that every client connection (bootstrap and
    the partition leader's) goes through the proxy; memory storage survives a cut."""
    port = free_port()
    with fault_proxy(port) as proxy:
        url = f"tcp://127.0.0.1:{port}"
        process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url",
             f"tcp://{proxy.addr}", "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        try:
            wait_for_port(port)
            yield proxy
        finally:
            proxy.cut()
            stop_tansu(process, timeout_s=5)


async def consume(bootstrap: str, expected: set[str], timeout_s: float = 30) -> set[str]:
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=f"g{time.time_ns()}",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                session_timeout_ms=1_500, heartbeat_interval_ms=300,
                                rebalance_timeout_ms=1_000)
    await consumer.start()
    seen: set[str] = set()
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not expected <= seen:
                    for messages in (await consumer.getmany(timeout_ms=500)).values():
                        seen.update(msgspec.json.decode(m.value)["receipt_code"] for m in messages)
    finally:
        await consumer.stop()
    return seen


async def test_broker_cut_off_mid_publish(pg_server: PostgresServer,
                                          redis_server: RedisServer) -> None:
    dsn = await new_database(pg_server)
    with broker_behind_proxy() as broker:
        kassa = serve(KASSA_DATABASE_URL=dsn, KASSA_REDIS_URL=redis_server.url,
                      KASSA_KAFKA_BOOTSTRAP_SERVERS=broker.addr)
        try:
            ids = [f"d{i}" for i in range(30)]
            await open_accounts(kassa.url, ids, 50_000)
            load = asyncio.create_task(
                drive(kassa.url, transfers(ids, 2000, 300, seed=4, tag="d"), 32, pace_s=0.01))
            await asyncio.sleep(1.5)
            broker.refuse()
            assert broker.cut() >= 1, "no connection to the broker was open"
            await asyncio.sleep(4)
            assert await unpublished_events(dsn) > 0, "the outage saw no events waiting"
            broker.restore()
            sent = await load
            counts = status_counts(replies(sent))
            assert set(counts) <= {"201", "202", "422"}, counts
            await check_outcomes(dsn, kassa.url, sent)
            async with asyncio.timeout(30):
                while await unpublished_events(dsn):
                    await asyncio.sleep(0.2)
            finished = set(await fetch_column(dsn, "SELECT external_ref FROM journals"
                                                   " WHERE status IN ('completed', 'failed')"))
            seen = await consume(broker.addr, finished)
            assert finished <= seen, f"{len(finished - seen)} finished journals never published"
        finally:
            kassa.stop()
