"""PostgreSQL down: requests get a fast 503 `unavailable` with Retry-After, never a 500."""

from __future__ import annotations

import asyncio

import httpx

from server.adapters.postgres.migrate import apply_migrations
from server.process.asgi import create_app
from server.process.runtime import build_runtime
from tests.conftest import ADMIN_KEY, make_settings
from tests.fixtures.servers import start_postgres


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
