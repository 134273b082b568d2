"""The outbox relay against a real PostgreSQL and a real Kafka-compatible broker (Tansu)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable

import asyncpg
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY

from server.kafka import relay as relay_module
from server.kafka.relay import OutboxRelay
from tests.fixtures.kafka import KafkaBroker

pytestmark = pytest.mark.timeout(30)

TOPIC = "kassa.events"
_refs = itertools.count()


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(pg_dsn, min_size=1, max_size=8) as p:
        yield p


async def insert_events(pool: asyncpg.Pool, count: int) -> list[tuple[str, bytes]]:
    """Commit `count` finished journals with their outbox rows; returns (receipt code, payload)."""
    codes = [f"R{next(_refs):08d}" for _ in range(count)]
    payloads = [_event(code) for code in codes]
    async with pool.acquire() as conn, conn.transaction():
        ids = await conn.fetch(
            "INSERT INTO journals (external_ref, type, status, currency, payload)"
            " SELECT ref, 'transfer', 'completed', 'EUR', '[]'::jsonb FROM unnest($1::text[]) AS ref"
            " RETURNING id", codes)
        await conn.execute(
            "INSERT INTO outbox (journal_id, receipt_code, payload)"
            " SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[])",
            [r["id"] for r in ids], codes, payloads)
    return list(zip(codes, payloads, strict=True))


def _event(code: str) -> bytes:
    return msgspec.json.encode({"event": "transaction.completed", "receipt_code": code,
                                "currency": "EUR", "entries": [], "error": None, "note": "é€"})


async def consume(bootstrap: str, count: int, *, group: str = "test-consumer",
                  timeout_s: float = 20.0, linger_s: float = 0.3) -> list[tuple[str, bytes]]:
    """Read (key, value) pairs as a consumer group until `count` arrived, then `linger_s` more
    to catch extras; commits the offsets it read."""
    # Tansu answers the first JoinGroup only after about half the session timeout.
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                session_timeout_ms=1_500, heartbeat_interval_ms=300,
                                rebalance_timeout_ms=1_000)
    await consumer.start()
    got: list[tuple[str, bytes]] = []
    try:
        try:
            async with asyncio.timeout(timeout_s):
                while len(got) < count:
                    got += await _poll(consumer, 0.5)
        except TimeoutError:
            raise AssertionError(f"{len(got)} of {count} messages after {timeout_s}s; "
                                 f"assignment {consumer.assignment()}") from None
        got += await _poll(consumer, linger_s)
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def _poll(consumer: AIOKafkaConsumer, timeout_s: float) -> list[tuple[str, bytes]]:
    batches = await consumer.getmany(timeout_ms=int(timeout_s * 1000))
    return [(m.key.decode(), m.value) for msgs in batches.values() for m in msgs
            if m.key is not None and m.value is not None]


async def unpublished(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


async def wait_all_published(pool: asyncpg.Pool, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while await unpublished(pool):
            await asyncio.sleep(0.02)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_rows_published_once_in_order_with_key_and_payload(
        pool: asyncpg.Pool, kafka_broker: KafkaBroker) -> None:
    events = await insert_events(pool, 1_200)  # several batches of 500
    published_before = metric("kassa_outbox_published_total")
    relay = OutboxRelay(pool, kafka_broker.bootstrap, TOPIC)
    await relay.start()
    try:
        await wait_all_published(pool)
        later = await insert_events(pool, 5)
        relay.wake()
        got = await consume(kafka_broker.bootstrap, 1_205)
    finally:
        await relay.close()
    assert got == events + later
    assert metric("kassa_outbox_published_total") - published_before == 1_205
    assert await unpublished(pool) == 0
    await _assert_group_offset(kafka_broker.bootstrap, "test-consumer", 1_205)


async def _assert_group_offset(bootstrap: str, group: str, expected: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # Tansu drops the connection unless the partitions are given explicitly.
        tp = TopicPartition(TOPIC, 0)
        offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
    finally:
        await admin.close()
    assert offsets[tp].offset == expected


async def test_two_relays_publish_each_row_once(
        pg_dsn: str, kafka_broker: KafkaBroker) -> None:
    async with asyncpg.create_pool(pg_dsn, min_size=1, max_size=2) as pool_a, \
            asyncpg.create_pool(pg_dsn, min_size=1, max_size=2) as pool_b:
        events = await insert_events(pool_a, 3_000)
        relays = [OutboxRelay(p, kafka_broker.bootstrap, TOPIC, batch_size_max=100)
                  for p in (pool_a, pool_b)]
        shares = [_count_publishes(r) for r in relays]
        await asyncio.gather(*(r.start() for r in relays))
        try:
            await wait_all_published(pool_a)
        finally:
            await asyncio.gather(*(r.close() for r in relays))
        got = await consume(kafka_broker.bootstrap, len(events))
    assert Counter(code for code, _ in got) == Counter(code for code, _ in events)
    assert sorted(got) == sorted(events)
    assert all(share() > 0 for share in shares), "both relays should have taken batches"


def _count_publishes(relay: OutboxRelay) -> Callable[[], int]:
    published = [0]
    inner = relay.publish_batch

    async def counting() -> int:
        n = await inner()
        published[0] += n
        return n

    relay.publish_batch = counting  # type: ignore[method-assign]
    return lambda: published[0]


async def test_broker_outage_loses_nothing(
        pool: asyncpg.Pool, kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kassa.outbox")
    relay = OutboxRelay(pool, kafka_broker.bootstrap, TOPIC, backoff_max_s=0.5,
                        publish_timeout_s=2.0)
    await relay.start()
    try:
        await insert_events(pool, 3)
        await wait_all_published(pool)  # the relay holds a live producer when the broker dies
        errors_before = metric("kassa_kafka_errors_total")
        kafka_broker.stop()
        events = await insert_events(pool, 1_000)
        async with asyncio.timeout(10):  # a failed attempt, then failed reconnects
            while metric("kassa_kafka_errors_total") < errors_before + 3:
                await asyncio.sleep(0.05)
        assert await unpublished(pool) == 1_000
        kafka_broker.start()  # same port, empty storage
        await wait_all_published(pool)
        got = await consume(kafka_broker.bootstrap, 1_000)
    finally:
        await relay.close()
    assert set(got) == set(events)
    assert len(got) == 1_000, "nothing was acked during the outage, so nothing repeats"
    assert any(r.message.startswith("[KAFKA ERROR] ") for r in caplog.records)


async def test_pruning_deletes_only_old_published_rows(
        pool: asyncpg.Pool, kafka_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_module, "PRUNE_BATCH_MAX", 7)  # forces several bounded rounds
    old = await insert_events(pool, 30)
    await pool.execute("UPDATE outbox SET published_at = now() - interval '2 hours'")
    recent = await insert_events(pool, 10)
    await pool.execute("UPDATE outbox SET published_at = now() - interval '10 minutes'"
                       " WHERE receipt_code = ANY($1::text[])", [c for c, _ in recent[:5]])
    # The last 5 stay unpublished and old: never pruned, and they drive the age gauge.
    await pool.execute("UPDATE outbox SET created_at = now() - interval '3 hours'"
                       " WHERE published_at IS NULL")
    relay = OutboxRelay(pool, kafka_broker.bootstrap, TOPIC, retention_s=3600)
    assert await relay.housekeeping() == len(old)
    left = {r["receipt_code"] for r in await pool.fetch("SELECT receipt_code FROM outbox")}
    assert left == {c for c, _ in recent}
    assert metric("kassa_outbox_oldest_unpublished_age_seconds") >= 3 * 3600
    assert await relay.housekeeping() == 0


class _CrashingRelay(OutboxRelay):
    """Publishes, then hangs before marking the rows published (where a crash hurts most)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.acked = asyncio.Event()
        self.backend_pid = 0

    async def _mark_published(self, conn: asyncpg.Connection, ids: list[int]) -> None:
        self.backend_pid = conn.get_server_pid()
        self.acked.set()
        await conn.execute("SELECT pg_sleep(60)")


@pytest.mark.parametrize("crash", ["task_cancelled", "connection_dropped"])
async def test_crash_after_publish_before_commit_republishes(
        pool: asyncpg.Pool, kafka_broker: KafkaBroker, crash: str) -> None:
    events = await insert_events(pool, 120)
    crashing = _CrashingRelay(pool, kafka_broker.bootstrap, TOPIC, batch_size_max=50)
    await crashing.start()
    await asyncio.wait_for(crashing.acked.wait(), 10)
    if crash == "connection_dropped":
        await pool.execute("SELECT pg_terminate_backend($1)", crashing.backend_pid)
    assert crashing._task is not None
    crashing._task.cancel()  # the process dies: no graceful close
    await crashing.close()
    assert await unpublished(pool) == 120, "the claim must roll back"
    survivor = OutboxRelay(pool, kafka_broker.bootstrap, TOPIC)
    await survivor.start()
    try:
        await wait_all_published(pool)
    finally:
        await survivor.close()
    got = await consume(kafka_broker.bootstrap, 170)
    assert got == events[:50] + events  # first batch twice: at least once, in order


async def test_standalone_relay_publishes_and_stops_on_sigterm(
        pool: asyncpg.Pool, pg_dsn: str, kafka_broker: KafkaBroker) -> None:
    """`kassa relay`'s entry point, in its own process as it will run."""
    events = await insert_events(pool, 200)
    code = ("import asyncio, sys; from server.kafka.relay import run_standalone; "
            "asyncio.run(run_standalone(*sys.argv[1:]))")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, pg_dsn, kafka_broker.bootstrap, TOPIC,
        stderr=asyncio.subprocess.PIPE)
    try:
        await wait_all_published(pool)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, stderr.decode()
    assert await consume(kafka_broker.bootstrap, 200) == events


async def test_broker_restart_while_idle_recovers(
        pool: asyncpg.Pool, kafka_broker: KafkaBroker) -> None:
    """The producer outlives its broker unnoticed: its id and sequence numbers are stale."""
    relay = OutboxRelay(pool, kafka_broker.bootstrap, TOPIC, backoff_max_s=0.5,
                        publish_timeout_s=2.0)
    await relay.start()
    try:
        await insert_events(pool, 20)
        await wait_all_published(pool)
        kafka_broker.stop()
        kafka_broker.start()
        events = await insert_events(pool, 20)
        relay.wake()
        await wait_all_published(pool)
        got = await consume(kafka_broker.bootstrap, 20)
    finally:
        await relay.close()
    assert set(got) == set(events)
