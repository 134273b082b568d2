"""/readyz and the write path agree on receipt codes: whenever /readyz would say 200, a
write's take of a code succeeds, and whenever a write is refused for codes, /readyz says
503 (`receipt_codes: exhausted`).

The real ReceiptClient (its code stock and breaker) and the real readiness rules
(Runtime.receipt_codes, Runtime.dependency_states, HealthCheck) against a gRPC receipt
service whose answers the test scripts: blocks, a refusal (INTERNAL: the breaker counts
it as an answer, not an outage), an outage (UNAVAILABLE), then blocks again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from core.kit.code_cipher import CodeCipher
from core.ledger.errors import Unavailable
from core.pipeline.health import HealthCheck
from server.adapters.grpc.gen.kassa.v1 import receipts_pb2 as rpb
from server.adapters.grpc.gen.kassa.v1 import receipts_pb2_grpc as rpb_grpc
from server.adapters.grpc.receipt_client import ReceiptClient
from server.process.runtime import Runtime
from tests.fakes.clocks import FakePing
from tests.fixtures.servers import free_port

BLOCK = 4


class ScriptedReceipts(rpb_grpc.ReceiptServiceServicer):
    """ReserveCodes answers as `mode` says: `ok` (a block), `refuse`, `down`, `stalled`."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.answered: dict[str, int] = {}
        self._blocks = 0

    async def ReserveCodes(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        mode = self.mode
        self.answered[mode] = self.answered.get(mode, 0) + 1
        if mode == "refuse":
            await context.abort(grpc.StatusCode.INTERNAL, "a bug on the service's side")
        if mode == "down":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "database unavailable")
        if mode == "stalled":  # answers after the client's deadline (a stopped process)
            await asyncio.sleep(1)
        self._blocks += 1
        return rpb.ReserveCodesResponse(block=self._blocks, count=request.count)


@pytest.fixture
async def service() -> AsyncIterator[tuple[ScriptedReceipts, str]]:
    servicer, server = ScriptedReceipts(), grpc.aio.server()
    rpb_grpc.add_ReceiptServiceServicer_to_server(servicer, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    try:
        yield servicer, address
    finally:
        await server.stop(None)


async def until(condition: Any, timeout_s: float = 10) -> None:
    """Poll `condition` (state another task changes) until true, at most `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def agree(health: HealthCheck, client: ReceiptClient) -> bool:
    """Ask /readyz's rules, then take one code as a write would: they must agree."""
    ready = await health.readiness()
    try:
        await client.next_codes(1)
        accepted = True
    except Unavailable:
        accepted = False
    assert ready.ready == accepted, (ready.checks, ready.reasons, accepted)
    return accepted


TIMEOUT_MS = 300


def readiness_of(client: ReceiptClient) -> HealthCheck:
    """The worker's readiness rules over this client, as runtime.py composes them."""
    runtime: Any = SimpleNamespace(receipts=client, notifier=None, redis_breaker=None)
    return HealthCheck(database=FakePing(), redis=None, has_room=lambda: True,
                       dependency_states=lambda: Runtime.dependency_states(runtime),
                       stopping=lambda: False,
                       receipt_codes=lambda: Runtime.receipt_codes(runtime),
                       required=("receipt_service",))


Worker = tuple[ScriptedReceipts, ReceiptClient, HealthCheck]


@pytest.fixture
async def worker(service: tuple[ScriptedReceipts, str]) -> AsyncIterator[Worker]:
    """A worker's ReceiptClient, started and holding its first block, and its readiness."""
    servicer, address = service
    client = ReceiptClient(address, cipher=CodeCipher(b"readiness secret"), block_size=BLOCK,
                           timeout_ms=TIMEOUT_MS, retry_max_ms=50, breaker_failures_max=2,
                           breaker_reset_ms=200)
    client.start()
    try:
        await until(lambda: client.codes.available > 0)
        yield servicer, client, readiness_of(client)
    finally:
        await client.close()


async def test_readiness_says_what_a_write_would_get_through_refusals_and_outages(
        worker: Worker) -> None:
    servicer, client, health = worker
    assert await agree(health, client)
    for mode in ("refuse", "down"):
        servicer.mode = mode
        answered = servicer.answered.get(mode, 0)
        while client.codes.available:  # writes use the stock up
            assert await agree(health, client)
        # The client handled a refusal once the service answered the next attempt.
        await until(lambda: servicer.answered.get(mode, 0) >= answered + 2)  # noqa: B023
        assert not await agree(health, client), mode
    # The service answers again: from the first moment /readyz would say 200, a write
    # gets its code at once.
    servicer.mode = "ok"
    async with asyncio.timeout(10):
        while not (await health.readiness()).ready:
            await asyncio.sleep(0.001)
    assert await agree(health, client)


async def test_the_one_window_a_refill_under_way_that_fails_within_the_receipt_timeout(
        worker: Worker) -> None:
    """The stock is dry and a reservation is under way, nothing failed yet: /readyz says
    `refilling` (200) and a write waits for that block, at most KASSA_RECEIPT_TIMEOUT_MS.
    If the call fails meanwhile (here: it outlives its deadline), that write is refused
    after its wait, and from then on /readyz says `exhausted` (503). This is the bounded
    window where /readyz said 200 and a write got 503: one receipt timeout, once."""
    servicer, client, health = worker
    servicer.mode = "stalled"
    await client.next_codes(client.codes.available)  # the refill call is now stalled
    await until(lambda: servicer.answered.get("stalled", 0) >= 1)
    ready = await health.readiness()
    assert ready.ready and ready.checks["receipt_codes"] == "refilling", ready.checks
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Unavailable):
        await client.next_codes(1)
    waited_s = loop.time() - started
    assert waited_s <= TIMEOUT_MS / 1000 + 0.2, waited_s
    after = await health.readiness()
    assert not after.ready and after.checks["receipt_codes"] == "exhausted", after.checks
