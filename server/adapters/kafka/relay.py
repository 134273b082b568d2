"""The relay: one publisher per database, elected by a PostgreSQL advisory lock.

Every worker process of `kassa serve`, on every host, and `kassa relay` run an
OutboxRelay. Each holds one dedicated connection, never a pooled one (pooled
connections are released without a session reset, so session state must not live on
them), and on it tries `pg_try_advisory_lock(RELAY_LOCK_ID)` every standby interval.
The one that gets the lock publishes until that connection closes; a dead process or a
killed backend frees the lock and a standby takes over within one interval. All of the
publisher's SQL runs on that same connection, so a publisher that lost the lock cannot
move a cursor any more. It also gives up the lock after failing to publish to Kafka for
`step_down_after_s`, in case only its own host is cut off from Kafka.

There is no outbox table any more: the journal row is the outbox (migration 010). The
leader runs one publishing loop per sink, each past its own cursor (publisher.py): Kafka,
and the receipt service when there is one, so an outage of either never holds the other
back. One cycle reads the journals whose event is due past the cursor, delivers them and
moves the cursor after the acknowledgement; while a sink is down its journals wait and
its loop retries with bounded backoff (a fresh producer for Kafka). The SQL on the
dedicated connection (lock, NOTIFY, LISTEN, reads and cursors) is in
server.adapters.postgres.outbox.

A third sink, 'webhooks', sends the journals' events to the webhook endpoints and writes
their delivery rows in the transaction that moves its cursor (server/adapters/webhooks/):
a relay of its own, elected by its own lock, in a process that serves no requests (`kassa
webhook-sender`, which every `kassa serve` starts), so that sending costs the workers
nothing. It does not depend on Kafka. It gets no wake-up from an executor in its process:
the standbys' NOTIFY wakes it, and it looks every WEBHOOK_POLL_INTERVAL_MS otherwise.

Wake-ups: the executor calls `wake()` after every commit. In the publisher's process
that ends the idle waits at once. A standby forwards it as `NOTIFY` on its own connection
(one in flight, at most one per linger interval), which the publisher LISTENs for. Under
load the publisher lingers: cycles start at most once per linger interval, so each Kafka
produce round carries more journals. A wake-up that gets lost costs at most the poll
interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Gauge

from core.kit.rate_limit import Throttle
from core.pipeline.ports import ReceiptRecord
from server.adapters.kafka.producer import BatchProducer
from server.adapters.kafka.publisher import (
    KAFKA_METRICS,
    RECEIPT_METRICS,
    KafkaSink,
    ReceiptSink,
    SinkPublisher,
)
from server.adapters.postgres.outbox import (
    APPLICATION_NAME,
    DATABASE_ERRORS,
    RELAY_LOCK_ID,
    WEBHOOK_APPLICATION_NAME,
    WEBHOOK_LOCK_ID,
    OutboxSession,
)
from server.adapters.postgres.pool import OUTAGE_LOG_INTERVAL_S, UNAVAILABLE
from server.adapters.webhooks.sender import SenderOptions, WebhookSender
from server.adapters.webhooks.sink import WEBHOOK_METRICS, WebhookSink
from server.tracing import setup as tracing

__all__ = ["APPLICATION_NAME", "RELAY_LOCK_ID", "OutboxRelay", "run_standalone"]

log = logging.getLogger("kassa.outbox")

KAFKA_ERRORS = Counter("kassa_kafka_errors_total", "Failed Kafka publish or connect attempts.")
RECEIPT_ERRORS = Counter("kassa_relay_receipt_errors_total",
                         "Failed receipt registration calls of the relay.")
LEADER = Gauge("kassa_outbox_relay_leader", "1 in the process that holds the relay lock.",
               multiprocess_mode="livesum")
WEBHOOK_LEADER = Gauge("kassa_webhook_sender_leader",
                       "1 in the process that holds the webhook sender's lock.",
                       multiprocess_mode="livesum")
# The webhook sender's process looks for new journals this often when no NOTIFY came.
WEBHOOK_POLL_INTERVAL_MS = 100.0

BACKOFF_MIN_S = 0.05


class OutboxRelay:
    """One per process; `start()` it in the serving loop, `close()` it on shutdown."""

    def __init__(self, dsn: str, bootstrap_servers: str | None, topic: str, *,
                 batch_size_max: int = 500, poll_interval_ms: float = 500.0,
                 linger_ms: float = 20.0,
                 standby_interval_ms: float = 1000.0, step_down_after_s: float = 30.0,
                 backoff_max_s: float = 5.0, publish_timeout_s: float = 5.0,
                 register_receipts: Callable[[list[ReceiptRecord]], Awaitable[None]] | None = None,
                 webhooks: SenderOptions | None = None) -> None:
        """`register_receipts`: one call to the receipt service per batch, raising
        core.ledger.errors.Unavailable while it is down; None when there is no receipt
        service (its cursor then stays where it is). Without `bootstrap_servers` (only
        in-process tests run without Kafka) the relay only registers receipts.
        `webhooks`: this relay sends the webhooks, and only them (Kafka and receipts
        belong to another relay), under its own lock; None leaves the webhooks cursor
        where it is."""
        assert batch_size_max > 0 and poll_interval_ms > 0 and standby_interval_ms > 0
        assert bootstrap_servers or register_receipts or webhooks, \
            "a relay with nothing to deliver to"
        assert webhooks is None or not (bootstrap_servers or register_receipts), \
            "the webhook sender is a relay of its own"
        self._dsn = dsn
        self._lock_id = RELAY_LOCK_ID if webhooks is None else WEBHOOK_LOCK_ID
        self._leader_gauge = LEADER if webhooks is None else WEBHOOK_LEADER
        self._application_name = (APPLICATION_NAME if webhooks is None
                                  else WEBHOOK_APPLICATION_NAME)
        self._kafka = _Producer(bootstrap_servers, topic, publish_timeout_s)
        self._loops: list[_SinkLoop] = []
        if self._kafka.producer is not None:
            self._loops.append(_SinkLoop(SinkPublisher(KafkaSink(self._kafka.producer),
                                                       batch_size_max, KAFKA_METRICS)))
        if register_receipts is not None:
            self._loops.append(_SinkLoop(SinkPublisher(ReceiptSink(register_receipts),
                                                       batch_size_max, RECEIPT_METRICS)))
        self._sender = WebhookSender(webhooks) if webhooks is not None else None
        if self._sender is not None:
            assert webhooks is not None
            sink = WebhookSink(webhooks.policy.window_s, webhooks.lease_s, self._sender)
            self._loops.append(_SinkLoop(SinkPublisher(sink, batch_size_max, WEBHOOK_METRICS)))
        self._batch_size_max = batch_size_max
        self._poll_interval_s = poll_interval_ms / 1000
        self._linger_s = linger_ms / 1000
        self._standby_interval_s = standby_interval_ms / 1000
        self._step_down_after_s = step_down_after_s
        self._backoff_max_s = backoff_max_s
        self._publish_timeout_s = publish_timeout_s
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._db_down_since: float | None = None  # monotonic, while the database is lost
        self._db_warning = Throttle(OUTAGE_LOG_INTERVAL_S)
        self._receipt_warning = Throttle(OUTAGE_LOG_INTERVAL_S)
        self.is_leader = False

    @property
    def published(self) -> int:
        """Events this relay published to Kafka, for tests and logs."""
        return sum(loop.publisher.published for loop in self._loops
                   if loop.publisher.sink.name == "kafka")

    @property
    def registered(self) -> int:
        """Journals whose receipts this relay registered, for tests and logs."""
        return sum(loop.publisher.published for loop in self._loops
                   if loop.publisher.sink.name == "receipts")

    async def start(self) -> None:
        assert self._task is None, "OutboxRelay.start() called twice"
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    def wake(self) -> None:
        """Journals were finished: publish them now (through NOTIFY when another process
        leads)."""
        self._wakeup.set()
        for loop in self._loops:
            loop.wakeup.set()

    async def close(self) -> None:
        """Finish the batches in flight, release the lock, close the producer."""
        self._stopping.set()
        self.wake()
        if self._sender is not None:
            self._sender.wakeup.set()
        task = self._task
        if task is not None:
            # A publish in flight ends within its timeout; a producer start may take as long.
            done, _ = await asyncio.wait({task}, timeout=2 * self._publish_timeout_s + 5)
            if not done:
                task.cancel()
                await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                log.error("outbox relay stopped with an error", exc_info=task.exception())
        await self._kafka.drop()

    # The election: connect, stand by until the lock is ours, publish until we lose it

    async def _run(self) -> None:
        while not self._stopping.is_set():
            sit_out_s = 0.0
            try:
                session = await OutboxSession.connect(self._dsn, self._application_name)
            except DATABASE_ERRORS as exc:
                self._database_failed("cannot connect to the database", exc)
                await self._retry_later()
                continue
            self._database_back()
            try:
                if await self._stand_by(session):
                    if not await self._lead(session):
                        sit_out_s = 2 * self._standby_interval_s  # let another process win
            except DATABASE_ERRORS as exc:
                self._database_failed("database error", exc)
                await self._kafka.drop()  # a standby needs no producer; nothing is in flight
                await self._retry_later()
            except Exception as exc:
                if await session.lost():
                    # The server ended the session (shutdown, terminated backend) under a
                    # statement: asyncpg may then raise InternalClientError ("another
                    # operation is in progress") instead of a connection error.
                    self._database_failed("database error", exc, outage=True)
                else:
                    log.exception("outbox relay: unexpected error")
                await self._kafka.drop(abandon=True)
                await self._retry_later()
            finally:
                await session.close()
            if sit_out_s:
                await _wait_event(self._stopping, sit_out_s)

    async def _stand_by(self, session: OutboxSession) -> bool:
        """Until this connection holds the lock (True) or close() (False); meanwhile every
        wake() becomes a NOTIFY to whoever publishes."""
        while not self._stopping.is_set():
            if await session.try_lock(self._lock_id):
                return True
            # Jitter: standbys started together should not ask in step.
            deadline = time.monotonic() + self._standby_interval_s * random.uniform(0.5, 1.0)
            while (left := deadline - time.monotonic()) > 0:
                await _wait_event(self._wakeup, left)
                if self._stopping.is_set():
                    return False
                if self._wakeup.is_set():
                    self._wakeup.clear()
                    await session.notify()
                    # The publisher starts a cycle at most once per linger interval, so
                    # a NOTIFY sooner than that would not publish anything sooner.
                    await _wait_event(self._stopping, self._linger_s)
        return False

    async def _lead(self, session: OutboxSession) -> bool:
        """Publish until close() (True) or until failing to publish to Kafka for
        `step_down_after_s` (False). A sink loop's database error ends every loop and
        is raised here."""
        await session.listen(self._on_notify)
        for loop in self._loops:
            await loop.publisher.reset(session)
        self._set_leader(True)
        tasks = [asyncio.create_task(self._drive(loop, session),
                                     name=f"outbox-relay-{loop.publisher.sink.name}")
                 for loop in self._loops]
        if self._sender is not None:  # returns on close(); raises database errors
            tasks.append(asyncio.create_task(self._sender.run(session, self._stopping),
                                             name="outbox-relay-webhook-sender"))
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if self._stopping.is_set():  # every loop finishes its batch in flight
                done |= (await asyncio.wait(pending))[0] if pending else set()
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            return all(task.result() for task in done)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._set_leader(False)

    async def _drive(self, loop: _SinkLoop, session: OutboxSession) -> bool:
        """One sink's cycles until close() (True), or until its failures make the relay
        step down (False)."""
        publisher, sink = loop.publisher, loop.publisher.sink
        failing_since: float | None = None
        while not self._stopping.is_set():
            started = time.monotonic()
            await publisher.update_gauge(session, started)
            try:
                published = await publisher.publish_batch(session)
            except sink.errors as exc:
                self._sink_failed(sink.name, exc)
                await sink.failed()
                failing_since = failing_since or time.monotonic()
                if sink.steps_down and time.monotonic() - failing_since >= self._step_down_after_s:
                    log.warning("outbox relay: stepping down after failing for %.0fs",
                                self._step_down_after_s)
                    return False
                loop.failures += 1
                await self._backoff(loop.failures)
                continue
            failing_since, loop.failures = None, 0
            if published < self._batch_size_max:
                await self._idle(loop.wakeup, started)
        return True

    def _sink_failed(self, sink: str, exc: Exception) -> None:
        if sink == "kafka":
            KAFKA_ERRORS.inc()
            log.error("[KAFKA ERROR] outbox publish failed: %r", exc)
            return
        RECEIPT_ERRORS.inc()
        if self._receipt_warning.ready():  # an outage: one line per interval, not per try
            log.warning("outbox relay: receipt registration failed: %s (retrying)", exc)

    def _set_leader(self, leading: bool) -> None:
        self.is_leader = leading
        self._leader_gauge.set(1 if leading else 0)
        if leading:
            log.info("outbox relay: this process %s", "sends the webhooks"
                     if self._sender is not None else "publishes the events")
        else:
            for loop in self._loops:
                loop.publisher.clear_gauge()

    def _database_failed(self, what: str, exc: BaseException, *,
                         outage: bool | None = None) -> None:
        """An outage (connection lost or refused, server restarting, out of resources) is one
        warning line at most every OUTAGE_LOG_INTERVAL_S; any other database error is a
        defect or a misconfiguration and keeps its traceback."""
        if not (isinstance(exc, UNAVAILABLE) if outage is None else outage):
            log.error("outbox relay: %s", what, exc_info=exc)
            return
        now = time.monotonic()
        if self._db_down_since is None:
            self._db_down_since = now
        if self._db_warning.ready():
            log.warning("outbox relay: %s: %r (unavailable for %.0fs; retrying)",
                        what, exc, now - self._db_down_since)

    def _database_back(self) -> None:
        if self._db_down_since is not None:
            log.warning("outbox relay: database reachable again after %.0fs",
                        time.monotonic() - self._db_down_since)
            self._db_down_since = None

    def _on_notify(self, *_: Any) -> None:
        self.wake()

    async def _retry_later(self) -> None:
        self._failures += 1
        await self._backoff(self._failures)

    async def _backoff(self, failures: int) -> None:
        delay = min(self._backoff_max_s, BACKOFF_MIN_S * 2 ** min(failures, 16))
        delay *= random.uniform(0.5, 1.0)
        # The failure itself was logged (rate-limited for an outage): no line per attempt.
        log.debug("outbox relay: attempt %d failed, retrying in %.2fs", failures, delay)
        # Only close() cuts a backoff short: wake() comes with every commit, and an
        # outage must not turn those into a retry storm.
        await _wait_event(self._stopping, delay)

    async def _idle(self, wakeup: asyncio.Event, cycle_started: float) -> None:
        """Sleep until the poll interval passes, wake() or a NOTIFY arrives, or close().

        Then, under load, let rows gather: a cycle costs about as much CPU for one row as
        for a hundred (mostly the Kafka produce round), so cycles start at most once per
        linger interval. After a quiet spell the next cycle starts at once.
        """
        await _wait_event(wakeup, self._poll_interval_s)
        wakeup.clear()
        rest_s = cycle_started + self._linger_s - time.monotonic()
        if rest_s > 0:
            await _wait_event(self._stopping, rest_s)


class _Producer:
    """The Kafka producer, or nothing without Kafka (its drops are then no-ops)."""

    def __init__(self, bootstrap_servers: str | None, topic: str, timeout_s: float) -> None:
        self.producer = (BatchProducer(bootstrap_servers, topic, timeout_s=timeout_s)
                         if bootstrap_servers else None)

    async def drop(self, *, abandon: bool = False) -> None:
        if self.producer is not None:
            await self.producer.drop(abandon=abandon)


class _SinkLoop:
    """One sink's publisher, its wake-up and its failures in a row."""

    def __init__(self, publisher: SinkPublisher) -> None:
        self.publisher = publisher
        self.wakeup = asyncio.Event()
        self.failures = 0


async def _wait_event(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


async def run_standalone(database_url: str, bootstrap_servers: str | None, topic: str,
                         **options: Any) -> None:
    """`kassa relay` and `kassa webhook-sender`: take part in the election until SIGINT or
    SIGTERM. `options` go to OutboxRelay (batch_size_max, linger_ms, webhooks, ...)."""
    # Its own process: OTEL_* decide here too (the publish and delivery spans).
    tracing.configure("kassa-webhook-sender" if options.get("webhooks") else "kassa-relay")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    relay = OutboxRelay(database_url, bootstrap_servers, topic, **options)
    await relay.start()
    if bootstrap_servers:
        log.info("outbox relay for %s on %s started (publishes while it holds the lock)",
                 topic, bootstrap_servers)
    else:
        log.info("outbox relay started (%s while it holds the lock)",
                 "sends the webhooks" if options.get("webhooks") else "registers receipts")
    try:
        await stop.wait()
    finally:
        await relay.close()
        tracing.shutdown()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
