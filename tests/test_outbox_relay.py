"""The outbox relay against a real PostgreSQL and a real Kafka-compatible broker (Tansu)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2
from prometheus_client import REGISTRY

from server.adapters.kafka import publisher as publisher_module
from server.adapters.kafka.publisher import OutboxPublisher
from server.adapters.kafka.relay import APPLICATION_NAME, RELAY_LOCK_ID, OutboxRelay
from server.adapters.postgres.outbox import OutboxSession
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.servers import free_port

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
                  timeout_s: float = 20.0, linger_s: float = 0.3,
                  partitions: list[int] | None = None) -> list[tuple[str, bytes]]:
    """Read (key, value) pairs as a consumer group until `count` arrived, then `linger_s` more
    to catch extras; commits the offsets it read. `partitions` collects each message's."""
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
                    got += await _poll(consumer, 0.5, partitions)
        except TimeoutError:
            raise AssertionError(f"{len(got)} of {count} messages after {timeout_s}s; "
                                 f"assignment {consumer.assignment()}") from None
        got += await _poll(consumer, linger_s, partitions)
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def _poll(consumer: AIOKafkaConsumer, timeout_s: float,
                partitions: list[int] | None) -> list[tuple[str, bytes]]:
    batches = await consumer.getmany(timeout_ms=int(timeout_s * 1000))
    got = [(m.key.decode(), m.value, m.partition) for msgs in batches.values() for m in msgs
           if m.key is not None and m.value is not None]
    if partitions is not None:
        partitions += [p for _, _, p in got]
    return [(k, v) for k, v, _ in got]


async def unpublished(pool: asyncpg.Pool) -> int:
    """The drain query benchmarks and operators use; the relay never sets published_at."""
    return int(await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


async def outbox_rows(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM outbox"))


async def wait_all_published(pool: asyncpg.Pool, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while await unpublished(pool):
            await asyncio.sleep(0.005)


async def wait_leader(relays: list[OutboxRelay], timeout_s: float = 10.0) -> OutboxRelay:
    """The one relay that believes it leads. A deposed one believes so until its next query
    fails; what counts is that only one can publish (see `lock_holders` and `published`)."""
    leaders: list[OutboxRelay] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(leaders := [r for r in relays if r.is_leader]) != 1:
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"{len(leaders)} of {len(relays)} relays lead") from None
    return leaders[0]


async def lock_holders(pool: asyncpg.Pool) -> list[int]:
    """Backend pids holding the relay lock on this database, from PostgreSQL itself."""
    rows = await pool.fetch(
        "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        " WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()"
        " AND ((l.classid::bigint << 32) | l.objid::bigint) = $1", RELAY_LOCK_ID)
    return [r["pid"] for r in rows]


async def relay_sessions(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        " AND datname = current_database()", APPLICATION_NAME))


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_rows_published_once_in_order_then_deleted(
        pool: asyncpg.Pool, pg_dsn: str, kafka_broker: KafkaBroker) -> None:
    events = await insert_events(pool, 1_200)  # several batches of 500
    published_before = metric("kassa_outbox_published_total")
    lag_batches_before = metric("kassa_outbox_publish_lag_seconds_count")
    relay = OutboxRelay(pg_dsn, kafka_broker.bootstrap, TOPIC)
    await relay.start()
    try:
        await wait_all_published(pool)
        later = await insert_events(pool, 5)
        relay.wake()
        got = await consume(kafka_broker.bootstrap, 1_205)
        await wait_all_published(pool)
    finally:
        await relay.close()
    assert got == events + later
    assert metric("kassa_outbox_published_total") - published_before == 1_205
    # One lag observation per batch, not per row: 500 + 500 + 200 + 5 (the last may split).
    assert 4 <= metric("kassa_outbox_publish_lag_seconds_count") - lag_batches_before <= 6
    assert await outbox_rows(pool) == 0, "published rows are deleted"
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


async def test_one_publisher_among_many_relays_and_takeover_when_its_connection_dies(
        pool: asyncpg.Pool, pg_dsn: str, kafka_broker: KafkaBroker) -> None:
    relays = [OutboxRelay(pg_dsn, kafka_broker.bootstrap, TOPIC, batch_size_max=100,
                          standby_interval_ms=200) for _ in range(4)]
    await asyncio.gather(*(r.start() for r in relays))
    try:
        first = await wait_leader(relays)
        events = await insert_events(pool, 2_000)
        for relay in relays:  # every process commits, so every process wakes its relay
            relay.wake()
        await wait_all_published(pool)
        assert [r.published for r in relays if r is not first] == [0, 0, 0]
        assert first.published == 2_000
        holders = await lock_holders(pool)
        assert len(holders) == 1 and await relay_sessions(pool) == 4

        # The holder's connection dies (a killed backend, as when its process dies).
        await pool.execute("SELECT pg_terminate_backend($1)", holders[0])
        async with asyncio.timeout(5):  # a standby, or the old holder reconnecting, takes over
            while (now := await lock_holders(pool)) in ([], holders):
                await asyncio.sleep(0.02)
        assert len(now) == 1
        more = await insert_events(pool, 300)
        for relay in relays:
            relay.wake()
        await wait_all_published(pool, timeout_s=5)
        assert sum(r.published for r in relays) == 2_300

        # The holder stops for good: another relay takes over.
        second = await wait_leader(relays)
        await second.close()
        rest = [r for r in relays if r is not second]
        third = await wait_leader(rest, timeout_s=5)
        published_before = third.published
        last = await insert_events(pool, 100)
        third.wake()
        await wait_all_published(pool, timeout_s=5)
        assert third.published - published_before == 100
    finally:
        await asyncio.gather(*(r.close() for r in relays))
    got = await consume(kafka_broker.bootstrap, 2_400)
    assert Counter(got) == Counter(events + more + last), "each row exactly once"
    assert await outbox_rows(pool) == 0


async def test_wake_publishes_at_once_in_the_publisher_and_through_a_standby(
        pool: asyncpg.Pool, pg_dsn: str, kafka_broker: KafkaBroker) -> None:
    # Pollers that never fire within the test: only wake() can trigger a publish.
    relays = [OutboxRelay(pg_dsn, kafka_broker.bootstrap, TOPIC, poll_interval_ms=60_000,
                          standby_interval_ms=60_000) for _ in range(2)]
    await asyncio.gather(*(r.start() for r in relays))
    try:
        leader = await wait_leader(relays)
        standby = next(r for r in relays if r is not leader)
        await insert_events(pool, 1)
        leader.wake()
        await wait_all_published(pool)  # the producer is connected and warm
        latencies = {}
        for name, waker in (("publisher", leader), ("standby", standby)):
            await insert_events(pool, 10)
            await asyncio.sleep(0.3)
            assert await unpublished(pool) == 10, "nothing publishes without a wake-up"
            started = time.perf_counter()
            waker.wake()
            await wait_all_published(pool, timeout_s=2)
            latencies[name] = time.perf_counter() - started
    finally:
        await asyncio.gather(*(r.close() for r in relays))
    assert standby.published == 0
    assert max(latencies.values()) < 0.5, latencies
    await consume(kafka_broker.bootstrap, 21)


async def test_broker_outage_loses_nothing(
        pool: asyncpg.Pool, pg_dsn: str, kafka_broker: KafkaBroker,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kassa.outbox")
    relay = OutboxRelay(pg_dsn, kafka_broker.bootstrap, TOPIC, backoff_max_s=0.5,
                        publish_timeout_s=2.0)
    await relay.start()
    try:
        await insert_events(pool, 3)
        relay.wake()
        await wait_all_published(pool)  # the relay holds a live producer when the broker dies
        errors_before = metric("kassa_kafka_errors_total")
        kafka_broker.stop()
        events = await insert_events(pool, 1_000)
        relay.wake()
        async with asyncio.timeout(10):  # a failed attempt, then failed reconnects
            while metric("kassa_kafka_errors_total") < errors_before + 3:
                await asyncio.sleep(0.05)
        assert await outbox_rows(pool) == 1_000
        assert relay.is_leader, "a short outage does not move the lock"
        kafka_broker.start()  # same port, empty storage
        await wait_all_published(pool)
        got = await consume(kafka_broker.bootstrap, 1_000)
    finally:
        await relay.close()
    assert set(got) == set(events)
    assert len(got) == 1_000, "nothing was acked during the outage, so nothing repeats"
    assert await outbox_rows(pool) == 0
    assert any(r.message.startswith("[KAFKA ERROR] ") for r in caplog.records)


async def test_a_publisher_that_cannot_reach_kafka_steps_down(
        pool: asyncpg.Pool, pg_dsn: str, kafka_broker: KafkaBroker) -> None:
    """Only the publisher's host is cut off from Kafka: another relay gets the lock."""
    cut_off = OutboxRelay(pg_dsn, f"127.0.0.1:{free_port()}", TOPIC, standby_interval_ms=200,
                          step_down_after_s=1.0, backoff_max_s=0.2, publish_timeout_s=1.0)
    await cut_off.start()
    healthy = OutboxRelay(pg_dsn, kafka_broker.bootstrap, TOPIC, standby_interval_ms=200)
    try:
        assert await wait_leader([cut_off]) is cut_off
        await healthy.start()
        events = await insert_events(pool, 50)
        cut_off.wake()
        await wait_all_published(pool, timeout_s=10)
    finally:
        await asyncio.gather(cut_off.close(), healthy.close())
    assert (cut_off.published, healthy.published) == (0, 50)
    assert sorted(await consume(kafka_broker.bootstrap, 50)) == sorted(events)


async def test_gauges_report_the_oldest_waiting_row_and_the_publisher(
        pool: asyncpg.Pool, pg_dsn: str) -> None:
    await insert_events(pool, 5)
    await pool.execute("UPDATE outbox SET created_at = now() - interval '3 hours'")
    relay = OutboxRelay(pg_dsn, f"127.0.0.1:{free_port()}", TOPIC, backoff_max_s=0.2,
                        publish_timeout_s=0.5)  # no broker: rows wait, the age grows
    await relay.start()
    try:
        async with asyncio.timeout(10):
            while metric("kassa_outbox_oldest_unpublished_age_seconds") < 3 * 3600:
                await asyncio.sleep(0.02)
        assert metric("kassa_outbox_relay_leader") == 1
    finally:
        await relay.close()
    assert metric("kassa_outbox_relay_leader") == 0
    assert metric("kassa_outbox_oldest_unpublished_age_seconds") == 0, "the next publisher reports"
    assert await outbox_rows(pool) == 5


class _CrashingRelay(OutboxRelay):
    """Publishes, then hangs before deleting the rows (where a crash hurts most)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.acked = asyncio.Event()
        self.backend_pid = 0
        relay = self

        class Crashing(OutboxPublisher):
            async def _delete_published(self, session: OutboxSession, ids: list[int]) -> None:
                conn = session._conn  # a query in flight when the crash comes
                relay.backend_pid = conn.get_server_pid()
                relay.acked.set()
                await conn.execute("SELECT pg_sleep(60)")

        self._publisher = Crashing(self._kafka, self._batch_size_max)


@pytest.mark.parametrize("crash", ["task_cancelled", "connection_dropped"])
async def test_crash_after_publish_before_delete_republishes(
        pool: asyncpg.Pool, pg_dsn: str, kafka_broker: KafkaBroker, crash: str) -> None:
    events = await insert_events(pool, 120)
    crashing = _CrashingRelay(pg_dsn, kafka_broker.bootstrap, TOPIC, batch_size_max=50)
    await crashing.start()
    await asyncio.wait_for(crashing.acked.wait(), 10)
    if crash == "connection_dropped":
        await pool.execute("SELECT pg_terminate_backend($1)", crashing.backend_pid)
    assert crashing._task is not None
    crashing._task.cancel()  # the process dies: no graceful close
    await crashing.close()
    assert await outbox_rows(pool) == 120, "nothing is deleted before the acks and the delete"
    survivor = OutboxRelay(pg_dsn, kafka_broker.bootstrap, TOPIC)
    await survivor.start()
    try:
        await wait_all_published(pool)
    finally:
        await survivor.close()
    got = await consume(kafka_broker.bootstrap, 170)
    assert got == events[:50] + events  # first batch twice: at least once, in order


async def test_a_row_committed_after_higher_ids_were_published_still_goes_out(
        pool: asyncpg.Pool, pg_dsn: str, kafka_broker: KafkaBroker,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads start above the ids already published (dead index entries below them cost a
    scan each time); a transaction that drew a lower id and committed later is found by the
    periodic read from the start."""
    monkeypatch.setattr(publisher_module, "SETTLE_S", 0.0)
    monkeypatch.setattr(publisher_module, "FULL_SCAN_INTERVAL_S", 3.0)
    relay = OutboxRelay(pg_dsn, kafka_broker.bootstrap, TOPIC, poll_interval_ms=100)
    await relay.start()
    try:
        await wait_leader([relay])  # its first read, from the start, is done or under way
        async with pool.acquire() as slow:
            tx = slow.transaction()
            await tx.start()
            straggler = await _insert_in(slow, "STRAGGLER")
            events = await insert_events(pool, 10)  # higher ids, committed first
            relay.wake()
            await wait_all_published(pool)
            await tx.commit()
        relay.wake()
        await asyncio.sleep(0.5)
        assert await unpublished(pool) == 1, "reads start above the published ids"
        await wait_all_published(pool, timeout_s=5)
    finally:
        await relay.close()
    assert await consume(kafka_broker.bootstrap, 11) == events + [straggler]


async def _insert_in(conn: asyncpg.Connection, code: str) -> tuple[str, bytes]:
    journal = await conn.fetchval(
        "INSERT INTO journals (external_ref, type, status, currency, payload)"
        " VALUES ($1, 'transfer', 'completed', 'EUR', '[]') RETURNING id", code)
    await conn.execute("INSERT INTO outbox (journal_id, receipt_code, payload) VALUES ($1, $2, $3)",
                       journal, code, _event(code))
    return code, _event(code)


async def test_keys_go_to_the_partition_the_default_partitioner_picks(
        pool: asyncpg.Pool, pg_dsn: str, kafka_broker: KafkaBroker) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    events = await insert_events(pool, 300)
    relay = OutboxRelay(pg_dsn, kafka_broker.bootstrap, TOPIC)
    await relay.start()
    try:
        await wait_all_published(pool)
    finally:
        await relay.close()
    partitions: list[int] = []
    got = await consume(kafka_broker.bootstrap, 300, partitions=partitions)
    assert sorted(got) == sorted(events)
    expected = [(murmur2(code.encode()) & 0x7FFFFFFF) % 3 for code, _ in got]
    assert partitions == expected
    assert len(set(partitions)) == 3


async def test_standalone_relay_takes_part_in_the_election(
        pool: asyncpg.Pool, pg_dsn: str, kafka_broker: KafkaBroker) -> None:
    """`kassa relay`'s entry point, in its own process as it will run: it stands by while a
    server worker publishes, takes over when that one stops, and stops on SIGTERM."""
    worker = OutboxRelay(pg_dsn, kafka_broker.bootstrap, TOPIC)
    await worker.start()
    await wait_leader([worker])
    code = ("import asyncio, sys; from server.adapters.kafka.relay import run_standalone; "
            "asyncio.run(run_standalone(*sys.argv[1:]))")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, pg_dsn, kafka_broker.bootstrap, TOPIC,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(10):
            while await relay_sessions(pool) < 2:
                await asyncio.sleep(0.05)
        first = await insert_events(pool, 200)
        worker.wake()
        await wait_all_published(pool)
        assert worker.published == 200
        await worker.close()
        second = await insert_events(pool, 100)
        await wait_all_published(pool, timeout_s=10)  # takeover, then its first poll
    finally:
        await worker.close()
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, stderr.decode()
    assert await consume(kafka_broker.bootstrap, 300) == first + second
    assert await relay_sessions(pool) == 0


async def test_broker_restart_while_idle_recovers(
        pool: asyncpg.Pool, pg_dsn: str, kafka_broker: KafkaBroker) -> None:
    """The producer outlives its broker unnoticed: its id and sequence numbers are stale."""
    relay = OutboxRelay(pg_dsn, kafka_broker.bootstrap, TOPIC, backoff_max_s=0.5,
                        publish_timeout_s=2.0)
    await relay.start()
    try:
        await insert_events(pool, 20)
        relay.wake()
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
