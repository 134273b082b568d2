"""The relay's third sink: journals past the 'webhooks' cursor become delivery rows.

One cycle (server/adapters/kafka/publisher.py) reads the journals past the cursor; this
sink picks those that some endpoint's filter takes and, in one transaction, inserts a
delivery per (journal, matching endpoint), claimed for its first attempt, and moves the
cursor (server/adapters/postgres/webhooks.py). So each delivery is created exactly once,
and Kafka's state plays no part: its sink has its own cursor. The new deliveries go to the
sender in memory with their events built here (sender.py). With no endpoint registered a
cycle only moves the cursor, building no event.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge

from core.ledger.events import FinishedJournal, event_payload
from core.ledger.webhooks import matches
from server.adapters.kafka.publisher import SinkMetrics
from server.adapters.postgres.outbox import OutboxSession
from server.adapters.postgres.webhooks import endpoints, enqueue
from server.adapters.webhooks.sender import Attempt

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

    def __init__(self, window_s: float, lease_s: float,
                 hand_over: Callable[[list[Attempt]], None]) -> None:
        self._window_s = window_s
        self._lease_s = lease_s
        self._hand_over = hand_over  # the sender's `offer`

    async def ready(self) -> None:
        return None

    async def failed(self) -> None:
        return None

    async def deliver_with_cursor(self, session: OutboxSession, journals: list[FinishedJournal],
                                  to: tuple[int, int]) -> dt.datetime:
        found: list[Any] = await endpoints(session)
        ids: list[int] = []
        codes: list[str] = []
        names: list[str] = []
        wanted: dict[int, FinishedJournal] = {}
        for journal in journals if found else ():
            event = f"transaction.{journal.event_status}"
            if any(matches(e["events"], event) for e in found):
                ids.append(journal.journal_id)
                codes.append(journal.receipt_code)
                names.append(event)
                wanted[journal.journal_id] = journal
        now, created = await enqueue(session, self.name, to, (ids, codes, names),
                                     self._window_s, self._lease_s)
        if created:
            by_id = {e["id"]: e for e in found}
            payloads = {journal_id: event_payload(j) for journal_id, j in wanted.items()}
            self._hand_over([
                Attempt(row["id"], by_id[row["endpoint_id"]]["url"],
                        by_id[row["endpoint_id"]]["secret"], wanted[row["journal_id"]].receipt_code,
                        payloads[row["journal_id"]], 1, self._window_s)
                for row in created if row["endpoint_id"] in by_id])
        return now
