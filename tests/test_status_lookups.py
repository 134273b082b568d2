"""Status lookups of unknown receipts never open the breaker that the write path needs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from core.kit.breaker import CLOSED
from server.adapters.grpc.clients import ReceiptClient
from server.process.asgi import create_app
from server.process.runtime import build_runtime
from server.services.receipts import service as receipt_service
from tests.conftest import ADMIN_KEY, READ_KEY, WRITE_KEY, make_settings
from tests.fixtures.servers import free_port
from tests.grpc_helpers import serving

pytestmark = pytest.mark.timeout(60)

LOOKUPS = 12
BREAKER_FAILURES_MAX = 3


@pytest.fixture
async def client(pg_dsn: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app in this process with a real receipt service and a short-fused breaker."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    async with serving(receipt_service.serve(port, pg_dsn), address):
        app = create_app()
        runtime = await build_runtime(make_settings(
            pg_dsn, redis_url, receipt_service_addr=address,
            breaker_failures_max=BREAKER_FAILURES_MAX, breaker_reset_s=60.0))
        app.state.runtime = runtime
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://kassa") as http:
                http.runtime = runtime  # type: ignore[attr-defined]
                yield http
        finally:
            await runtime.stop()


async def test_unknown_receipt_lookups_leave_the_write_path_open(client: httpx.AsyncClient) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = await client.post("/v1/accounts", json={"id": "alice", "currency": "USD"}, headers=admin)
    assert r.status_code == 201
    receipts = client.runtime.receipts  # type: ignore[attr-defined]
    assert isinstance(receipts, ReceiptClient)

    read = {"Authorization": f"Bearer {READ_KEY}"}
    for i in range(LOOKUPS):
        code = f"RCP-20261124-{i:016d}"  # well formed, never issued
        r = await client.get(f"/v1/transactions/{code}/status", headers=read)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
    assert receipts.breaker.state == CLOSED

    write = {"Authorization": f"Bearer {WRITE_KEY}"}
    r = await client.post("/v1/transactions", headers=write, json={
        "type": "deposit", "currency": "USD", "destination": "alice", "amount": 5})
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == f"/v1/transactions/{r.json()['receipt_code']}"


async def test_an_open_read_breaker_leaves_writes_alone(client: httpx.AsyncClient) -> None:
    """The read path (status lookups) and the write path (codes, registrations) trip apart."""
    receipts = client.runtime.receipts  # type: ignore[attr-defined]
    assert isinstance(receipts, ReceiptClient)
    for _ in range(BREAKER_FAILURES_MAX):
        receipts.read_breaker.record_failure()
    assert receipts.read_breaker.state != CLOSED and receipts.breaker.state == CLOSED
    assert await receipts.get_receipt("RCP-20261124-0000000000000001") is None  # refused at once
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = await client.post("/v1/accounts", json={"id": "bob", "currency": "USD"}, headers=admin)
    assert r.status_code == 201
    r = await client.post("/v1/transactions?wait=true", headers=admin, json={
        "type": "deposit", "currency": "USD", "destination": "bob", "amount": 5})
    assert r.status_code == 201, r.text
    assert receipts.breaker.state == CLOSED
