"""The outbox relay's publishing cycle: read the oldest rows, publish them, delete them.

One cycle: read the oldest rows, publish them (one record batch per partition,
idempotent, `acks="all"`), wait for the acks, `DELETE` them in one statement. No row lock
and no transaction is held meanwhile. A crash between the acks and the delete publishes
those rows again (at least once; consumers deduplicate by receipt code). The relay
(relay.py) runs cycles while its process holds the relay lock.
"""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import Counter, Gauge, Histogram

from server.adapters.kafka.producer import BatchProducer
from server.adapters.postgres.outbox import OutboxSession

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

GAUGE_INTERVAL_S = 1.0
# Outbox ids are drawn inside the executor's transaction, a few ms before its commit.
SETTLE_S = 2.0  # a transaction commits within this after drawing its id (nearly always)
FULL_SCAN_INTERVAL_S = 10.0  # and one that does not is published within this


class OutboxPublisher:
    """The publishing half of one OutboxRelay; `reset()` it whenever its relay starts
    to lead."""

    def __init__(self, kafka: BatchProducer, batch_size_max: int) -> None:
        self._kafka = kafka
        self._batch_size_max = batch_size_max
        self._gauge_due = 0.0
        self._floor = 0
        self._floor_marks: deque[tuple[float, int]] = deque()
        self._full_scan_due = 0.0
        self.published = 0  # rows published, for tests and logs

    def reset(self) -> None:
        """Start over: the first read after this one scans from the lowest id."""
        self._floor, self._full_scan_due = 0, 0.0
        self._floor_marks.clear()

    async def publish_batch(self, session: OutboxSession) -> int:
        """One read-publish-delete cycle; returns the number of rows published."""
        # The producer first: a new publisher connects before any row needs it, and
        # while Kafka is down no rows are read in vain.
        await self._kafka.ready()
        rows = await session.oldest_rows(self._batch_size_max, self._scan_floor())
        if not rows:
            return 0
        await self._kafka.publish([(code.encode(), payload) for _, code, payload in rows])
        ids = [row[0] for row in rows]
        await self._delete_published(session, ids)
        self._floor_marks.append((time.monotonic(), ids[-1]))
        PUBLISHED.inc(len(rows))
        self.published += len(rows)
        return len(rows)

    async def _delete_published(self, session: OutboxSession, ids: list[int]) -> None:
        PUBLISH_LAG.observe(await session.delete(ids))

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

    async def update_gauge(self, session: OutboxSession) -> None:
        """The oldest unpublished row's age, at most once per GAUGE_INTERVAL_S."""
        now = time.monotonic()
        if now >= self._gauge_due:
            self._gauge_due = now + GAUGE_INTERVAL_S
            OLDEST_UNPUBLISHED_AGE.set(await session.oldest_age())

    @staticmethod
    def clear_gauge() -> None:
        OLDEST_UNPUBLISHED_AGE.set(0)  # the next publisher reports it
