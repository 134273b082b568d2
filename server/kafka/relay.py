"""The outbox relay: publishes committed `outbox` rows to Kafka, at least once.

One cycle, in one PostgreSQL transaction: claim the oldest unpublished rows with
`FOR UPDATE SKIP LOCKED`, publish them with an idempotent `acks="all"` producer,
wait for every ack, mark them published, commit. Several relays (one per worker
process, plus `kassa relay`) share the table: SKIP LOCKED gives each a disjoint
batch, each published in id order (across relays, batches may interleave). A
crash between the acks and the commit rolls the claim back, so another
relay publishes those rows again; consumers deduplicate by receipt code. While
Kafka is down the claim is rolled back and retried with bounded exponential
backoff on a fresh producer: no row is ever skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import Sequence

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge, Histogram

from server.kafka import compat

log = logging.getLogger("kassa.outbox")

PUBLISH_LAG = Histogram(
    "kassa_outbox_publish_lag_seconds", "Outbox row commit to Kafka ack (published_at - created_at).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
OLDEST_UNPUBLISHED_AGE = Gauge(
    "kassa_outbox_oldest_unpublished_age_seconds", "Age of the oldest unpublished outbox row.",
    multiprocess_mode="livemax",
)
PUBLISHED = Counter("kassa_outbox_published_total", "Outbox rows published to Kafka.")
KAFKA_ERRORS = Counter("kassa_kafka_errors_total", "Failed Kafka publish or connect attempts.")

KAFKA_REQUEST_TIMEOUT_MS = 5_000
PRODUCER_STOP_TIMEOUT_S = 10.0
BACKOFF_MIN_S = 0.05
HOUSEKEEPING_INTERVAL_S = 1.0
PRUNE_BATCH_MAX = 5_000
PRUNE_ROUNDS_MAX = 20  # per housekeeping tick, so one tick stays short
# For a topic the relay has to create itself. One partition keeps the stream in id
# order; production clusters should create the topic ahead of time.
TOPIC_PARTITIONS = 1
TOPIC_REPLICATION_MAX = 3

CLAIM_SQL = """
SELECT id, receipt_code, payload FROM outbox
WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"""
# clock_timestamp(), not now(): now() is the start of this transaction, before the acks.
MARK_SQL = """
UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1::bigint[])
RETURNING extract(epoch FROM published_at - created_at)::float8 AS lag_s
"""
OLDEST_SQL = """
SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 FROM outbox
WHERE published_at IS NULL ORDER BY id LIMIT 1
"""
# SKIP LOCKED: concurrent relays prune disjoint rows instead of waiting on each other.
PRUNE_SQL = """
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox WHERE published_at < clock_timestamp() - make_interval(secs => $1)
    LIMIT $2 FOR UPDATE SKIP LOCKED)
"""


class OutboxRelay:
    """One relay per process; `start()` it in the serving loop, `close()` it on shutdown."""

    def __init__(self, pool: asyncpg.Pool, bootstrap_servers: str, topic: str, *,
                 batch_size_max: int = 500, poll_interval_ms: int = 50,
                 retention_s: int = 3600, backoff_max_s: float = 5.0,
                 publish_timeout_s: float = 5.0) -> None:
        """`publish_timeout_s` bounds one batch's wait for acks. The claim's transaction and
        row locks stay open meanwhile, and an idempotent aiokafka producer retries forever,
        so this is what turns a dead broker into a failed attempt and a backoff."""
        assert batch_size_max > 0 and poll_interval_ms > 0 and retention_s > 0
        self._pool = pool
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._batch_size_max = batch_size_max
        self._poll_interval_s = poll_interval_ms / 1000
        self._retention_s = retention_s
        self._backoff_max_s = backoff_max_s
        self._publish_timeout_s = publish_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    async def start(self) -> None:
        assert self._task is None, "OutboxRelay.start() called twice"
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    def wake(self) -> None:
        self._wakeup.set()

    async def close(self) -> None:
        """Finish the batch in flight, stop both loops, close the producer."""
        self._stopping.set()
        self._wakeup.set()
        task = self._task
        if task is not None:
            # A publish in flight ends within its timeout; the producer connect may
            # take as long again.
            done, _ = await asyncio.wait({task}, timeout=2 * self._publish_timeout_s + 5)
            if not done:
                task.cancel()
                await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                log.error("outbox relay stopped with an error", exc_info=task.exception())
        await self._drop_producer()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._publish_loop())
            tg.create_task(self._housekeeping_loop())

    # Publishing

    async def _publish_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                published = await self.publish_batch()
            except (KafkaError, TimeoutError) as exc:
                KAFKA_ERRORS.inc()
                log.error("[KAFKA ERROR] outbox publish failed: %r", exc)
                await self._retry_later(drop_producer=True)
                continue
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                log.error("outbox database error: %r", exc)
                await self._retry_later(drop_producer=False)
                continue
            except Exception:
                log.exception("outbox relay: unexpected error")
                await self._retry_later(drop_producer=True)
                continue
            self._failures = 0
            if published < self._batch_size_max:
                await self._idle(self._poll_interval_s)

    async def publish_batch(self) -> int:
        """One claim-publish-mark cycle; returns the number of rows published."""
        producer = await self._ensure_producer()
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(CLAIM_SQL, self._batch_size_max)
            if not rows:
                return 0
            await self._publish(producer, rows)
            await self._mark_published(conn, [r["id"] for r in rows])
        PUBLISHED.inc(len(rows))
        return len(rows)

    async def _publish(self, producer: AIOKafkaProducer, rows: Sequence[asyncpg.Record]) -> None:
        async with asyncio.timeout(self._publish_timeout_s):
            acks = [await producer.send(self._topic, value=r["payload"],
                                        key=r["receipt_code"].encode()) for r in rows]
            # Collect every outcome so no failed future is left unretrieved.
            results = await asyncio.gather(*acks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _mark_published(self, conn: asyncpg.Connection, ids: list[int]) -> None:
        for lag in await conn.fetch(MARK_SQL, ids):
            PUBLISH_LAG.observe(max(0.0, lag["lag_s"]))

    async def _retry_later(self, *, drop_producer: bool) -> None:
        self._failures += 1
        delay = min(self._backoff_max_s, BACKOFF_MIN_S * 2 ** min(self._failures, 16))
        delay *= random.uniform(0.5, 1.0)  # relays in many processes should not retry in step
        log.warning("outbox relay: attempt %d failed, retrying in %.2fs", self._failures, delay)
        if drop_producer:
            # A failed producer may hold dead connections or a producer id that a
            # restarted broker no longer knows: start over with a fresh one.
            await self._drop_producer(abandon=True)
        # Only close() cuts a backoff short: wake() comes with every commit, and an
        # outage must not turn those into a retry storm.
        await _wait_event(self._stopping, delay)

    async def _idle(self, delay_s: float) -> None:
        """Sleep until `delay_s` passes, wake() is called, or close() starts."""
        await _wait_event(self._wakeup, delay_s)
        self._wakeup.clear()

    # Producer lifecycle

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        compat.install()  # idempotence needs InitProducerId v3 on Tansu
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, acks="all", enable_idempotence=True,
            request_timeout_ms=KAFKA_REQUEST_TIMEOUT_MS, max_batch_size=256 * 1024,
            linger_ms=0,
        )
        try:
            # start() retries InitProducerId until it gets an id: bound it like a publish.
            async with asyncio.timeout(self._publish_timeout_s):
                await ensure_topic(self._bootstrap, self._topic)
                await producer.start()
        except BaseException:
            await _stop_quietly(producer, abandon=True)
            raise
        log.info("outbox relay: idempotent producer connected to %s", self._bootstrap)
        self._producer = producer
        return producer

    async def _drop_producer(self, *, abandon: bool = False) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer, abandon=abandon)

    # Housekeeping: the oldest-row gauge and pruning

    async def _housekeeping_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.housekeeping()
            except Exception:  # noqa: BLE001 - logged; the next tick retries
                log.exception("outbox housekeeping failed")
            await _wait_event(self._stopping, HOUSEKEEPING_INTERVAL_S)

    async def housekeeping(self) -> int:
        """Update the oldest-unpublished gauge and prune old published rows; returns rows pruned."""
        async with self._pool.acquire() as conn:
            age = await conn.fetchval(OLDEST_SQL)
            OLDEST_UNPUBLISHED_AGE.set(age or 0.0)
            pruned = 0
            for _ in range(PRUNE_ROUNDS_MAX):
                status = await conn.execute(PRUNE_SQL, float(self._retention_s), PRUNE_BATCH_MAX)
                deleted = int(status.split()[-1])
                pruned += deleted
                if deleted < PRUNE_BATCH_MAX:
                    break
        return pruned


async def _wait_event(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


async def _stop_quietly(producer: AIOKafkaProducer, *, abandon: bool) -> None:
    """Stop a producer; `abandon` first drops whatever it still holds."""
    try:
        if abandon:
            await compat.abandon_pending(producer)
        async with asyncio.timeout(PRODUCER_STOP_TIMEOUT_S):
            await producer.stop()
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("[KAFKA ERROR] producer stop: %r", exc)


async def ensure_topic(bootstrap_servers: str, topic: str) -> None:
    """Create `topic` if the cluster lacks it; a concurrent creator winning is fine."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers,
                                request_timeout_ms=KAFKA_REQUEST_TIMEOUT_MS)
    try:
        await admin.start()
        if topic in await admin.list_topics():
            return
        brokers = len((await admin.describe_cluster())["brokers"])
        replication = max(1, min(TOPIC_REPLICATION_MAX, brokers))
        response = await admin.create_topics(
            [NewTopic(topic, num_partitions=TOPIC_PARTITIONS, replication_factor=replication)])
        for name, code, *_ in response.topic_errors:
            if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS, another relay won the race
                log.warning("[KAFKA ERROR] create topic %s: error code %d", name, code)
    finally:
        await admin.close()


async def run_standalone(database_url: str, bootstrap_servers: str, topic: str) -> None:
    """`kassa relay`: run one relay until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        relay = OutboxRelay(pool, bootstrap_servers, topic)
        await relay.start()
        log.info("outbox relay publishing to %s on %s", topic, bootstrap_servers)
        try:
            await stop.wait()
        finally:
            await relay.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
