"""Receipt codes, the receipt service and its client, against real gRPC and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import grpc
import pytest

import native
from core.breaker import CLOSED, OPEN
from core.errors import InvalidRequest, Unavailable
from core.ports import ReceiptRequest
from native import _py
from server.grpc import receipt_service
from server.grpc.clients import ReceiptClient, breaker_states
from server.grpc.gen.kassa.v1 import receipts_pb2 as pb
from server.grpc.gen.kassa.v1 import receipts_pb2_grpc as pb_grpc
from server.grpc.runtime import start_server, stop_server
from tests.fixtures.servers import free_port
from tests.grpc_helpers import serving, start_receipt_process, stop_process, wait_serving

CODE = re.compile(r"^RCP-\d{8}-[0-9A-HJKMNP-TV-Z]{16}$")
CODES_PER_PROCESS = 100_000
# The compiled twin too, when it is built (otherwise both names are the same function).
IMPLS = {"py": _py.receipt_codes}
if native.USING_EXTENSIONS:
    IMPLS["native"] = native.receipt_codes


def _make_codes(impl: str, count: int) -> tuple[int, list[str]]:
    """In a child process: `count` codes in batches of 50, as the service makes them."""
    make = IMPLS[impl]
    last_ms = last_seq = 0
    codes: list[str] = []
    while len(codes) < count:
        batch, last_ms, last_seq = make(1, os.getpid(), last_ms, last_seq,
                                        time.time_ns() // 1_000_000, 50)
        codes += batch
    return os.getpid(), codes[:count]


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_codes_unique_across_processes_and_increasing_within_one(impl: str) -> None:
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


def test_build_receipts_answers_every_item_in_order() -> None:
    items = [
        pb.NewReceipt(type="transfer", currency="USD", amount=5, account_ids=["a", "b"]),
        pb.NewReceipt(type="bogus", currency="USD", amount=5),
        pb.NewReceipt(type="deposit", currency="USD", amount=0),
        pb.NewReceipt(type="deposit", currency="EUR", amount=7, account_ids=["c"]),
    ]
    clock = receipt_service.store.CodeClock()
    response, coded, clock = receipt_service.store.build_receipts(items, 3, 1234, clock, 1_800_000_000_000)
    kinds = [r.WhichOneof("result") for r in response.results]
    assert kinds == ["code", "error", "error", "code"]
    assert [i for i, _ in coded] == [0, 3]
    assert [c for _, c in coded] == [response.results[0].code, response.results[3].code]
    assert response.results[1].error.code == "invalid_request"
    assert clock.last_ms == 1_800_000_000_000 and clock.last_seq == 1


@pytest.fixture
async def receipt_server(pg_dsn: str) -> AsyncIterator[str]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    async with serving(receipt_service.serve(port, pg_dsn, node_id=5), address):
        yield address


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[..., ReceiptClient]]:
    clients: list[ReceiptClient] = []

    def make(address: str, **kw: float) -> ReceiptClient:
        client = ReceiptClient(address, **kw)  # type: ignore[arg-type]
        client.start()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def _seed_accounts(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "INSERT INTO accounts (id, currency, contact) VALUES "
        "('acc_a', 'USD', '{\"email\": \"a@example.com\", \"phone\": \"+1555\"}'), ('acc_b', 'USD', NULL)"
    )
    await conn.close()


async def test_receipts_are_persisted_before_the_call_returns(
    pg_dsn: str, receipt_server: str, client_for: Callable[..., ReceiptClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _seed_accounts(pg_dsn)
    client = client_for(receipt_server)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    request = ReceiptRequest("transfer", "USD", 100, ["acc_a", "acc_b", "acc_gone"])

    async def one() -> str:
        code = await client.new_receipt(request)
        assert await pool.fetchval("SELECT count(*) FROM receipts WHERE code = $1", code) == 1
        return code

    with caplog.at_level(logging.INFO, logger="kassa.grpc.clients"):
        codes = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(120))), 10)
    assert len(set(codes)) == 120 and all(CODE.match(c) for c in codes)
    calls = [r.getMessage() for r in caplog.records if "[RECEIPT BATCHER] Created" in r.getMessage()]
    assert 3 <= len(calls) < 10, calls  # batched: at most 50 per call
    accounts = json.loads(await pool.fetchval("SELECT accounts FROM receipts LIMIT 1"))
    assert accounts[0] == {"id": "acc_a", "currency": "USD", "status": "active", "found": True,
                           "contact": {"email": "a@example.com", "phone": "+1555"}}
    assert accounts[1]["contact"] is None and accounts[2] == {
        "id": "acc_gone", "currency": None, "status": None, "contact": None, "found": False}
    await pool.close()


async def test_status_updates_are_batched_and_never_go_backwards(
    receipt_server: str, client_for: Callable[..., ReceiptClient]
) -> None:
    client = client_for(receipt_server, flush_interval_ms=10)
    code = await client.new_receipt(ReceiptRequest("deposit", "USD", 5, ["acc_x"]))
    first = await client.get_receipt(code)
    assert first is not None and first.status == "processing" and first.error_code is None
    client.status_changed(code, "executing", None)
    client.status_changed(code, "failed", "insufficient_funds")
    client.status_changed(code, "executing", None)  # late and backwards: ignored
    client.status_changed("RCP-20260101-0000000000000000", "completed", None)  # unknown: dropped
    for _ in range(100):
        got = await client.get_receipt(code)
        if got is not None and got.status != "processing":
            break
        await asyncio.sleep(0.02)
    assert got is not None and (got.status, got.error_code) == ("failed", "insufficient_funds")
    assert got.updated_at.endswith("Z") and got.updated_at > first.updated_at
    assert await client.get_receipt("RCP-20260101-0000000000000000") is None


async def test_invalid_item_fails_only_its_caller(
    receipt_server: str, client_for: Callable[..., ReceiptClient]
) -> None:
    client = client_for(receipt_server)
    good = client.new_receipt(ReceiptRequest("deposit", "USD", 5, []))
    bad = client.new_receipt(ReceiptRequest("deposit", "USD", -5, []))
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert isinstance(results[0], str) and CODE.match(results[0])
    assert isinstance(results[1], InvalidRequest)


class StallingServicer(receipt_service.ReceiptServicer):
    async def CreateReceipts(  # noqa: N802
        self, request: pb.CreateReceiptsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateReceiptsResponse:
        await asyncio.sleep(1.0)
        return await super().CreateReceipts(request, context)


async def test_slow_service_answers_unavailable_within_the_timeout_and_persists_nothing(
    pg_dsn: str, client_for: Callable[..., ReceiptClient]
) -> None:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    servicer = StallingServicer(pool, node_id=1)
    server, port, checker = await start_server(
        lambda s: pb_grpc.add_ReceiptServiceServicer_to_server(servicer, s), "stall", "127.0.0.1:0"
    )
    try:
        client = client_for(f"127.0.0.1:{port}", timeout_ms=300, flush_interval_ms=10)
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.new_receipt(ReceiptRequest("deposit", "USD", 1, [])) for _ in range(5)),
            return_exceptions=True,
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(r, Unavailable) for r in results), results
        assert elapsed < 0.45, elapsed
        await asyncio.sleep(1.0)  # past the stall: the cancelled handler wrote nothing
        assert await pool.fetchval("SELECT count(*) FROM receipts") == 0
    finally:
        await stop_server(server, checker)
        await pool.close()


async def _load(client: ReceiptClient, outcomes: list[tuple[float, bool]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await client.new_receipt(ReceiptRequest("deposit", "USD", 1, []))
            outcomes.append((time.monotonic(), True))
        except Unavailable:
            outcomes.append((time.monotonic(), False))
            await asyncio.sleep(0.005)


async def _until(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_killed_service_opens_the_breaker_then_recovers_on_restart(
    pg_dsn: str, client_for: Callable[..., ReceiptClient]
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = start_receipt_process(port, pg_dsn)
    procs = [proc]
    try:
        await wait_serving(address)
        client = client_for(address, breaker_failures_max=3, breaker_reset_ms=300)
        outcomes: list[tuple[float, bool]] = []
        stop = asyncio.Event()
        load = [asyncio.create_task(_load(client, outcomes, stop)) for _ in range(20)]
        await _until(lambda: sum(ok for _, ok in outcomes) >= 200, 10)

        stop_process(proc, signal.SIGKILL)  # mid-load, no goodbye
        await _until(lambda: client.breaker.state == OPEN, 3)
        assert breaker_states(client) == {"receipt_service": OPEN}
        started = time.monotonic()
        with pytest.raises(Unavailable) as refused:
            await client.new_receipt(ReceiptRequest("deposit", "USD", 1, []))
        assert time.monotonic() - started < 0.05  # fails fast, no 2 s timeout
        assert refused.value.retry_after_s is not None

        procs.append(start_receipt_process(port, pg_dsn))
        recovered_from = time.monotonic()
        await _until(lambda: any(ok and t > recovered_from for t, ok in outcomes), 15)
        await _until(lambda: client.breaker.state == CLOSED, 3)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*load), 5)
        codes = await asyncpg.connect(pg_dsn)
        persisted = await codes.fetchval("SELECT count(*) FROM receipts")
        await codes.close()
        assert persisted >= sum(ok for _, ok in outcomes)
    finally:
        exit_codes = [stop_process(p) for p in procs]
    assert exit_codes[-1] == 0  # SIGTERM is a clean shutdown
