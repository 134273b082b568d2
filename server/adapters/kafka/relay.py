"""The outbox relay: one publisher per database, elected by a PostgreSQL advisory lock.

Every worker process of `kassa serve`, on every host, and `kassa relay` run an
OutboxRelay. Each holds one dedicated connection, never a pooled one (pooled
connections are released without a session reset, so session state must not live on
them), and on it tries `pg_try_advisory_lock(RELAY_LOCK_ID)` every standby interval.
The one that gets the lock publishes until that connection closes; a dead process or a
killed backend frees the lock and a standby takes over within one interval. All of the
publisher's SQL runs on that same connection, so a publisher that lost the lock cannot
touch the table any more. It also gives up the lock after failing to publish for
`step_down_after_s`, in case only its own host is cut off from Kafka.

One publishing cycle: read the oldest rows, publish them (one record batch per partition,
idempotent, `acks="all"`), wait for the acks, `DELETE` them in one statement. No row lock
and no transaction is held meanwhile. A crash between the acks and the delete publishes
those rows again (at least once; consumers deduplicate by receipt code); while Kafka is
down the rows stay and the publisher retries with bounded backoff on a fresh producer.

Wake-ups: the executor calls `wake()` after every commit. In the publisher's process
that ends the idle wait at once. A standby forwards it as `NOTIFY` on its own connection
(one in flight, at most one per linger interval), which the publisher LISTENs for. Under
load the publisher lingers: cycles start at most once per linger interval, so each Kafka
produce round carries more rows. A wake-up that gets lost costs at most the poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections import deque
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge, Histogram

from server.adapters.kafka.producer import BatchProducer

log = logging.getLogger("kassa.outbox")

PUBLISH_LAG = Histogram(
    "kassa_outbox_publish_lag_seconds",
    "Per published batch: its oldest row's created_at to the delete after the Kafka acks.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
OLDEST_UNPUBLISHED_AGE = Gauge(
    "kassa_outbox_oldest_unpublished_age_seconds",
    "Age of the oldest unpublished outbox row (set by the publishing process).",
    multiprocess_mode="livemax",
)
PUBLISHED = Counter("kassa_outbox_published_total", "Outbox rows published to Kafka.")
KAFKA_ERRORS = Counter("kassa_kafka_errors_total", "Failed Kafka publish or connect attempts.")
LEADER = Gauge("kassa_outbox_relay_leader", "1 in the process that holds the relay lock.",
               multiprocess_mode="livesum")

# Any constant works; it only has to be the same for every relay on the database
# (and differ from migrate.MIGRATION_LOCK_ID).
RELAY_LOCK_ID = 0x4B52454C4159  # "KRELAY"
CHANNEL = "kassa_outbox"
APPLICATION_NAME = "kassa-outbox-relay"
CONNECT_TIMEOUT_S = 10.0
QUERY_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
GAUGE_INTERVAL_S = 1.0
# Outbox ids are drawn inside the executor's transaction, a few ms before its commit.
SETTLE_S = 2.0  # a transaction commits within this after drawing its id (nearly always)
FULL_SCAN_INTERVAL_S = 10.0  # and one that does not is published within this
BACKOFF_MIN_S = 0.05
SESSION_SETTINGS = {
    "application_name": APPLICATION_NAME,
    # The server notices a vanished relay host (and frees its lock) after about 25 s
    # instead of the kernel's two hours. Ignored on unix sockets.
    "tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3",
    # A queue table's statistics are always wrong: analyzed when nearly empty, its pages
    # then fill with dead rows until vacuum. A plan cached meanwhile may read them all,
    # every time. Every query on this connection wants the primary key.
    "enable_seqscan": "off",
}

TRY_LOCK_SQL = "SELECT pg_try_advisory_lock($1)"
NOTIFY_SQL = f"NOTIFY {CHANNEL}"
# Every row in the table waits to be published. `published_at` stays NULL (drain queries
# count `WHERE published_at IS NULL`); a row an older relay marked during a rolling
# upgrade goes out once more rather than staying forever. `id > $2`: see _scan_floor.
CLAIM_SQL = "SELECT id, receipt_code, payload FROM outbox WHERE id > $2 ORDER BY id LIMIT $1"
# clock_timestamp(), not now(): the batch's lag up to its acks, one value per batch.
DELETE_SQL = """
WITH gone AS (DELETE FROM outbox WHERE id = ANY($1::bigint[]) RETURNING created_at)
SELECT extract(epoch FROM clock_timestamp() - min(created_at))::float8 FROM gone
"""
OLDEST_SQL = """
SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 FROM outbox ORDER BY id LIMIT 1
"""
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class OutboxRelay:
    """One per process; `start()` it in the serving loop, `close()` it on shutdown."""

    def __init__(self, dsn: str, bootstrap_servers: str, topic: str, *,
                 batch_size_max: int = 500, poll_interval_ms: float = 500.0,
                 linger_ms: float = 20.0,
                 standby_interval_ms: float = 1000.0, step_down_after_s: float = 30.0,
                 backoff_max_s: float = 5.0, publish_timeout_s: float = 5.0) -> None:
        assert batch_size_max > 0 and poll_interval_ms > 0 and standby_interval_ms > 0
        self._dsn = dsn
        self._kafka = BatchProducer(bootstrap_servers, topic, timeout_s=publish_timeout_s)
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
        self._gauge_due = 0.0
        self._floor = 0
        self._floor_marks: deque[tuple[float, int]] = deque()
        self._full_scan_due = 0.0
        self.is_leader = False
        self.published = 0  # rows this relay published, for tests and logs

    async def start(self) -> None:
        assert self._task is None, "OutboxRelay.start() called twice"
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    def wake(self) -> None:
        """Rows were committed: publish them now (through NOTIFY when another process leads)."""
        self._wakeup.set()

    async def close(self) -> None:
        """Finish the batch in flight, release the lock, close the producer."""
        self._stopping.set()
        self._wakeup.set()
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
                conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT_S,
                                             command_timeout=QUERY_TIMEOUT_S,
                                             server_settings=SESSION_SETTINGS)
            except DATABASE_ERRORS as exc:
                log.error("outbox relay: cannot connect to the database: %r", exc)
                await self._retry_later()
                continue
            try:
                if await self._stand_by(conn):
                    if not await self._lead(conn):
                        sit_out_s = 2 * self._standby_interval_s  # let another process win
            except DATABASE_ERRORS as exc:
                log.error("outbox relay: database error: %r", exc)
                await self._kafka.drop()  # a standby needs no producer; nothing is in flight
                await self._retry_later()
            except Exception:
                log.exception("outbox relay: unexpected error")
                await self._kafka.drop(abandon=True)
                await self._retry_later()
            finally:
                await _close(conn)
            if sit_out_s:
                await _wait_event(self._stopping, sit_out_s)

    async def _stand_by(self, conn: asyncpg.Connection) -> bool:
        """Until this connection holds the lock (True) or close() (False); meanwhile every
        wake() becomes a NOTIFY to whoever publishes."""
        while not self._stopping.is_set():
            if await conn.fetchval(TRY_LOCK_SQL, RELAY_LOCK_ID):
                return True
            # Jitter: standbys started together should not ask in step.
            deadline = time.monotonic() + self._standby_interval_s * random.uniform(0.5, 1.0)
            while (left := deadline - time.monotonic()) > 0:
                await _wait_event(self._wakeup, left)
                if self._stopping.is_set():
                    return False
                if self._wakeup.is_set():
                    self._wakeup.clear()
                    await conn.execute(NOTIFY_SQL)
                    # The publisher starts a cycle at most once per linger interval, so
                    # a NOTIFY sooner than that would not publish anything sooner.
                    await _wait_event(self._stopping, self._linger_s)
        return False

    async def _lead(self, conn: asyncpg.Connection) -> bool:
        """Publish until close() (True) or until failing for `step_down_after_s` (False)."""
        await conn.add_listener(CHANNEL, self._on_notify)
        self._set_leader(True)
        self._floor, self._full_scan_due = 0, 0.0
        self._floor_marks.clear()
        failing_since: float | None = None
        try:
            while not self._stopping.is_set():
                await self._update_gauge(conn)
                started = time.monotonic()
                try:
                    published = await self.publish_batch(conn)
                except KafkaError as exc:
                    KAFKA_ERRORS.inc()
                    log.error("[KAFKA ERROR] outbox publish failed: %r", exc)
                    # A failed producer may hold dead connections or an id a restarted
                    # broker no longer knows: the next attempt starts a fresh one.
                    await self._kafka.drop(abandon=True)
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since >= self._step_down_after_s:
                        log.warning("outbox relay: stepping down after failing for %.0fs",
                                    self._step_down_after_s)
                        return False
                    await self._retry_later()
                    continue
                failing_since, self._failures = None, 0
                if published < self._batch_size_max:
                    await self._idle(started)
            return True
        finally:
            self._set_leader(False)

    def _set_leader(self, leading: bool) -> None:
        self.is_leader = leading
        LEADER.set(1 if leading else 0)
        if leading:
            log.info("outbox relay: this process publishes the outbox")
        else:
            OLDEST_UNPUBLISHED_AGE.set(0)  # the next publisher reports it

    def _on_notify(self, *_: Any) -> None:
        self._wakeup.set()

    # Publishing

    async def publish_batch(self, conn: asyncpg.Connection) -> int:
        """One read-publish-delete cycle; returns the number of rows published."""
        # The producer first: a new publisher connects before any row needs it, and
        # while Kafka is down no rows are read in vain.
        await self._kafka.ready()
        rows = await conn.fetch(CLAIM_SQL, self._batch_size_max, self._scan_floor())
        if not rows:
            return 0
        await self._kafka.publish([(code.encode(), payload) for _, code, payload in rows])
        ids = [row[0] for row in rows]
        await self._delete_published(conn, ids)
        self._floor_marks.append((time.monotonic(), ids[-1]))
        PUBLISHED.inc(len(rows))
        self.published += len(rows)
        return len(rows)

    async def _delete_published(self, conn: asyncpg.Connection, ids: list[int]) -> None:
        lag_s = await conn.fetchval(DELETE_SQL, ids)
        PUBLISH_LAG.observe(max(0.0, lag_s or 0.0))

    def _scan_floor(self) -> int:
        """The id the next read starts above.

        Deleted rows leave dead index entries at the low end of the primary key until
        vacuum runs (a minute or more: hundreds of thousands of rows at full load), and a
        read from id 0 steps over all of them every time. Every row up to the highest id
        of a deleted batch was deleted with it, except rows whose transaction had drawn
        its id but not committed yet. So the reads start above the highest id deleted at
        least SETTLE_S ago, and every FULL_SCAN_INTERVAL_S one starts from 0 to pick up
        any transaction slower than that.
        """
        now = time.monotonic()
        if now >= self._full_scan_due:
            self._full_scan_due = now + FULL_SCAN_INTERVAL_S
            return 0
        while self._floor_marks and self._floor_marks[0][0] <= now - SETTLE_S:
            self._floor = self._floor_marks.popleft()[1]
        return self._floor

    async def _update_gauge(self, conn: asyncpg.Connection) -> None:
        now = time.monotonic()
        if now >= self._gauge_due:
            self._gauge_due = now + GAUGE_INTERVAL_S
            OLDEST_UNPUBLISHED_AGE.set(await conn.fetchval(OLDEST_SQL) or 0.0)

    async def _retry_later(self) -> None:
        self._failures += 1
        delay = min(self._backoff_max_s, BACKOFF_MIN_S * 2 ** min(self._failures, 16))
        delay *= random.uniform(0.5, 1.0)
        log.warning("outbox relay: attempt %d failed, retrying in %.2fs", self._failures, delay)
        # Only close() cuts a backoff short: wake() comes with every commit, and an
        # outage must not turn those into a retry storm.
        await _wait_event(self._stopping, delay)

    async def _idle(self, cycle_started: float) -> None:
        """Sleep until the poll interval passes, wake() or a NOTIFY arrives, or close().

        Then, under load, let rows gather: a cycle costs about as much CPU for one row as
        for a hundred (mostly the Kafka produce round), so cycles start at most once per
        linger interval. After a quiet spell the next cycle starts at once.
        """
        await _wait_event(self._wakeup, self._poll_interval_s)
        self._wakeup.clear()
        rest_s = cycle_started + self._linger_s - time.monotonic()
        if rest_s > 0:
            await _wait_event(self._stopping, rest_s)


async def _wait_event(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


async def _close(conn: asyncpg.Connection) -> None:
    """Close the dedicated connection, which releases the lock and the LISTEN."""
    try:
        await conn.close(timeout=CLOSE_TIMEOUT_S)
    except asyncio.CancelledError:
        conn.terminate()
        raise
    except Exception:  # a broken connection: the server ends the session anyway
        log.debug("outbox relay: closing the connection failed", exc_info=True)
        conn.terminate()


async def run_standalone(database_url: str, bootstrap_servers: str, topic: str,
                         **options: Any) -> None:
    """`kassa relay`: take part in the election until SIGINT or SIGTERM. `options` go to
    OutboxRelay (batch_size_max, linger_ms, ...)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    relay = OutboxRelay(database_url, bootstrap_servers, topic, **options)
    await relay.start()
    log.info("outbox relay for %s on %s started (publishes while it holds the lock)",
             topic, bootstrap_servers)
    try:
        await stop.wait()
    finally:
        await relay.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
