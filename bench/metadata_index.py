"""What the metadata indexes (migration 013: GIN jsonb_path_ops, partial on metadata <> '{}')
cost a transfer: WAL bytes per transfer and the indexes' size, for transfers without and with
metadata, each on a database with and without the indexes.

Run as `python -m bench.metadata_index [--transfers N]` (about a minute). It starts its own
PostgreSQL under /tmp (nothing else writes to it, so the WAL difference is the transfers'),
makes one migrated database per case and posts the transfers through the real app in
process (ASGI, no Redis), `?wait=true` in batches of 100 so every transfer is final in the
window. A CHECKPOINT before each window gives every case the same full-page-image start.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import asyncpg
import httpx

from bench.wal import lsn_bytes
from server.adapters.postgres.migrate import apply_migrations
from server.process.asgi import create_app
from server.process.runtime import build_runtime
from server.process.settings import Settings
from tests.fixtures.servers import start_postgres

KEY = "bench-admin-key"
INDEXES = ("journals_metadata", "accounts_metadata")
SIZE_SQL = "SELECT coalesce(sum(pg_relation_size(c.oid)), 0) FROM pg_class c WHERE relname = ANY($1)"


async def run_case(dsn: str, transfers: int, *, indexes: bool, metadata: bool) -> dict[str, Any]:
    await apply_migrations(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        if not indexes:
            await conn.execute("DROP INDEX journals_metadata, accounts_metadata")
        settings = Settings(database_url=dsn, redis_url=None, api_keys=f"{KEY}:admin")
        app = create_app()
        runtime = await build_runtime(settings)
        app.state.runtime = runtime
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://kassa",
                                         headers={"Authorization": f"Bearer {KEY}"}) as http:
                await setup(http)
                await conn.execute("CHECKPOINT")
                size_before = await conn.fetchval(SIZE_SQL, list(INDEXES))
                start = str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))
                await post(http, transfers, metadata)
                end = str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))
                size_after = await conn.fetchval(SIZE_SQL, list(INDEXES))
        finally:
            await runtime.stop()
        done = await conn.fetchval("SELECT count(*) FROM journals WHERE type = 'transfer'"
                                   " AND status = 'completed'")
    finally:
        await conn.close()
    assert done == transfers, f"{done} of {transfers} transfers completed"
    return {"wal_bytes_per_transfer": round((lsn_bytes(end) - lsn_bytes(start)) / transfers, 1),
            "index_bytes_before": size_before, "index_bytes_after": size_after}


async def setup(http: httpx.AsyncClient) -> None:
    for account in ("a", "b"):
        r = await http.post("/v1/accounts", json={"id": account, "currency": "USD"})
        assert r.status_code == 201, r.text
    r = await http.post("/v1/transactions?wait=true", json={
        "type": "deposit", "currency": "USD", "destination": "a", "amount": 10**12})
    assert r.status_code == 201, r.text


async def post(http: httpx.AsyncClient, transfers: int, metadata: bool) -> None:
    for first in range(0, transfers, 100):
        items = [{"type": "transfer", "currency": "USD", "source": "a", "destination": "b",
                  "amount": 1, **({"metadata": {"order": f"o-{i}", "channel": "web"}}
                                  if metadata else {})}
                 for i in range(first, min(first + 100, transfers))]
        r = await http.post("/v1/transactions/batch?wait=true", json={"transactions": items})
        assert r.status_code == 201, r.text


async def main(transfers: int) -> None:
    server = start_postgres(fsync=False)
    try:
        cases = {"no metadata, with the indexes": (True, False),
                 "no metadata, without them": (False, False),
                 "with metadata, with the indexes": (True, True),
                 "with metadata, without them": (False, True)}
        admin = await asyncpg.connect(server.dsn())
        print(f"{'case':34} {'WAL B/transfer':>15} {'index bytes before -> after':>28}")
        for number, (name, (indexes, metadata)) in enumerate(cases.items()):
            await admin.execute(f"CREATE DATABASE bench_{number}")
            figures = await run_case(server.dsn(f"bench_{number}"), transfers,
                                     indexes=indexes, metadata=metadata)
            print(f"{name:34} {figures['wal_bytes_per_transfer']:>15} "
                  f"{figures['index_bytes_before']:>13} -> {figures['index_bytes_after']}")
        await admin.close()
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=5000)
    asyncio.run(main(parser.parse_args().transfers))
