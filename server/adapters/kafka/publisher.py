"""The relay's publishing cycle, per sink: read the journals past the sink's cursor, hand
them to the sink, move the cursor.

One cycle: read up to a batch of journals whose event is due past the cursor (their rows
and ledger entries, server/adapters/postgres/outbox.py), build what the sink takes from
them (core/ledger/events.py: the Kafka event; core/pipeline/receipts.py: the receipts),
deliver it and wait for the acknowledgement, then move the sink's cursor to the last
journal in one statement. No row lock and no transaction is held meanwhile. A crash
between the acknowledgement and the cursor's move delivers those journals again (at
least once; Kafka consumers deduplicate by receipt code, the receipt service keeps the
furthest status of each code). Two sinks: Kafka and, when there is a receipt service,
the receipts. Each has its own cursor, so one that is down never holds the other back.
The relay (relay.py) runs each sink's cycles while its process holds the relay lock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import asyncpg
import msgspec
from aiokafka.errors import KafkaError
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Gauge, Histogram

from core.ledger.errors import Unavailable
from core.ledger.events import FinishedJournal, TargetNow, event_payload
from core.ledger.models import Entry, ErrorBody, Leg
from core.pipeline.ports import ReceiptRecord
from core.pipeline.receipts import receipt_records
from server.adapters.kafka.producer import BatchProducer, Headers
from server.adapters.postgres.outbox import OutboxSession
from server.tracing import spans

PUBLISH_LAG = Histogram(
    "kassa_outbox_publish_lag_seconds",
    "Per published batch: its oldest journal's completed_at to the cursor's move after "
    "the Kafka acks.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
OLDEST_UNPUBLISHED_AGE = Gauge(
    "kassa_outbox_oldest_unpublished_age_seconds",
    "Age of the oldest finished journal past the Kafka cursor (set by the publishing "
    "process).",
    multiprocess_mode="livemax",
)
PUBLISHED = Counter("kassa_outbox_published_total", "Events published to Kafka.")
RECEIPTS_OLDEST_UNREGISTERED_AGE = Gauge(
    "kassa_receipts_oldest_unregistered_age_seconds",
    "Age of the oldest finished journal past the receipts cursor (set by the publishing "
    "process).",
    multiprocess_mode="livemax",
)
RECEIPTS_REGISTERED = Counter("kassa_receipts_registered_total",
                              "Finished journals whose receipts the relay registered.")

GAUGE_INTERVAL_S = 1.0

_legs = msgspec.json.Decoder(tuple[Leg, ...])
_entries = msgspec.json.Decoder(list[tuple[str, str, int, int]])


class Sink(Protocol):
    """Where a relay delivers journals: `deliver` returns once the sink has them all and
    raises one of `errors` when it is unreachable (the batch is delivered again later)."""

    name: str  # its cursor row in journal_cursors
    errors: tuple[type[Exception], ...]
    steps_down: bool  # whether failing for long makes the relay let another process try

    async def ready(self) -> None: ...

    async def deliver(self, journals: list[FinishedJournal]) -> None: ...

    async def failed(self) -> None: ...


@runtime_checkable
class CursorSink(Protocol):
    """A sink in the database itself: it takes the journals and moves its cursor in one
    transaction (the webhooks sink, server/adapters/webhooks/sink.py), so what it makes of
    each journal exists exactly once."""

    name: str
    errors: tuple[type[Exception], ...]
    steps_down: bool

    async def ready(self) -> None: ...

    async def wanted(self, session: OutboxSession) -> bool:
        """Whether anything takes journals now (False: no webhook endpoint), read once per
        cycle; without a taker the cycle moves the cursor reading only the journals' keys."""
        ...

    async def deliver_with_cursor(self, session: OutboxSession, journals: list[FinishedJournal],
                                  to: tuple[int, int]) -> dt.datetime: ...

    async def failed(self) -> None: ...


class KafkaSink:
    """The events, keyed by receipt code, one record batch per partition."""

    name = "kafka"
    errors: tuple[type[Exception], ...] = (KafkaError,)
    steps_down = True  # only this host may be cut off from Kafka

    def __init__(self, kafka: BatchProducer) -> None:
        self.kafka = kafka

    async def ready(self) -> None:
        # The producer first: a new publisher connects before any journal needs it, and
        # while Kafka is down no journals are read in vain.
        await self.kafka.ready()

    async def deliver(self, journals: list[FinishedJournal]) -> None:
        # Each record carries its journal's stored traceparent, so a consumer continues
        # the request's trace; the publish is one span of the batch (server/tracing).
        messages = [(j.receipt_code.encode(), event_payload(j), _trace_header(j))
                    for j in journals]
        if not spans.ENABLED:
            await self.kafka.publish(messages)
            return
        with spans.batch("kassa.relay.publish", (j.traceparent for j in journals),
                         SpanKind.PRODUCER, {"messaging.system": "kafka",
                                             "messaging.batch.message_count": len(journals)}):
            await self.kafka.publish(messages)

    async def failed(self) -> None:
        # A failed producer may hold dead connections or an id a restarted broker no
        # longer knows: the next attempt starts a fresh one.
        await self.kafka.drop(abandon=True)


class ReceiptSink:
    """The receipts, one RegisterReceipts call per batch."""

    name = "receipts"
    errors: tuple[type[Exception], ...] = (Unavailable,)
    steps_down = False  # publishing to Kafka must go on meanwhile

    def __init__(self, register: Callable[[list[ReceiptRecord]], Awaitable[None]]) -> None:
        self._register = register

    async def ready(self) -> None:
        return None

    async def deliver(self, journals: list[FinishedJournal]) -> None:
        if not spans.ENABLED:
            await self._register(receipt_records(journals))
            return
        # The batch's span is current during the call: the gRPC client span and the
        # service's continue it (server/tracing/grpc_context.py).
        with spans.batch("kassa.relay.receipts", (j.traceparent for j in journals),
                         attributes={"kassa.batch.size": len(journals)}):
            await self._register(receipt_records(journals))

    async def failed(self) -> None:
        return None


@dataclass(frozen=True)
class SinkMetrics:
    delivered: Counter
    oldest_age: Gauge
    lag: Histogram | None = None


KAFKA_METRICS = SinkMetrics(PUBLISHED, OLDEST_UNPUBLISHED_AGE, PUBLISH_LAG)
RECEIPT_METRICS = SinkMetrics(RECEIPTS_REGISTERED, RECEIPTS_OLDEST_UNREGISTERED_AGE)


class SinkPublisher:
    """The publishing half of one sink of an OutboxRelay; `reset()` it whenever its relay
    starts to lead (the cursor is read then, and kept here while leading: only the leader
    moves it)."""

    def __init__(self, sink: Sink | CursorSink, batch_size_max: int,
                 metrics: SinkMetrics) -> None:
        self.sink = sink
        self._batch_size_max = batch_size_max
        self._metrics = metrics
        self._cursor: tuple[int, int] | None = None
        self._gauge_due = 0.0
        self.published = 0  # journals delivered, for tests and logs

    @property
    def cursor(self) -> tuple[int, int] | None:
        return self._cursor

    async def reset(self, session: OutboxSession) -> None:
        self._cursor = await session.cursor(self.sink.name)
        self._gauge_due = 0.0

    async def publish_batch(self, session: OutboxSession) -> int:
        """One read-deliver-advance cycle; returns the number of journals delivered."""
        assert self._cursor is not None, "SinkPublisher.reset() was not called"
        await self.sink.ready()
        if isinstance(self.sink, CursorSink) and not await self.sink.wanted(session):
            return await self._skip(session)
        rows = await session.due(self._cursor, self._batch_size_max)
        if not rows:
            return 0
        journals = [finished_journal(r) for r in rows]
        last = (int(rows[-1]["xid"]), int(rows[-1]["id"]))
        oldest = min(r["completed_at"] for r in rows)
        if isinstance(self.sink, CursorSink):
            self._observe_lag(await self.sink.deliver_with_cursor(session, journals, last),
                              oldest)
        else:
            await self.sink.deliver(journals)
            await self._advance(session, last, oldest)
        self._cursor = last
        self._metrics.delivered.inc(len(rows))
        self.published += len(rows)
        return len(rows)

    async def _skip(self, session: OutboxSession) -> int:
        """Move the cursor past up to a batch of journals that nothing takes, reading only
        their keys (no entries, no event built)."""
        assert self._cursor is not None
        keys = await session.due_keys(self._cursor, self._batch_size_max)
        if not keys:
            return 0
        last = (int(keys[-1]["xid"]), int(keys[-1]["id"]))
        await self._advance(session, last, min(k["completed_at"] for k in keys))
        self._cursor = last
        self._metrics.delivered.inc(len(keys))
        return len(keys)

    async def _advance(self, session: OutboxSession, to: tuple[int, int],
                       oldest: dt.datetime) -> None:
        self._observe_lag(await session.advance(self.sink.name, to), oldest)

    def _observe_lag(self, now: dt.datetime, oldest: dt.datetime) -> None:
        if self._metrics.lag is not None:
            self._metrics.lag.observe(max(0.0, (now - oldest).total_seconds()))

    async def update_gauge(self, session: OutboxSession, now: float) -> None:
        """The oldest waiting journal's age, at most once per GAUGE_INTERVAL_S."""
        if self._cursor is not None and now >= self._gauge_due:
            self._gauge_due = now + GAUGE_INTERVAL_S
            self._metrics.oldest_age.set(await session.oldest_age(self._cursor))

    def clear_gauge(self) -> None:
        self._metrics.oldest_age.set(0)  # the next publisher reports it


def finished_journal(row: asyncpg.Record) -> FinishedJournal:
    """A journal as DUE_SQL reads it."""
    error = (ErrorBody(row["error_code"], row["error_message"] or "", row["error_param"])
             if row["error_code"] is not None else None)
    named = (TargetNow(row["target"], row["target_type"], row["target_status"],
                       row["target_currency"], _legs.decode(row["target_legs"]))
             if row["target_type"] is not None else None)
    return FinishedJournal(
        journal_id=row["id"], receipt_code=row["external_ref"], type=row["type"],
        status=row["status"], currency=row["currency"], legs=_legs.decode(row["legs"]),
        is_hold=row["is_hold"], completed_at=rfc3339(row["completed_at"]),
        entries=[Entry(*e) for e in _entries.decode(row["entries"])], error=error,
        description=row["description"], target=row["target"], named=named,
        traceparent=row.get("traceparent"))


def _trace_header(journal: FinishedJournal) -> Headers:
    return [] if journal.traceparent is None else [("traceparent", journal.traceparent.encode())]


def rfc3339(when: dt.datetime) -> str:
    """As the ledger writes times (core/kit/clock.py): UTC, microseconds, a Z."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
