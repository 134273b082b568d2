"""Receipt codes from reserved blocks and receipt registration, against the real receipt
service (gRPC) and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import multiprocessing
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY

import native
from core.kit.breaker import CLOSED, OPEN, CircuitBreaker
from core.kit.code_cipher import CodeCipher
from core.ledger.errors import Unavailable
from core.pipeline.ports import ReceiptRecord
from native import _py
from server.adapters.grpc.clients import CallRefused, ReceiptClient, breaker_states, guarded
from server.adapters.grpc.gen.kassa.v1 import receipts_pb2 as pb
from server.adapters.grpc.gen.kassa.v1 import receipts_pb2_grpc as pb_grpc
from server.adapters.local_receipts import LocalReceiptSource
from server.process.settings import (
    RECEIPT_BATCH_SIZE_MAX,
    RECEIPT_BLOCK_SIZE_MAX,
    ConfigError,
    load_settings,
)
from server.services.grpc_server import start_server, stop_server
from server.services.receipts import service as receipt_service
from tests.conftest import new_database
from tests.fixtures.kassa_server import start_kassa
from tests.fixtures.servers import PostgresServer, RedisServer, free_port
from tests.grpc_helpers import serving, start_receipt_process, stop_process, wait_serving
from tests.load import SERVE_ENV, open_accounts

CODE = re.compile(r"^RCP-\d{8}-[0-9A-HJKMNP-TV-Z]{16}$")

pytestmark = pytest.mark.timeout(60)
# Every client of a test shares it, as every process of a deployment shares the database's.
CIPHER = CodeCipher(b"receipt tests' secret")


def value_of(code: str) -> int:
    """The counter value behind a code handed out (hidden with CIPHER)."""
    return value_of_raw(CIPHER.reveal(code))


def value_of_raw(code: str) -> int:
    value = 0
    for char in code.split("-")[2]:
        value = value * 32 + _py.CROCKFORD.index(char)
    return value


def block_of(code: str) -> int:
    value = value_of(code)
    assert value >> 79 == 1, f"{code} is not of the block layout"
    return (value & ~_py.BLOCK_FLAG) >> _py.BLOCK_OFFSET_BITS


def taken_now(client: ReceiptClient, count: int) -> list[str]:
    """next_codes(count), which must finish without awaiting anything (no suspension)."""
    coroutine = client.next_codes(count)
    try:
        coroutine.send(None)
    except StopIteration as done:
        codes: list[str] = done.value
        return codes
    coroutine.close()
    raise AssertionError("next_codes awaited although the stock had the codes")


async def until(predicate: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def receipt_server(pg_dsn: str) -> AsyncIterator[str]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    async with serving(receipt_service.serve(port, pg_dsn), address):
        yield address


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[..., ReceiptClient]]:
    clients: list[ReceiptClient] = []

    def make(address: str, **kw: float) -> ReceiptClient:
        client = ReceiptClient(address, cipher=CIPHER, **kw)  # type: ignore[arg-type]
        client.start()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def record(code: str, status: str = "completed", error_code: str | None = None,
           accounts: tuple[str, ...] = ("acc_a", "acc_b")) -> ReceiptRecord:
    return ReceiptRecord(code, "transfer", "USD", 100, list(accounts), status, error_code)


# ---------------------------------------------------------------------- codes from blocks


async def test_codes_unique_across_two_services_and_four_clients_sharing_one_database(
    pg_dsn: str, receipt_server: str, client_for: Callable[..., ReceiptClient]
) -> None:
    port = free_port()
    other = start_receipt_process(port, pg_dsn)  # a second service, in its own process
    try:
        await wait_serving(f"127.0.0.1:{port}")
        clients = [client_for(address, block_size=100)
                   for address in (receipt_server, f"127.0.0.1:{port}") for _ in range(2)]

        async def take(client: ReceiptClient) -> list[str]:
            codes: list[str] = []
            while len(codes) < 3000:
                codes += await client.next_codes(1 if len(codes) % 7 else 30)
                await asyncio.sleep(0)
            return codes

        results = await asyncio.wait_for(asyncio.gather(*(take(c) for c in clients)), 30)
    finally:
        stop_process(other)
    everything = [code for codes in results for code in codes]
    assert len(set(everything)) == len(everything) > 12_000
    assert all(CODE.match(c) for c in everything)
    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    assert {c.split("-")[1] for c in everything} <= {today, (dt.datetime.now(dt.UTC) - dt.timedelta(
        seconds=60)).strftime("%Y%m%d")}, "dated with the UTC day they are handed out"
    blocks = [{block_of(c) for c in codes} for codes in results]
    assert all(not (a & b) for i, a in enumerate(blocks) for b in blocks[i + 1:]), \
        "a block belongs to one client"
    # One call per block of 100, not per code.
    assert sum(c.codes.blocks_reserved for c in clients) <= len(everything) // 100 + 2 * len(clients)


async def test_the_block_is_refilled_before_it_runs_out_and_codes_never_wait(
    receipt_server: str, client_for: Callable[..., ReceiptClient]
) -> None:
    client = client_for(receipt_server, block_size=100)
    first = await client.next_codes(1)  # the first block was reserved at start
    await until(lambda: client.codes.available == 99)
    assert client.codes.blocks_reserved == 1
    taken = first + taken_now(client, 48)
    assert client.codes.blocks_reserved == 1  # 51 left: above half a block, no call yet
    taken += taken_now(client, 1)  # half used: the next block is reserved in the background
    await until(lambda: client.codes.blocks_reserved == 2)
    assert client.codes.available == 50 + 100
    for _ in range(1000):  # steady use never waits for the service
        taken += taken_now(client, 1)
        await asyncio.sleep(0.0005)
    assert len(set(taken)) == len(taken) == 1050
    assert 11 <= client.codes.blocks_reserved <= 12
    values = [value_of(c) for c in taken]
    assert values == sorted(values), "one client's blocks come in order"


async def test_codes_handed_out_one_after_the_other_are_not_neighbours(
    receipt_server: str, client_for: Callable[..., ReceiptClient]
) -> None:
    client = client_for(receipt_server, block_size=1000)
    codes = await client.next_codes(1) + await client.next_codes(499) + await client.next_codes(500)
    counters = [CIPHER.reveal(c) for c in codes]
    assert counters == sorted(counters) and len({block_of(c) for c in codes}) == 1
    assert all(CODE.match(c) for c in codes) and len(set(codes)) == 1000
    steps = list(zip(codes, codes[1:], strict=False))
    # 16 random characters differ from 16 others in 15.5 places on average; neighbours in 1.
    assert sum(sum(x != y for x, y in zip(a[13:], b[13:], strict=True))
               for a, b in steps) / len(steps) > 14.5
    assert 0.4 < sum(a < b for a, b in steps) / len(steps) < 0.6, "order tells nothing"


async def test_the_secret_is_the_databases_and_outlives_a_restart(
    pg_server: PostgresServer, redis_server: RedisServer
) -> None:
    """Two runs of kassa serve on one database hide their codes with the secret stored there:
    revealed with it, they are the receipt service's block codes, in order across the
    restart (another secret would reveal random values)."""
    dsn = await new_database(pg_server)
    env = {**SERVE_ENV, "KASSA_DATABASE_URL": dsn, "KASSA_REDIS_URL": redis_server.url}
    codes: list[str] = []
    secrets: list[bytes] = []
    for run in range(2):
        kassa = start_kassa(env, workers=1)
        try:
            await open_accounts(kassa.url, [f"run{run}_{i}" for i in range(3)], 100)
        finally:
            kassa.stop()
        rows = await _rows(dsn, "SELECT external_ref, secret FROM journals, receipt_code_key"
                                " WHERE external_ref <> ALL($1::text[]) ORDER BY id", codes)
        codes += [r["external_ref"] for r in rows]
        secrets += [r["secret"] for r in rows]
    assert len(codes) == 6 and len(set(secrets)) == 1 and len(secrets[0]) == 32
    counters = [value_of_raw(CodeCipher(secrets[0]).reveal(c)) for c in codes]
    assert all(v >> 79 == 1 for v in counters), "block layout"
    blocks = [(v & ~_py.BLOCK_FLAG) >> _py.BLOCK_OFFSET_BITS for v in counters]
    assert blocks == sorted(blocks) and blocks[-1] < 100 and blocks[0] < blocks[-1], blocks


async def test_a_whole_batch_of_codes_at_once_spans_blocks(
    receipt_server: str, client_for: Callable[..., ReceiptClient]
) -> None:
    client = client_for(receipt_server, block_size=300)
    codes = await asyncio.wait_for(client.next_codes(1000), 5)  # more than the stock: waits
    assert len(set(codes)) == 1000 and len({block_of(c) for c in codes}) >= 4


async def test_dry_stock_with_the_service_down_is_unavailable_at_once(
    pg_dsn: str, client_for: Callable[..., ReceiptClient]
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    procs = [start_receipt_process(port, pg_dsn)]
    try:
        await wait_serving(address)
        client = client_for(address, block_size=40, breaker_failures_max=2, breaker_reset_ms=300,
                            retry_max_ms=200)
        before = await client.next_codes(1)
        await until(lambda: client.codes.available == 39)
        stop_process(procs[0], signal.SIGKILL)
        during = taken_now(client, 39)  # the stock outlives the service
        started = time.monotonic()
        with pytest.raises(Unavailable) as refused:  # dry: waits for the refill, which fails
            await client.next_codes(1)
        assert time.monotonic() - started < 2.5
        assert refused.value.retry_after_s and "127.0.0.1" not in refused.value.message
        quick = time.monotonic()
        with pytest.raises(Unavailable):
            await client.next_codes(1)
        assert time.monotonic() - quick < 0.05, "a dry stock with the service down fails fast"
        await until(lambda: client.breaker.state == OPEN, 5)
        assert breaker_states(client) == {"receipt_service": OPEN,
                                          "receipt_service_reads": CLOSED}

        procs.append(start_receipt_process(port, pg_dsn))
        after: list[str] = []
        deadline = time.monotonic() + 15
        while not after:  # refilled in the background: no request has to trigger it
            assert time.monotonic() < deadline, "no codes after the service came back"
            try:
                after = await client.next_codes(1)
            except Unavailable:
                await asyncio.sleep(0.05)
        await until(lambda: client.breaker.state == CLOSED, 5)
    finally:
        exit_codes = [stop_process(p) for p in procs]
    assert len(set(before + during + after)) == 41
    assert exit_codes[-1] == 0  # SIGTERM is a clean shutdown


class StallingServicer(receipt_service.ReceiptServicer):
    async def ReserveCodes(  # noqa: N802
        self, request: pb.ReserveCodesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReserveCodesResponse:
        await asyncio.sleep(1.0)
        return await super().ReserveCodes(request, context)


async def test_a_slow_service_is_unavailable_within_the_timeout(
    pg_dsn: str, client_for: Callable[..., ReceiptClient]
) -> None:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    servicer = StallingServicer(pool)
    server, port, checker = await start_server(
        lambda s: pb_grpc.add_ReceiptServiceServicer_to_server(servicer, s), "stall", "127.0.0.1:0"
    )
    try:
        client = client_for(f"127.0.0.1:{port}", timeout_ms=300)
        started = time.monotonic()
        results = await asyncio.gather(*(client.next_codes(1) for _ in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results), results
        assert time.monotonic() - started < 0.45
    finally:
        await stop_server(server, checker)
        await pool.close()


async def test_a_crash_leaves_gaps_never_duplicates(
    pg_dsn: str, client_for: Callable[..., ReceiptClient]
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    service = start_receipt_process(port, pg_dsn)
    try:
        await wait_serving(address)
        crashed = client_for(address, block_size=100)
        used = await crashed.next_codes(30)
        await until(lambda: crashed.codes.available == 70)
        stop_process(service, signal.SIGKILL)  # the service dies too, and comes back
        service = start_receipt_process(port, pg_dsn)
        await wait_serving(address)
        # The crashed worker's 70 unused codes are never handed out again: a gap.
        fresh = client_for(address, block_size=100)
        later = await fresh.next_codes(100) + await fresh.next_codes(100)
    finally:
        stop_process(service)
    assert not set(used) & set(later)
    assert min(block_of(c) for c in later) > max(block_of(c) for c in used)


async def test_breaker_counts_outages_only_not_refusals(pg_dsn: str) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    service = start_receipt_process(port, pg_dsn)
    breaker = CircuitBreaker("test", failures_max=2, reset_ms=60_000)
    try:
        await wait_serving(address)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.ReceiptServiceStub(channel)
            too_many = pb.ReserveCodesRequest(count=native.BLOCK_SPAN + 1)
            for _ in range(5):
                with pytest.raises(CallRefused):
                    await guarded(breaker, lambda: stub.ReserveCodes(too_many, timeout=1))
            assert breaker.state == CLOSED, "INVALID_ARGUMENT is not an outage"
            stop_process(service, signal.SIGKILL)
            for _ in range(2):
                with pytest.raises(Unavailable) as down:
                    await guarded(breaker, lambda: stub.ReserveCodes(
                        pb.ReserveCodesRequest(count=1), timeout=1))
                assert not isinstance(down.value, CallRefused)
            assert breaker.state == OPEN
    finally:
        stop_process(service)


# ------------------------------------------------- codes made in-process (plain gunicorn)

CODES_PER_PROCESS = 100_000
# The compiled twin too, when it is built (otherwise both names are the same function).
IMPLS = {"py": _py.receipt_codes}
if native.USING_EXTENSIONS:
    IMPLS["native"] = native.receipt_codes


def _make_codes(impl: str, count: int) -> tuple[int, list[str]]:
    """In a child process: `count` codes in batches of 50, as LocalReceiptSource makes them."""
    make = IMPLS[impl]
    last_ms = last_seq = 0
    codes: list[str] = []
    while len(codes) < count:
        batch, last_ms, last_seq = make(1, os.getpid(), last_ms, last_seq,
                                        time.time_ns() // 1_000_000, 50)
        codes += batch
    return os.getpid(), codes[:count]


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_local_codes_unique_across_processes_and_increasing_within_one(impl: str) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_make_codes, [(impl, CODES_PER_PROCESS)] * 4)
    assert len({pid for pid, _ in results}) == 4
    everything: set[str] = set()
    for _, codes in results:
        assert all(CODE.match(c) for c in codes), next(c for c in codes if not CODE.match(c))
        # Crockford's alphabet is in ASCII order, so string order is value order.
        assert all(a < b for a, b in zip(codes, codes[1:], strict=False))
        everything.update(codes)
    assert len(everything) == 4 * CODES_PER_PROCESS
    hidden = set(CIPHER.hide_all(sorted(everything)))  # as LocalReceiptSource hands them out
    assert len(hidden) == 4 * CODES_PER_PROCESS and all(CODE.match(c) for c in hidden)


async def test_local_source_makes_process_layout_codes_and_keeps_no_records() -> None:
    source = LocalReceiptSource(node_id=3, cipher=CIPHER)
    codes = await source.next_codes(300)
    assert len(set(codes)) == 300 and all(CODE.match(c) for c in codes)
    assert all(value_of(c) >> 79 == 0 for c in codes), "never equal to a block code"
    source.register([record(codes[0])])
    assert await source.get_receipt(codes[0]) is None


# ---------------------------------------------------------------------- registration


async def _logged_pool(dsn: str, statements: list[str]) -> asyncpg.Pool:
    async def init(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda logged: statements.append(logged.query))

    pool: asyncpg.Pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=init)
    return pool


async def _serve_with(pool: asyncpg.Pool) -> tuple[Any, int, Any]:
    servicer = receipt_service.ReceiptServicer(pool)
    return await start_server(
        lambda s: pb_grpc.add_ReceiptServiceServicer_to_server(servicer, s), "logged", "127.0.0.1:0")


async def _rows(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _count(dsn: str) -> int:
    return int((await _rows(dsn, "SELECT count(*) AS n FROM receipts"))[0]["n"])


async def test_registration_is_one_insert_per_batch_with_final_statuses(
    pg_dsn: str, client_for: Callable[..., ReceiptClient], caplog: pytest.LogCaptureFixture
) -> None:
    statements: list[str] = []
    pool = await _logged_pool(pg_dsn, statements)
    server, port, checker = await _serve_with(pool)
    try:
        client = client_for(f"127.0.0.1:{port}", block_size=1000, batch_size_max=1000)
        codes = await client.next_codes(1000) + await client.next_codes(1000)
        await until(lambda: client.codes.blocks_reserved >= 3)
        statements.clear()
        with caplog.at_level(logging.INFO, logger="kassa.grpc.clients"):
            for start in range(0, 2000, 50):  # one call per executed batch of 50
                client.register([record(c, "failed" if i % 2 else "completed",
                                        "insufficient_funds" if i % 2 else None)
                                 for i, c in enumerate(codes[start:start + 50], start)])
            assert len(client.registrations) == 2000, "register() does not wait"
            await until(lambda: client.registrations.batches_sent == 2)
        inserts = [s for s in statements if "INSERT INTO receipts" in s]
        assert len(inserts) == 2, "one INSERT per batch of 1000"
        assert not [s for s in statements if "FROM accounts" in s], "no account re-read"
        calls = [r.getMessage() for r in caplog.records if "Registered" in r.getMessage()]
        assert calls == ["[RECEIPT BATCHER] Registered 1000 receipts"] * 2
        rows = await _rows(pg_dsn, "SELECT code, status, error_code, account_ids, type, currency,"
                                   " amount FROM receipts ORDER BY code")
        assert [r["code"] for r in rows] == sorted(codes)
        by_code = {r["code"]: r for r in rows}
        assert dict(by_code[codes[1]]) == {
            "code": codes[1], "status": "failed", "error_code": "insufficient_funds",
            "account_ids": ["acc_a", "acc_b"], "type": "transfer", "currency": "USD", "amount": 100}
        assert by_code[codes[0]]["status"] == "completed" and by_code[codes[0]]["error_code"] is None
        found = await client.get_receipt(codes[1])
        assert found is not None and (found.status, found.error_code) == ("failed", "insufficient_funds")
        assert await client.get_receipt("RCP-20260101-0000000000000000") is None
    finally:
        await stop_server(server, checker)
        await pool.close()


async def test_registering_again_is_harmless_and_never_moves_backwards(
    pg_dsn: str, receipt_server: str, client_for: Callable[..., ReceiptClient]
) -> None:
    client = client_for(receipt_server, flush_interval_ms=5)
    a, b, c = await client.next_codes(3)
    client.register([record(a, "executing"), record(b, "completed")])
    await until(lambda: client.registrations.batches_sent == 1)
    client.register([record(a, "failed", "insufficient_funds"), record(b, "executing"),
                     record(b, "completed"), record(c, "bogus")])  # c: refused alone
    await until(lambda: client.registrations.batches_sent == 2)
    rows = {r["code"]: (r["status"], r["error_code"]) for r in await _rows(
        pg_dsn, "SELECT code, status, error_code FROM receipts")}
    assert rows == {a: ("failed", "insufficient_funds"), b: ("completed", None)}


async def test_registration_waits_out_an_outage_and_is_retried(
    pg_dsn: str, client_for: Callable[..., ReceiptClient]
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    codes = [f"RCP-20261202-G0000000000{i:05d}" for i in range(300)]
    client = client_for(address, flush_interval_ms=5, batch_size_max=100, retry_max_ms=200,
                        breaker_reset_ms=100)
    started = time.monotonic()
    for i in range(0, 300, 30):
        client.register([record(code) for code in codes[i:i + 30]])  # nothing listens yet
    assert time.monotonic() - started < 0.05, "register() never blocks"
    await asyncio.sleep(0.5)
    assert len(client.registrations) == 300 and client.registrations.batches_sent == 0
    service = start_receipt_process(port, pg_dsn)
    try:
        await wait_serving(address)
        await until(lambda: len(client.registrations) == 0, 15)
    finally:
        stop_process(service)
    assert await _count(pg_dsn) == 300
    assert client.registrations.batches_sent == 3


def _dropped() -> float:
    return REGISTRY.get_sample_value("kassa_receipt_registrations_dropped_total") or 0.0


async def test_a_full_registration_queue_drops_counts_and_logs_once_a_second(
    client_for: Callable[..., ReceiptClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(f"127.0.0.1:{free_port()}", batch_size_max=100, pending_max=500)
    before = _dropped()
    with caplog.at_level(logging.WARNING, logger="kassa.grpc.clients"):
        for i in range(20):
            client.register([record(f"RCP-20261202-G00000000{i:03d}{j:04d}") for j in range(60)])
    assert len(client.registrations) == 500
    assert _dropped() - before == 20 * 60 - 500
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1, [r.getMessage() for r in drops]


async def _stopped_in_time(coroutine: Coroutine[Any, Any, None], timeout_s: float) -> float:
    started = time.monotonic()
    await asyncio.wait_for(coroutine, timeout_s + 2)
    return time.monotonic() - started


async def test_close_registers_what_waits_and_gives_up_after_the_timeout(
    pg_dsn: str, receipt_server: str
) -> None:
    up = ReceiptClient(receipt_server, cipher=CIPHER, flush_interval_ms=10_000)
    up.start()
    codes = await up.next_codes(10)
    up.register([record(c) for c in codes])
    assert await _stopped_in_time(up.close(), 2) < 1
    assert await _count(pg_dsn) == 10
    down = ReceiptClient(f"127.0.0.1:{free_port()}", cipher=CIPHER, timeout_ms=300)
    down.start()
    down.register([record("RCP-20261202-G000000000000001")])
    assert await _stopped_in_time(down.close(), 0.3) < 1.5
    assert len(down.registrations) == 0


async def test_a_refused_batch_is_dropped_not_retried_and_the_breaker_stays_closed(
    pg_dsn: str, receipt_server: str, client_for: Callable[..., ReceiptClient]
) -> None:
    limit = receipt_service.BATCH_SIZE_MAX
    client = client_for(receipt_server, batch_size_max=limit + 1, pending_max=limit + 1)
    before = _dropped()
    client.register([record(f"RCP-20261202-G0000000000{i:05d}") for i in range(limit + 1)])
    await until(lambda: client.registrations.batches_sent == 1)
    assert len(client.registrations) == 0 and _dropped() - before == limit + 1
    assert client.breaker.state == CLOSED and await _count(pg_dsn) == 0


@pytest.mark.parametrize(("env", "message"), [
    ({"KASSA_RECEIPT_BLOCK_SIZE": "65537"}, "KASSA_RECEIPT_BLOCK_SIZE=65537: at most 65536"),
    ({"KASSA_RECEIPT_BATCH_SIZE": "10001"}, "KASSA_RECEIPT_BATCH_SIZE=10001: at most 10000"),
    ({"KASSA_RECEIPT_PENDING_MAX": "10"}, "KASSA_RECEIPT_PENDING_MAX must not be below"),
    ({"KASSA_RECEIPT_RETRY_MAX_MS": "soon"}, "KASSA_RECEIPT_RETRY_MAX_MS='soon' is not a valid"),
])
def test_receipt_settings_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(env)
    assert native.BLOCK_SPAN == 65536 == RECEIPT_BLOCK_SIZE_MAX
    assert receipt_service.BATCH_SIZE_MAX == RECEIPT_BATCH_SIZE_MAX
