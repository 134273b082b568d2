"""The webhook sender: runs in the relay's leader, next to its sink loops.

Why the leader and not every process claiming rows: the leader already is the one process
per database that reads the journal feed, so the sending costs one process, not a poll of
the deliveries table from every worker; the number in flight is bounded once for the
whole database; the sink can hand new deliveries over in memory, with their events
already built; and the election already handles failover.

A new delivery is created claimed (its due time pushed past the attempt's timeout: a
lease) and handed over by the sink (`offer`); due retries are claimed from the table at
most once per poll interval, their events built again from their journals. Each cycle
sends up to `in_flight_max` at once over kept-alive connections (transport.py: a lean
HTTP/1.1 client, as httpx costs about 1 ms of CPU per POST) and records every outcome in
one statement. A leader that dies mid-attempt, or a hand-over that did not fit in memory,
leaves the deliveries due again once their lease ends: at least once. The claim uses FOR
UPDATE SKIP LOCKED, so several senders could share the table if one process is ever not
enough.

Each attempt carries the Standard Webhooks headers (core/ledger/webhooks.py) with a fresh
timestamp and the same `webhook-id` (`msg_` + the receipt code: one event per journal, the
same on every retry and redelivery, so receivers deduplicate on it). A 2xx ends the
delivery; anything else (another status, a refused connection, a timeout) is retried
after a full-jitter exponential wait until its retry window has passed, then it is
dead-lettered (status failed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from core.kit.rate_limit import Throttle
from core.ledger.events import event_payload
from core.ledger.webhooks import RetryPolicy, headers, retry_in, secret_key
from server.adapters.kafka.publisher import finished_journal
from server.adapters.postgres.outbox import OutboxSession
from server.adapters.postgres.pool import OUTAGE_LOG_INTERVAL_S
from server.adapters.postgres.webhooks import MESSAGE_ID_PREFIX, claim, oldest_pending_age, record
from server.adapters.webhooks.transport import ProtocolError, Transport
from server.process.settings import Settings

log = logging.getLogger("kassa.webhooks")

DELIVERIES = Counter("kassa_webhook_deliveries_total",
                     "Webhook delivery attempts by outcome: succeeded (2xx), retried (will be "
                     "tried again), failed (dead-lettered after the retry window).",
                     ["outcome"])
for _outcome in ("succeeded", "retried", "failed"):  # at 0 from the start
    DELIVERIES.labels(_outcome)
OLDEST_PENDING_AGE = Gauge(
    "kassa_webhook_oldest_pending_age_seconds",
    "Age of the oldest webhook delivery not yet succeeded or dead-lettered (set by the "
    "sending process).",
    multiprocess_mode="livemax",
)
LEASE_MARGIN_S = 5.0
ERROR_TEXT_MAX = 200
GAUGE_INTERVAL_S = 1.0
HANDOVER_FACTOR = 16  # new deliveries held in memory, in units of in_flight_max
# What a failed attempt raises (the answer itself is judged by its status).
ATTEMPT_ERRORS = (OSError, TimeoutError, EOFError, ProtocolError, ValueError, LookupError,
                  asyncio.LimitOverrunError)


@dataclass(frozen=True)
class SenderOptions:
    """KASSA_WEBHOOK_*: the retry schedule, the attempt's timeout, how many at once and
    how often due retries are looked for."""

    policy: RetryPolicy = RetryPolicy()
    timeout_s: float = 10.0
    in_flight_max: int = 64
    poll_interval_s: float = 0.5

    @property
    def lease_s(self) -> float:
        return self.timeout_s + LEASE_MARGIN_S


@dataclass(frozen=True)
class Attempt:
    """One delivery to send now."""

    delivery_id: int
    url: str
    secret: str
    receipt_code: str
    payload: bytes | None  # None: its journal is gone (kassa verify reports it)
    attempts: int  # this one included
    window_left_s: float  # of its retry window


def sender_options(settings: Settings) -> SenderOptions:
    return SenderOptions(
        policy=RetryPolicy(base_s=settings.webhook_retry_base_ms / 1000,
                           cap_s=settings.webhook_retry_cap_s,
                           window_s=settings.webhook_retry_window_s),
        timeout_s=settings.webhook_timeout_ms / 1000,
        in_flight_max=settings.webhook_in_flight_max,
        poll_interval_s=settings.webhook_poll_interval_ms / 1000)


class WebhookSender:
    def __init__(self, options: SenderOptions) -> None:
        self._options = options
        self.wakeup = asyncio.Event()
        self._http: Transport | None = None
        self._keys: dict[str, bytes] = {}
        self._warning = Throttle(OUTAGE_LOG_INTERVAL_S)
        self._gauge_due = 0.0
        self._claim_due = 0.0
        # New deliveries from the sink; beyond HANDOVER_MAX they wait for their lease.
        self._handed: collections.deque[Attempt] = collections.deque()
        self.sent = 0  # succeeded attempts, for tests and logs

    def offer(self, attempts: list[Attempt]) -> None:
        """New deliveries, claimed in the statement that created them."""
        room = HANDOVER_FACTOR * self._options.in_flight_max - len(self._handed)
        self._handed.extend(attempts[:max(0, room)])
        self.wakeup.set()

    async def run(self, session: OutboxSession, stopping: asyncio.Event) -> bool:
        """Send until `stopping`; database errors are raised (the relay reconnects)."""
        o = self._options
        self._http = Transport()
        try:
            while not stopping.is_set():
                await self._update_gauge(session)
                batch = [self._handed.popleft()
                         for _ in range(min(o.in_flight_max, len(self._handed)))]
                if len(batch) < o.in_flight_max and time.monotonic() >= self._claim_due:
                    self._claim_due = time.monotonic() + o.poll_interval_s
                    batch += await self._claim(session, o.in_flight_max - len(batch))
                if batch:
                    outcomes = await asyncio.gather(*(self._attempt(a) for a in batch))
                    await record(session, _columns(outcomes))
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(o.poll_interval_s):
                        await self.wakeup.wait()
                self.wakeup.clear()
            return True
        finally:
            await self._http.aclose()
            OLDEST_PENDING_AGE.set(0)  # the next leader reports it

    async def _claim(self, session: OutboxSession, limit: int) -> list[Attempt]:
        rows, journals = await claim(session, limit, self._options.lease_s)
        events = {j["id"]: event_payload(finished_journal(j)) for j in journals}
        return [Attempt(r["id"], r["url"], r["secret"], r["receipt_code"],
                        events.get(r["journal_id"]), r["attempts"], r["window_left_s"])
                for r in rows]

    async def _attempt(self, a: Attempt) -> tuple[int, bool, float | None, int | None,
                                                   str | None]:
        assert self._http is not None
        key = self._keys.get(a.secret)
        if key is None:
            key = self._keys[a.secret] = secret_key(a.secret)
        status: int | None = None
        error: str | None = None
        try:
            if a.payload is None:
                raise LookupError("its journal does not exist")
            async with asyncio.timeout(self._options.timeout_s):
                status = await self._http.post(a.url, a.payload, headers(
                    key, MESSAGE_ID_PREFIX + a.receipt_code, int(time.time()), a.payload))
            if 200 <= status < 300:
                DELIVERIES.labels("succeeded").inc()
                self.sent += 1
                return a.delivery_id, True, None, status, None
            error = f"HTTP {status}"
        except ATTEMPT_ERRORS as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX]
        wait_s = retry_in(self._options.policy, a.attempts, a.window_left_s)
        DELIVERIES.labels("retried" if wait_s is not None else "failed").inc()
        if wait_s is None:
            log.warning("webhook delivery %d to %s dead-lettered after %d attempts: %s",
                        a.delivery_id, a.url, a.attempts, error)
        elif self._warning.ready():  # a receiver down: one line per interval
            log.info("webhook delivery %d to %s failed (%s); retrying", a.delivery_id, a.url,
                     error)
        return a.delivery_id, False, wait_s, status, error

    async def _update_gauge(self, session: OutboxSession) -> None:
        now = time.monotonic()
        if now >= self._gauge_due:
            self._gauge_due = now + GAUGE_INTERVAL_S
            OLDEST_PENDING_AGE.set(await oldest_pending_age(session))


def _columns(outcomes: list[tuple[int, bool, float | None, int | None, str | None]]
             ) -> tuple[list[int], list[bool], list[float | None], list[int | None],
                        list[str | None]]:
    return ([o[0] for o in outcomes], [o[1] for o in outcomes], [o[2] for o in outcomes],
            [o[3] for o in outcomes], [o[4] for o in outcomes])
