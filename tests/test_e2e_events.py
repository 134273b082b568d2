"""Events end to end: `kassa serve` publishing finished journals (the journal row is the
outbox) to a real Tansu broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import asyncpg
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer

from server.adapters.kafka.relay import APPLICATION_NAME, RELAY_LOCK_ID
from tests.conftest import new_database
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.kassa_server import KassaProcess, start_kassa
from tests.fixtures.servers import PostgresServer, RedisServer
from tests.invariants import UNPUBLISHED, assert_invariants, scalar, unpublished_events
from tests.load import SERVE_ENV, Reply, drive, open_accounts, random_transfers, wait_terminal

pytestmark = pytest.mark.slow
TOPIC = "kassa.transactions"
EVENT_KEYS = {"event", "receipt_code", "journal_id", "type", "currency", "amount", "legs",
              "entries", "error", "occurred_at"}


def serve(dsn: str, redis_url: str, bootstrap: str, **env: str) -> KassaProcess:
    return start_kassa({**SERVE_ENV, "KASSA_DATABASE_URL": dsn, "KASSA_REDIS_URL": redis_url,
                        "KASSA_KAFKA_BOOTSTRAP_SERVERS": bootstrap, **env})


async def consume(bootstrap: str, expected: set[str], timeout_s: float = 30) -> dict[str, list[dict]]:
    """Read the topic as a consumer group until every expected receipt was seen."""
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=f"g{time.time_ns()}",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                session_timeout_ms=1_500, heartbeat_interval_ms=300,
                                rebalance_timeout_ms=1_000)
    await consumer.start()
    seen: dict[str, list[dict]] = {}
    try:
        async with asyncio.timeout(timeout_s):
            while not expected <= seen.keys():
                batches = await consumer.getmany(timeout_ms=500)
                for messages in batches.values():
                    for m in messages:
                        event = msgspec.json.decode(m.value)
                        assert m.key.decode() == event["receipt_code"]
                        seen.setdefault(event["receipt_code"], []).append(event)
    finally:
        await consumer.stop()
    return seen


async def journal_count(dsn: str) -> int:
    return int(await scalar(dsn, "SELECT count(*) FROM journals WHERE status <> 'processing'"))


async def relay_state(dsn: str) -> tuple[int, int, int]:
    """(relay sessions, relay lock holders, finished journals past the Kafka cursor) on
    this database."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
            "        AND datname = current_database()) AS sessions,"
            " (SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            "  WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()"
            "  AND ((l.classid::bigint << 32) | l.objid::bigint) = $2) AS holders,"
            f" ({UNPUBLISHED.replace('$1', '$3')}) AS waiting", APPLICATION_NAME,
            RELAY_LOCK_ID, "kafka")
    finally:
        await conn.close()
    return row["sessions"], row["holders"], row["waiting"]


async def wait_all_published(dsn: str, timeout_s: float = 10,
                             sessions: int = 0) -> tuple[int, int]:
    """Once the Kafka cursor passed every finished journal (and at least `sessions` relays
    are connected): (relay sessions, lock holders). At the timeout, the state then."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while (state := await relay_state(dsn))[2] or state[0] < sessions:
                await asyncio.sleep(0.05)
    state = await relay_state(dsn)
    assert state[2] == 0, f"{state[2]} journals' events unpublished after {timeout_s}s"
    return state[0], state[1]


def receipts_of(replies: list[Reply | Exception]) -> dict[str, int]:
    out = {}
    for r in replies:
        assert isinstance(r, Reply), r
        body = r.body if r.status in (201, 202) else r.body.get("error", {})
        if "receipt_code" in body:
            out[body["receipt_code"]] = r.status
    return out


async def test_every_finished_transaction_is_published_with_the_documented_shape(
        pg_server: PostgresServer, redis_server: RedisServer, kafka_broker: KafkaBroker) -> None:
    dsn = await new_database(pg_server)
    kassa = serve(dsn, redis_server.url, kafka_broker.bootstrap)
    try:
        ids = [f"e{i}" for i in range(10)]
        await open_accounts(kassa.url, ids, 500)
        replies = await drive(kassa.url, random_transfers(ids, 300, 300, wait=True), 20)
        receipts = receipts_of(replies)
        assert {201, 422} <= set(receipts.values()), "both outcomes must be published"
        seen = await consume(kafka_broker.bootstrap, set(receipts))
        assert await journal_count(dsn) == len(seen), "one event per finished journal, no more"
        for code, status in receipts.items():
            event = seen[code][0]
            assert set(event) == EVENT_KEYS
            assert event["event"] == ("transaction.completed" if status == 201 else "transaction.failed")
            assert event["type"] == "transfer" and event["currency"] == "USD"
            assert [set(leg) for leg in event["legs"]] == [{"source", "destination", "amount"}]
            assert event["amount"] == event["legs"][0]["amount"] > 0
            if status == 201:
                assert event["error"] is None and len(event["entries"]) == 2
                assert {e["direction"] for e in event["entries"]} == {"debit", "credit"}
            else:
                assert event["error"]["code"] == "insufficient_funds" and event["entries"] == []
        # Both workers run a relay; one holds the lock, publishes and moves the cursor.
        assert await wait_all_published(dsn) == (2, 1)
        await assert_invariants(dsn)
    finally:
        kassa.stop()


async def test_kafka_down_loses_nothing(pg_server: PostgresServer, redis_server: RedisServer,
                                        kafka_broker: KafkaBroker) -> None:
    dsn = await new_database(pg_server)
    kassa = serve(dsn, redis_server.url, kafka_broker.bootstrap)
    try:
        await open_accounts(kassa.url, ["d0", "d1"], 1_000_000)
        before = await journal_count(dsn)
        await wait_all_published(dsn)  # the funding events went to the broker that dies
        kafka_broker.stop()
        replies = await drive(kassa.url, random_transfers(["d0", "d1"], 1000, 10), 50)
        receipts = receipts_of(replies)
        assert len(receipts) == 1000
        await wait_terminal(kassa.url, list(receipts), 60)
        waiting = await unpublished_events(dsn)
        assert waiting >= 1000, "with Kafka down the journals wait past the Kafka cursor"
        kafka_broker.start()  # a new, empty broker on the same address
        seen = await consume(kafka_broker.bootstrap, set(receipts), timeout_s=60)
        # The new broker starts empty: it holds exactly the 1,000 events of the outage.
        assert seen.keys() == set(receipts)
        assert await journal_count(dsn) == before + 1000
        assert "[KAFKA ERROR]" in kassa.log()
        assert await wait_all_published(dsn) == (2, 1)
    finally:
        kassa.stop()


async def test_a_killed_worker_s_events_are_published_by_another_process(
        pg_server: PostgresServer, redis_server: RedisServer, kafka_broker: KafkaBroker) -> None:
    dsn = await new_database(pg_server)
    kassa = serve(dsn, redis_server.url, kafka_broker.bootstrap)
    try:
        await open_accounts(kassa.url, ["x0", "x1"], 1_000_000)
        kafka_broker.stop()  # commits keep landing; nothing can be published
        replies = await drive(kassa.url, random_transfers(["x0", "x1"], 200, 10, wait=True), 20)
        receipts = receipts_of(replies)
        assert set(receipts.values()) == {201}
        for pid in kassa.worker_pids():  # every process that committed them dies
            os.kill(pid, signal.SIGKILL)
        kafka_broker.start()
        # gunicorn's new workers (other processes) publish what the dead ones committed.
        seen = await consume(kafka_broker.bootstrap, set(receipts), timeout_s=60)
        assert set(receipts) <= seen.keys()
        # The dead workers' connections closed, so their lock went to a new worker. The
        # second new worker may still be starting when the first has published everything.
        assert await wait_all_published(dsn, sessions=2) == (2, 1), kassa.log_tail(80)
        await assert_invariants(dsn)
    finally:
        kassa.stop()
