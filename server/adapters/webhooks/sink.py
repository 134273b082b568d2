"""The relay's third sink: journals past the 'webhooks' cursor become deliveries.

One cycle (server/adapters/kafka/publisher.py) reads the journals past the cursor; this
sink picks those that some endpoint's filter takes, builds their events, has the sender
make each delivery's first attempt, waits for them up to FIRST_WAIT_S (sender.py), then, in one
transaction, writes a delivery row per (journal, matching endpoint) with its outcome and
moves the cursor (server/adapters/postgres/webhooks.py). So each delivery's row is written
once, and only once per cycle that moves the cursor; a cycle that fails before its commit
sends again (at least once). Kafka's state plays no part: its sink has its own cursor.
With no endpoint registered a cycle only moves the cursor, reading only the journals' keys
(wanted(), publisher.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from prometheus_client import Counter, Gauge

from core.ledger.events import FinishedJournal, event_payload
from core.ledger.webhooks import matches
from server.adapters.kafka.publisher import SinkMetrics
from server.adapters.postgres.outbox import OutboxSession
from server.adapters.postgres.webhooks import FirstRow, endpoints, write_first
from server.adapters.webhooks.sender import Attempt, Outcome, WebhookSender

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

    def __init__(self, window_s: float, lease_s: float, sender: WebhookSender) -> None:
        self._window_s = window_s
        self._lease_s = lease_s
        self._sender = sender
        self._endpoints: list[Any] = []  # as read by this cycle's wanted()

    async def ready(self) -> None:
        return None

    async def wanted(self, session: OutboxSession) -> bool:
        self._endpoints = await endpoints(session)
        return bool(self._endpoints)

    async def failed(self) -> None:
        return None

    async def deliver_with_cursor(self, session: OutboxSession, journals: list[FinishedJournal],
                                  to: tuple[int, int]) -> dt.datetime:
        found = self._endpoints
        keys: list[tuple[str, FinishedJournal, str]] = []  # endpoint id, journal, event
        attempts: list[Attempt] = []
        for journal in journals if found else ():
            event = f"transaction.{journal.event_status}"
            takers = [e for e in found if matches(e["events"], event)]
            payload = event_payload(journal) if takers else b""
            for e in takers:
                keys.append((e["id"], journal, event))
                attempts.append(Attempt(None, e["url"], e["secret"], journal.receipt_code,
                                        payload, 1, self._window_s, journal.traceparent))
        tasks = await self._sender.first(attempts)
        rows = [self._row(key, task) for key, task in zip(keys, tasks, strict=True)]
        now, written = await write_first(session, self.name, to, rows, self._window_s)
        in_flight = {(key[0], key[1].journal_id): task
                     for key, task in zip(keys, tasks, strict=True)
                     if task is not None and not task.done()}
        for row in written if in_flight else ():
            task = in_flight.get((row["endpoint_id"], row["journal_id"]))
            if task is not None:
                self._sender.adopt(row["id"], task)
        return now

    def _row(self, key: tuple[str, FinishedJournal, str],
             task: asyncio.Task[Outcome] | None) -> FirstRow:
        """The delivery's row: its first attempt's outcome, or in flight (claimed for a
        lease), or not started (due now)."""
        endpoint_id, journal, event = key
        head = (endpoint_id, journal.journal_id, journal.receipt_code, event)
        if task is None:
            return (*head, "pending", 0, 0.0, None, None)
        if not task.done():
            return (*head, "pending", 1, self._lease_s, None, None)
        ok, retry_in_s, status, error = task.result()
        state = "succeeded" if ok else "pending" if retry_in_s is not None else "failed"
        return (*head, state, 1, retry_in_s or 0.0, status, error)
