"""Node ids for in-process receipt codes are leased from PostgreSQL: two live processes
never hold the same one, an explicit id held by a live process refuses, an expired or
released lease is taken over, a lost lease is replaced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from server.adapters.postgres.nodes import (
    NodeIdTaken,
    keep_node_id,
    lease_node_id,
    release_node_ids,
    renew_node_id,
)
from server.adapters.postgres.pool import create_pool

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(pg_dsn, min_size=1, max_size=8)
    yield pool
    await pool.close()


async def test_live_processes_get_distinct_ids_even_when_racing(db: asyncpg.Pool) -> None:
    ids = await asyncio.gather(*(lease_node_id(db, f"host:{n}", 30) for n in range(8)))
    assert sorted(ids) == list(range(8))


async def test_an_explicit_id_held_by_a_live_process_refuses(db: asyncpg.Pool) -> None:
    assert await lease_node_id(db, "host-a:1", 30, wanted=7) == 7
    with pytest.raises(NodeIdTaken, match="KASSA_NODE_ID=7"):
        await lease_node_id(db, "host-b:1", 30, wanted=7)
    assert await lease_node_id(db, "host-a:1", 30, wanted=7) == 7, "its holder may lease again"
    await release_node_ids(db, "host-a:1")
    assert await lease_node_id(db, "host-b:1", 30, wanted=7) == 7, "free once released"


async def test_an_expired_lease_is_taken_over_and_its_holder_learns_it(db: asyncpg.Pool) -> None:
    assert await lease_node_id(db, "dead:1", 0.05) == 0
    await asyncio.sleep(0.1)
    assert await lease_node_id(db, "alive:1", 30) == 0, "the lowest id again, its lease expired"
    assert not await renew_node_id(db, 0, "dead:1", 30), "the old holder cannot renew it"
    changed: list[int] = []
    keeper = asyncio.create_task(keep_node_id(db, 0, "dead:1", 0.3, changed.append))
    try:
        async with asyncio.timeout(5):
            while not changed:
                await asyncio.sleep(0.02)
    finally:
        keeper.cancel()
    assert changed == [1], "a lost lease is replaced by a free id, never shared"
