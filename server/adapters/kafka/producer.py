"""The relay's Kafka side: an idempotent `acks="all"` producer that publishes whole batches.

`publish()` packs the messages into one record batch per partition (more only when a
batch fills) with `create_batch`/`send_batch`, so a batch of rows costs one future per
record batch instead of one per message, and waits for every ack at once. The partition
is the one aiokafka's default partitioner would pick for the key (murmur2), so keys land
where per-message `send` put them; with one partition nothing is hashed.

Any failure, including a timeout, surfaces as a `KafkaError`; the caller retries the
whole batch (at least once) and should `drop(abandon=True)` the producer first: a failed
producer may hold dead connections or an id a restarted broker no longer knows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from core.kit.rate_limit import Throttle
from server.adapters.kafka import compat

log = logging.getLogger("kassa.outbox")

Headers = list[tuple[str, bytes]]
Message = tuple[bytes, bytes, Headers]  # key, value, record headers

KAFKA_REQUEST_TIMEOUT_MS = 5_000
PRODUCER_STOP_TIMEOUT_S = 10.0
RECORD_BATCH_BYTES_MAX = 256 * 1024
# For a topic the relay has to create itself. One partition keeps the stream in id
# order; production clusters should create the topic ahead of time.
TOPIC_PARTITIONS = 1
TOPIC_REPLICATION_MAX = 3
TOPIC_ALREADY_EXISTS = 36

_partitioner = DefaultPartitioner()

# aiokafka's lines for a broker it cannot reach: logged on every retry (100 ms apart, per
# connection attempt, metadata refresh and produce retry) for as long as the broker is down.
BROKER_DOWN_LOG_INTERVAL_S = 5.0
BROKER_DOWN_TEMPLATES = frozenset({
    'Unable connect to "%s:%s": %s',
    'Unable to request metadata from "%s:%s": %s',
    "Unable to request metadata from node with id %s: %r",
    "Unable to update metadata from %s",
    "Unable connect to node with id %s: %s",
    "Got error produce response: %s",
    "Cannot send %r to %s: %r",
    "Could not send %r: %r",
})


class BrokerDownLog(logging.Filter):
    """Each of aiokafka's broker-unreachable lines passes at most once per
    BROKER_DOWN_LOG_INTERVAL_S per process (the relay's own `[KAFKA ERROR]` line says
    what failed); every other aiokafka line passes."""

    def __init__(self, interval_s: float = BROKER_DOWN_LOG_INTERVAL_S) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._throttles: dict[str, Throttle] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or record.msg not in BROKER_DOWN_TEMPLATES:
            return True
        throttle = self._throttles.get(record.msg)
        if throttle is None:
            throttle = self._throttles[record.msg] = Throttle(self._interval_s)
        return throttle.ready()


def quiet_broker_retries() -> None:
    """Install BrokerDownLog on the aiokafka loggers that log those lines, once."""
    for name in ("aiokafka", "aiokafka.producer.sender"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, BrokerDownLog) for f in logger.filters):
            logger.addFilter(BrokerDownLog())


quiet_broker_retries()


class BatchProducer:
    def __init__(self, bootstrap_servers: str, topic: str, *, timeout_s: float) -> None:
        """`timeout_s` bounds one `publish()` and one producer start: an idempotent aiokafka
        producer retries forever, so this is what turns a dead broker into an error."""
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None

    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish (key, value, headers) and return once the broker acknowledged all of them."""
        producer = await self.ready()
        try:
            async with asyncio.timeout(self._timeout_s):
                partitions = sorted(await producer.partitions_for(self._topic))
                acks = [await producer.send_batch(batch, self._topic, partition=partition)
                        for partition, batch in _record_batches(producer, partitions, messages)]
                if len(acks) == 1:
                    await acks[0]  # the common case, without gather's bookkeeping
                    return
                # Collect every outcome so no failed future is left unretrieved.
                results = await asyncio.gather(*acks, return_exceptions=True)
        except TimeoutError:
            raise KafkaTimeoutError(f"no ack within {self._timeout_s}s") from None
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def drop(self, *, abandon: bool = False) -> None:
        """Stop the producer (the next `publish()` starts a fresh one); `abandon` first
        fails whatever it still holds, so a producer cut off from its broker stops at all."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer, abandon=abandon)

    async def ready(self) -> AIOKafkaProducer:
        """The producer, started (and the topic created) first if need be."""
        if self._producer is not None:
            return self._producer
        compat.install()  # idempotence needs InitProducerId v3 on Tansu
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, acks="all", enable_idempotence=True,
            request_timeout_ms=KAFKA_REQUEST_TIMEOUT_MS, max_batch_size=RECORD_BATCH_BYTES_MAX,
            linger_ms=0,
        )
        try:
            # start() retries InitProducerId until it gets an id: bound it like a publish.
            async with asyncio.timeout(self._timeout_s):
                await ensure_topic(self._bootstrap, self._topic)
                await producer.start()
        except TimeoutError:
            await _stop_quietly(producer, abandon=True)
            raise KafkaTimeoutError(f"producer not started within {self._timeout_s}s") from None
        except BaseException:
            await _stop_quietly(producer, abandon=True)
            raise
        log.info("outbox relay: idempotent producer connected to %s", self._bootstrap)
        self._producer = producer
        return producer


def _record_batches(producer: AIOKafkaProducer, partitions: list[int],
                    messages: Sequence[Message]) -> list[tuple[int, BatchBuilder]]:
    """Closed record batches, in the order of their first message, per partition."""
    open_batches: dict[int, BatchBuilder] = {}
    batches: list[tuple[int, BatchBuilder]] = []
    single = partitions[0] if len(partitions) == 1 else None
    for key, value, headers in messages:
        partition = single if single is not None else _partitioner(key, partitions, partitions)
        batch = open_batches.get(partition)
        if batch is None or batch.append(key=key, value=value, timestamp=None,
                                         headers=headers) is None:
            # A batch takes its first message whatever its size: this append succeeds.
            batch = open_batches[partition] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None, headers=headers)
            batches.append((partition, batch))
    for _, batch in batches:
        batch.close()  # nothing else may join it
    return batches


async def _stop_quietly(producer: AIOKafkaProducer, *, abandon: bool) -> None:
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
            if code not in (0, TOPIC_ALREADY_EXISTS):  # another relay won the race
                log.warning("[KAFKA ERROR] create topic %s: error code %d", name, code)
    finally:
        await admin.close()
