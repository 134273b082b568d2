"""The webhook sender: runs in the relay's leader, next to its sink loops.

Why the leader and not every process claiming rows: the leader already is the one process
per database that reads the journal feed, so the sending costs one process, not a poll of
the deliveries table from every worker; the number in flight is bounded once for the
whole database; the sink can hand new deliveries over in memory, with their events
already built; and the election already handles failover.

A new delivery is sent before its row exists: the sink starts its first attempt (`first`),
waits for it up to FIRST_WAIT_S, and writes the row once with the outcome, in the
transaction that moves its cursor (a succeeded delivery costs one INSERT and nothing
more); an attempt still in flight then is written claimed (its due time pushed past the
attempt's timeout: a lease) and its outcome recorded here when it ends (`adopt`). Due
retries are claimed from the table at most once per poll interval, their events built
again from their journals. At most `in_flight_max` first attempts are in flight at once,
and as many retries, over kept-alive connections (transport.py: a lean HTTP/1.1
client, as httpx costs about 1 ms of CPU per POST); outcomes are recorded in one
statement per cycle. A leader that dies after sending but before the row is written sends
again (its cursor did not move), and one that dies mid-retry leaves the row due again once
its lease ends: at least once. The claim uses FOR UPDATE SKIP LOCKED, so several senders
could share the table if one process is ever not enough.

Each attempt carries the Standard Webhooks headers (core/ledger/webhooks.py) with a fresh
timestamp and the same `webhook-id` (`msg_` + the receipt code: one event per journal, the
same on every retry and redelivery, so receivers deduplicate on it). A 2xx ends the
delivery; anything else (another status, a refused connection, a timeout) is retried
after a full-jitter exponential wait until its retry window has passed, then it is
dead-lettered (status failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Gauge

from core.kit.rate_limit import Throttle
from core.ledger.events import event_payload
from core.ledger.webhooks import RetryPolicy, headers, retry_in, secret_key
from server.adapters.kafka.publisher import finished_journal
from server.adapters.postgres.outbox import OutboxSession
from server.adapters.postgres.pool import OUTAGE_LOG_INTERVAL_S
from server.adapters.postgres.webhooks import (
    MESSAGE_ID_PREFIX,
    claim,
    oldest_pending_age,
    prune,
    record,
)
from server.adapters.webhooks.transport import ProtocolError, Transport
from server.process.settings import Settings
from server.tracing import spans

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
# Old ended deliveries are deleted this often, at most PRUNE_WINDOW ids a statement and
# PRUNE_ROUNDS statements a time.
PRUNE_INTERVAL_S = 60.0
PRUNE_WINDOW = 1000
PRUNE_ROUNDS = 10
# How long the sink waits for first attempts before writing the slow ones claimed: a slow
# endpoint holds every endpoint's new deliveries back by at most this.
FIRST_WAIT_S = 1.0
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
    retention_s: float = 30 * 86_400.0  # ended deliveries are deleted after this

    @property
    def prune_interval_s(self) -> float:
        return min(PRUNE_INTERVAL_S, self.retention_s / 2)

    @property
    def lease_s(self) -> float:
        return self.timeout_s + LEASE_MARGIN_S


@dataclass(frozen=True)
class Attempt:
    """One delivery to send now."""

    delivery_id: int | None  # None: a first attempt, its row not written yet
    url: str
    secret: str
    receipt_code: str
    payload: bytes | None  # None: its journal is gone (kassa verify reports it)
    attempts: int  # this one included
    window_left_s: float  # of its retry window
    traceparent: str | None = None  # its journal's: the attempt's span continues that trace


# ok, the wait before the next attempt (None with ok false: dead-lettered), the receiver's
# HTTP status (None when none came back), the error.
Outcome = tuple[bool, float | None, int | None, str | None]


def sender_options(settings: Settings) -> SenderOptions:
    return SenderOptions(
        policy=RetryPolicy(base_s=settings.webhook_retry_base_ms / 1000,
                           cap_s=settings.webhook_retry_cap_s,
                           window_s=settings.webhook_retry_window_s),
        timeout_s=settings.webhook_timeout_ms / 1000,
        in_flight_max=settings.webhook_in_flight_max,
        poll_interval_s=settings.webhook_poll_interval_ms / 1000,
        retention_s=settings.webhook_retention_s)


class WebhookSender:
    def __init__(self, options: SenderOptions) -> None:
        self._options = options
        self.wakeup = asyncio.Event()
        self._http: Transport | None = None
        self._keys: dict[str, bytes] = {}
        self._warning = Throttle(OUTAGE_LOG_INTERVAL_S)
        self._gauge_due = 0.0
        self._claim_due = 0.0
        self._prune_due = 0.0
        self._first: set[asyncio.Task[Outcome]] = set()  # first attempts in flight
        # First attempts that outlived the sink's wait, ended since the last record.
        self._adopted: list[tuple[int, Outcome]] = []
        self.sent = 0  # succeeded attempts, for tests and logs

    async def first(self, attempts: list[Attempt]) -> list[asyncio.Task[Outcome] | None]:
        """Make the first attempts of new deliveries (their rows not written yet), at most
        `in_flight_max` in flight (with those of earlier cycles still going), for up to
        FIRST_WAIT_S: each comes back ended, still in flight, or None (not started: the
        endpoints are slower than the events arrive, so it is written due now and sent as
        a retry is)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FIRST_WAIT_S
        tasks: list[asyncio.Task[Outcome] | None] = []
        for a in attempts:
            while len(self._first) >= self._options.in_flight_max and loop.time() < deadline:
                await asyncio.wait(self._first, timeout=deadline - loop.time(),
                                   return_when=asyncio.FIRST_COMPLETED)
            if len(self._first) >= self._options.in_flight_max:
                break
            task = asyncio.create_task(self._attempt(a))
            self._first.add(task)
            task.add_done_callback(self._first.discard)
            tasks.append(task)
        if started := [t for t in tasks if t is not None]:
            await asyncio.wait(started, timeout=max(0.0, deadline - loop.time()))
        return [*tasks, *[None] * (len(attempts) - len(tasks))]

    def adopt(self, delivery_id: int, task: asyncio.Task[Outcome]) -> None:
        """A first attempt whose row was written claimed while it was in flight: its
        outcome is recorded when it ends."""
        def ended(t: asyncio.Task[Outcome]) -> None:
            if not t.cancelled():
                self._adopted.append((delivery_id, t.result()))
                self.wakeup.set()
        task.add_done_callback(ended)

    async def run(self, session: OutboxSession, stopping: asyncio.Event) -> bool:
        """Send until `stopping`; database errors are raised (the relay reconnects)."""
        o = self._options
        try:
            while not stopping.is_set():
                await self._update_gauge(session)
                await self._prune(session)
                ended, self._adopted = self._adopted, []
                if time.monotonic() >= self._claim_due:
                    batch = await self._claim(session, o.in_flight_max)
                    # A full claim: more may be due, look again at once.
                    self._claim_due = (0.0 if len(batch) == o.in_flight_max
                                       else time.monotonic() + o.poll_interval_s)
                    outcomes = await asyncio.gather(*(self._attempt(a) for a in batch))
                    ended += [(a.delivery_id, outcome) for a, outcome in zip(
                        batch, outcomes, strict=True) if a.delivery_id is not None]
                if ended:
                    await record(session, _columns(ended))
                if self._claim_due == 0.0:
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(o.poll_interval_s):
                        await self.wakeup.wait()
                self.wakeup.clear()
            return True
        finally:
            for task in list(self._first):
                task.cancel()
            if self._http is not None:
                await self._http.aclose()
                self._http = None
            OLDEST_PENDING_AGE.set(0)  # the next leader reports it

    async def _claim(self, session: OutboxSession, limit: int) -> list[Attempt]:
        rows, journals = await claim(session, limit, self._options.lease_s)
        events = {j["id"]: event_payload(finished_journal(j)) for j in journals}
        traces = {j["id"]: j["traceparent"] for j in journals}
        return [Attempt(r["id"], r["url"], r["secret"], r["receipt_code"],
                        events.get(r["journal_id"]), r["attempts"], r["window_left_s"],
                        traces.get(r["journal_id"])) for r in rows]

    async def _attempt(self, a: Attempt) -> Outcome:
        if not spans.ENABLED:
            return await self._send(a)
        # A client span in its journal's trace (server/tracing/spans.py), if sampled.
        with spans.batch("kassa.webhook.deliver", (a.traceparent,), SpanKind.CLIENT,
                         {"kassa.webhook.attempt": a.attempts}) as span:
            outcome = await self._send(a)
            spans.record_status(span, **{"http.response.status_code": outcome[2] or 0,
                                         "kassa.webhook.succeeded": outcome[0]})
            return outcome

    async def _send(self, a: Attempt) -> Outcome:
        if self._http is None:
            self._http = Transport()
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
                return True, None, status, None
            error = f"HTTP {status}"
        except ATTEMPT_ERRORS as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX]
        wait_s = retry_in(self._options.policy, a.attempts, a.window_left_s)
        DELIVERIES.labels("retried" if wait_s is not None else "failed").inc()
        if wait_s is None:
            log.warning("webhook delivery of %s to %s dead-lettered after %d attempts: %s",
                        a.receipt_code, a.url, a.attempts, error)
        elif self._warning.ready():  # a receiver down: one line per interval
            log.info("webhook delivery of %s to %s failed (%s); retrying", a.receipt_code,
                     a.url, error)
        return False, wait_s, status, error

    async def _prune(self, session: OutboxSession) -> None:
        now = time.monotonic()
        if now >= self._prune_due:
            self._prune_due = now + self._options.prune_interval_s
            for _ in range(PRUNE_ROUNDS):
                if not await prune(session, self._options.retention_s, PRUNE_WINDOW):
                    break

    async def _update_gauge(self, session: OutboxSession) -> None:
        now = time.monotonic()
        if now >= self._gauge_due:
            self._gauge_due = now + GAUGE_INTERVAL_S
            OLDEST_PENDING_AGE.set(await oldest_pending_age(session))


def _columns(ended: list[tuple[int, Outcome]]
             ) -> tuple[list[int], list[bool], list[float | None], list[int | None],
                        list[str | None]]:
    return ([d for d, _ in ended], [o[0] for _, o in ended], [o[1] for _, o in ended],
            [o[2] for _, o in ended], [o[3] for _, o in ended])
