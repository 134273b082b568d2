"""The relay against a real PostgreSQL and a real Kafka-compatible broker (Tansu): it
reads finished journals past each sink's cursor (migration 010), publishes their events
and registers their receipts."""

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

from core.ledger.errors import Unavailable
from core.pipeline.ports import ReceiptRecord
from server.adapters.kafka.publisher import SinkPublisher
from server.adapters.kafka.relay import APPLICATION_NAME, RELAY_LOCK_ID, OutboxRelay
from server.adapters.postgres import migrate
from server.adapters.postgres.outbox import OutboxSession
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.servers import PostgresServer, free_port
from tests.invariants import UNPUBLISHED, assert_invariants

pytestmark = pytest.mark.timeout(30)

TOPIC = "kassa.events"
_refs = itertools.count()


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(pg_dsn, min_size=1, max_size=8) as p:
        yield p


AT = "2026-12-07T12:00:00.000000Z"


async def insert_events(pool: asyncpg.Pool, count: int) -> list[tuple[str, bytes]]:
    """Commit `count` finished journals, marked as the write path marks them (their event
    is due: migration 010); returns (receipt code, the event the relay must publish)."""
    codes = [f"R{next(_refs):08d}" for _ in range(count)]
    async with pool.acquire() as conn, conn.transaction():
        ids = await conn.fetch(MARKED_JOURNALS, codes)
    return [(code, _event(code, r["id"])) for code, r in zip(codes, ids, strict=True)]


# A completed deposit-like journal: one leg, no entries (the tests need none).
MARKED_JOURNALS = f"""
INSERT INTO journals (external_ref, type, status, currency, payload, description,
                      completed_at, event_xid)
SELECT ref, 'transfer', 'completed', 'EUR', '[["a", "b", 5]]'::jsonb, 'é€',
       '{AT}'::timestamptz, pg_current_xact_id()
FROM unnest($1::text[]) WITH ORDINALITY AS u(ref, n) ORDER BY n
RETURNING id
"""


def _event(code: str, journal_id: int) -> bytes:
    """The event as docs/api.md "Events" describes it, written out here (not by the code
    under test), fields in the documented order."""
    return msgspec.json.encode({
        "event": "transaction.completed", "receipt_code": code, "journal_id": journal_id,
        "type": "transfer", "currency": "EUR", "amount": 5,
        "legs": [{"source": "a", "destination": "b", "amount": 5}], "entries": [],
        "error": None, "occurred_at": AT})


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


async def unpublished(pool: asyncpg.Pool, sink: str = "kafka") -> int:
    """Finished journals past the sink's cursor: the drain query of benchmarks and tests."""
    return int(await pool.fetchval(UNPUBLISHED, sink))


async def cursor_at(pool: asyncpg.Pool, sink: str = "kafka") -> int:
    """The journal id of the sink's cursor."""
    return int(await pool.fetchval("SELECT journal_id FROM journal_cursors WHERE sink = $1",
                                   sink))


async def wait_all_published(pool: asyncpg.Pool, timeout_s: float = 20.0,
                             sink: str = "kafka") -> None:
    async with asyncio.timeout(timeout_s):
        while await unpublished(pool, sink):
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


async def test_journals_published_once_in_order_then_the_cursor_moves(
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
    assert await cursor_at(pool) == int(await pool.fetchval("SELECT max(id) FROM journals"))
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
    assert Counter(got) == Counter(events + more + last), "each event exactly once"


async def test_wake_publishes_at_once_in_the_publisher_and_through_a_standby(
        pool: asyncpg.Pool, pg_dsn: str, kafka_broker: KafkaBroker) -> None:
    # Pollers that never fire within the test: only wake() can trigger a publish.
    relays = [OutboxRelay(pg_dsn, kafka_broker.bootstrap, TOPIC, poll_interval_ms=60_000,
                          standby_interval_ms=60_000) for _ in range(2)]
    # Committed before the election, published by the leader's first cycle without a
    # wake-up: one sent now could arrive during that cycle and rightly ask for another,
    # which would publish what the loop below commits before its own wake-up.
    await insert_events(pool, 1)
    await asyncio.gather(*(r.start() for r in relays))
    try:
        leader = await wait_leader(relays)
        standby = next(r for r in relays if r is not leader)
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
        assert await unpublished(pool) == 1_000
        assert relay.is_leader, "a short outage does not move the lock"
        kafka_broker.start()  # same port, empty storage
        await wait_all_published(pool)
        got = await consume(kafka_broker.bootstrap, 1_000)
    finally:
        await relay.close()
    assert set(got) == set(events)
    assert len(got) == 1_000, "nothing was acked during the outage, so nothing repeats"
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


async def test_gauges_report_the_oldest_waiting_journal_and_the_publisher(
        pool: asyncpg.Pool, pg_dsn: str) -> None:
    await insert_events(pool, 5)
    await pool.execute("UPDATE journals SET completed_at = now() - interval '3 hours'")
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
    assert await unpublished(pool) == 5


class _CrashingRelay(OutboxRelay):
    """Publishes, then hangs before moving the cursor (where a crash hurts most)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.acked = asyncio.Event()
        self.backend_pid = 0
        relay = self

        class Crashing(SinkPublisher):
            async def _advance(self, session: OutboxSession, to: tuple[int, int],
                               oldest: object) -> None:
                conn = session._conn  # a query in flight when the crash comes
                relay.backend_pid = conn.get_server_pid()
                relay.acked.set()
                await conn.execute("SELECT pg_sleep(60)")

        kafka = self._loops[0].publisher
        self._loops[0].publisher = Crashing(kafka.sink, self._batch_size_max, kafka._metrics)


@pytest.mark.parametrize("crash", ["task_cancelled", "connection_dropped"])
async def test_crash_after_publish_before_the_cursor_moves_republishes(
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
    assert await unpublished(pool) == 120, "the cursor moves only after the acks"
    survivor = OutboxRelay(pg_dsn, kafka_broker.bootstrap, TOPIC)
    await survivor.start()
    try:
        await wait_all_published(pool)
    finally:
        await survivor.close()
    got = await consume(kafka_broker.bootstrap, 170)
    assert got == events[:50] + events  # first batch twice: at least once, in order


async def test_a_journal_committed_out_of_id_order_still_goes_out(
        pool: asyncpg.Pool, pg_dsn: str, kafka_broker: KafkaBroker) -> None:
    """Journal ids are drawn before the commit: a transaction that drew a lower id may
    commit after a journal with a higher id was published, and a cursor on ids alone would
    skip it. The cursor is (transaction id, journal id), read below the snapshot's xmin."""
    relay = OutboxRelay(pg_dsn, kafka_broker.bootstrap, TOPIC, poll_interval_ms=100)
    await relay.start()
    try:
        await wait_leader([relay])
        async with pool.acquire() as early, pool.acquire() as late:
            first, second = early.transaction(), late.transaction()
            await first.start()
            await early.fetchval("SELECT pg_current_xact_id()")  # the lower transaction id
            await second.start()
            low_id = await late.fetchval("SELECT nextval(pg_get_serial_sequence('journals', 'id'))")
            await late.fetchval("SELECT pg_current_xact_id()")  # open, with the higher xid
            published = await _marked_in(early, "PUBLISHED")  # a higher journal id
            await first.commit()
            relay.wake()
            await wait_all_published(pool)
            assert await cursor_at(pool) == published[2] > low_id
            straggler = await _marked_in(late, "STRAGGLER", low_id)
            await second.commit()
        relay.wake()
        await wait_all_published(pool, timeout_s=5)
        assert await cursor_at(pool) == low_id
    finally:
        await relay.close()
    assert await consume(kafka_broker.bootstrap, 2) == [published[:2], straggler[:2]]


async def _marked_in(conn: asyncpg.Connection, code: str, journal_id: int | None = None
                     ) -> tuple[str, bytes, int]:
    """A finished journal written in `conn`'s open transaction, with `journal_id` if given."""
    journal = await conn.fetchval(
        "INSERT INTO journals (id, external_ref, type, status, currency, payload, description,"
        " completed_at, event_xid) OVERRIDING SYSTEM VALUE"
        " VALUES (coalesce($2, nextval(pg_get_serial_sequence('journals', 'id'))), $1,"
        " 'transfer', 'completed', 'EUR', '[[\"a\", \"b\", 5]]', 'é€', $3::text::timestamptz,"
        " pg_current_xact_id()) RETURNING id", code, journal_id, AT)
    return code, _event(code, journal), journal


async def test_receipts_are_registered_from_the_same_journals_on_their_own_cursor(
        pool: asyncpg.Pool, pg_dsn: str, kafka_broker: KafkaBroker) -> None:
    """One register call per batch; while the receipt service is down the events still go
    to Kafka, and while Kafka is down the receipts are still registered."""
    calls: list[list[ReceiptRecord]] = []
    service_down = True

    async def register(records: list[ReceiptRecord]) -> None:
        if service_down:
            raise Unavailable("receipt_registrations circuit open")
        calls.append(records)

    relay = OutboxRelay(pg_dsn, kafka_broker.bootstrap, TOPIC, batch_size_max=100,
                        backoff_max_s=0.2, publish_timeout_s=1.0, register_receipts=register)
    await relay.start()
    try:
        events = await insert_events(pool, 250)
        relay.wake()
        await wait_all_published(pool)
        assert await unpublished(pool, "receipts") == 250 and not calls
        service_down = False
        await wait_all_published(pool, sink="receipts")
        assert [len(c) for c in calls] == [100, 100, 50]
        assert [r.code for c in calls for r in c] == [code for code, _ in events]
        assert calls[0][0] == ReceiptRecord(events[0][0], "transfer", "EUR", 5, ["a", "b"],
                                            "completed", None)

        kafka_broker.stop()
        more = await insert_events(pool, 30)
        relay.wake()
        await wait_all_published(pool, sink="receipts")
        assert await unpublished(pool) == 30, "Kafka is down: its cursor waits"
        kafka_broker.start()
        await wait_all_published(pool)
    finally:
        await relay.close()
    assert relay.registered == 280 and relay.published == 280
    assert set(await consume(kafka_broker.bootstrap, 30)) == set(more)


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


async def test_an_upgrade_publishes_the_outbox_backlog_and_an_old_writer_s_rows(
        pg_server: PostgresServer, kafka_broker: KafkaBroker,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 010 on a database with an outbox backlog (failed journals: no entries
    needed): the journals already published
    stay behind the cursors, the backlog's are published by the new relay, and a process of
    the previous version that still finishes journals with an outbox row (a rolling
    upgrade) gets its events published too."""
    name = f"kassa_upgrade_{next(_refs)}"
    admin = await asyncpg.connect(pg_server.dsn())
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    dsn = pg_server.dsn(name)
    every = migrate.migration_files()
    monkeypatch.setattr(migrate, "migration_files", lambda: [m for m in every if m[0] < "010"])
    await migrate.apply_migrations(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        ids = await conn.fetch(
            "INSERT INTO journals (external_ref, type, status, currency, payload, completed_at)"
            " SELECT code, 'transfer', status, 'EUR', '[[\"a\", \"b\", 5]]', now()"
            " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(code, status, n)"
            " ORDER BY n RETURNING id",
            ["PUBLISHED", "BACKLOG", "UNFINISHED"], ["failed", "failed", "processing"])
        published, backlog, unfinished = (r["id"] for r in ids)
        await conn.execute("INSERT INTO outbox (journal_id, receipt_code, payload)"
                           " VALUES ($1, 'BACKLOG', '\\x00')", backlog)
        monkeypatch.setattr(migrate, "migration_files", lambda: every)
        assert "010_journal_events" in await migrate.apply_migrations(dsn)
        marks = dict(await conn.fetch("SELECT id, event_xid::text FROM journals"))
        assert marks[published] == "1" and marks[unfinished] is None
        assert int(marks[backlog]) > 1
        assert await conn.fetchval(UNPUBLISHED, "kafka") == 1
        # The previous version's FINISH_AND_POST: the journal and its outbox row, one statement.
        await conn.execute(
            "WITH finished AS (UPDATE journals SET status = 'failed', completed_at = now()"
            " WHERE id = $1), events AS (INSERT INTO outbox (journal_id, receipt_code, payload)"
            " VALUES ($1, 'UNFINISHED', '\\x00')) SELECT 1", unfinished)
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
        assert await conn.fetchval(UNPUBLISHED, "kafka") == 2
    finally:
        await conn.close()
    relay = OutboxRelay(dsn, kafka_broker.bootstrap, TOPIC)
    await relay.start()
    try:
        async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:
            await wait_all_published(pool)
    finally:
        await relay.close()
    got = await consume(kafka_broker.bootstrap, 2)
    assert [code for code, _ in got] == ["BACKLOG", "UNFINISHED"]
    assert [msgspec.json.decode(v)["event"] for _, v in got] == ["transaction.failed"] * 2
    await assert_invariants(dsn)  # every finished journal marked, the unfinished one not
