"""Two `kassa serve` instances on one PostgreSQL, Redis and broker, under one shared load,
with one instance's workers SIGKILLed mid-run: every receipt unique, terminal and visible
from both instances, each event published, the ledger's invariants intact."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.conftest import new_database
from tests.fixtures.kassa_server import KassaProcess, start_kassa
from tests.fixtures.servers import PostgresServer, RedisServer
from tests.invariants import assert_invariants, unpublished_events
from tests.load import (
    SERVE_ENV,
    Reply,
    drive,
    open_accounts,
    random_transfers,
    status_counts,
    wait_terminal,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FAST_RECOVERY = {"KASSA_LEASE_S": "2", "KASSA_SWEEP_INTERVAL_S": "0.5"}


def instance(dsn: str, redis_url: str, bootstrap: str) -> KassaProcess:
    return start_kassa({**SERVE_ENV, **FAST_RECOVERY, "KASSA_DATABASE_URL": dsn,
                        "KASSA_REDIS_URL": redis_url, "KASSA_KAFKA_BOOTSTRAP_SERVERS": bootstrap})


def accepted(replies: list[Reply | Exception]) -> list[str]:
    return [r.body["receipt_code"] for r in replies if isinstance(r, Reply) and r.status == 202]


async def test_two_instances_share_one_ledger_through_a_crash(
        pg_server: PostgresServer, redis_server: RedisServer, kafka_bootstrap: str) -> None:
    dsn = await new_database(pg_server)
    first = instance(dsn, redis_server.url, kafka_bootstrap)
    second = instance(dsn, redis_server.url, kafka_bootstrap)
    try:
        ids = [f"m{i}" for i in range(40)]
        await open_accounts(first.url, ids, 10_000)
        loads = [asyncio.create_task(drive(kassa.url, random_transfers(ids, 2000, 300, seed=n), 32))
                 for n, kassa in enumerate((first, second))]
        await asyncio.sleep(1.0)
        victims = first.worker_pids()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        replies = [r for load in loads for r in await load]
        receipts = accepted(replies)
        assert set(status_counts(replies)) <= {"202", "422", "503", "ServerDisconnectedError",
                                                "ClientOSError", "ClientConnectorError",
                                                "ClientPayloadError"}
        assert len(receipts) > 500, status_counts(replies)
        assert len(set(receipts)) == len(receipts), "a receipt code was handed out twice"
        for kassa in (first, second):  # every receipt visible, and final, from both
            final = await wait_terminal(kassa.url, receipts, 90)
            assert len(final) == len(receipts)
        assert not set(victims) & set(first.worker_pids()), "gunicorn replaced the killed workers"
        async with asyncio.timeout(30):
            while await unpublished_events(dsn):
                await asyncio.sleep(0.2)
        await assert_invariants(dsn)
    finally:
        first.stop()
        second.stop()
