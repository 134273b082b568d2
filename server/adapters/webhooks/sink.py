"""The relay's third sink: journals past the 'webhooks' cursor become delivery rows.

One cycle (server/adapters/kafka/publisher.py) reads the journals past the cursor; this
sink builds the event of each journal that some endpoint's filter takes and, in one
transaction, inserts a delivery per (journal, matching endpoint) and moves the cursor
(server/adapters/postgres/webhooks.py). So each delivery is created exactly once, and
Kafka's state plays no part: its sink has its own cursor. With no endpoint registered a
cycle only moves the cursor, building no event.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from core.ledger.events import FinishedJournal, event_payload
from core.ledger.webhooks import matches
from server.adapters.kafka.publisher import SinkMetrics
from server.adapters.postgres.outbox import OutboxSession
from server.adapters.postgres.webhooks import endpoint_filters, enqueue

QUEUED = Counter("kassa_webhook_journals_total",
                 "Finished journals the webhooks sink has read (delivery rows created for "
                 "those some endpoint takes).")
OLDEST_UNQUEUED_AGE = Gauge(
    "kassa_webhook_oldest_unqueued_age_seconds",
    "Age of the oldest finished journal past the webhooks cursor (set by the publishing "
    "process).",
    multiprocess_mode="livemax",
)

WEBHOOK_METRICS = SinkMetrics(QUEUED, OLDEST_UNQUEUED_AGE)


class WebhookSink:
    """Moves its own cursor, in the transaction that creates the deliveries."""

    name = "webhooks"
    errors: tuple[type[Exception], ...] = ()  # only database errors, which end the cycle
    steps_down = False

    def __init__(self, window_s: float, queued: Callable[[], None]) -> None:
        self._window_s = window_s
        self._queued = queued  # wakes the sender

    async def ready(self) -> None:
        return None

    async def failed(self) -> None:
        return None

    async def deliver_with_cursor(self, session: OutboxSession, journals: list[FinishedJournal],
                                  to: tuple[int, int]) -> dt.datetime:
        filters = [events for _, events in await endpoint_filters(session)]
        ids: list[int] = []
        codes: list[str] = []
        names: list[str] = []
        payloads: list[bytes] = []
        for journal in journals if filters else ():
            event = f"transaction.{journal.event_status}"
            if any(matches(events, event) for events in filters):
                ids.append(journal.journal_id)
                codes.append(journal.receipt_code)
                names.append(event)
                payloads.append(event_payload(journal))
        now = await enqueue(session, self.name, to, (ids, codes, names, payloads),
                            self._window_s)
        if ids:
            self._queued()
        return now
