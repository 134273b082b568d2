"""The webhook sender: runs in the relay's leader, next to its sink loops.

Why the leader and not every process claiming rows: the leader already is the one process
per database that reads the journal feed, so the sending costs one process, not a poll of
the deliveries table from every worker; the number in flight is bounded once for the
whole database; and the election already handles failover. Each cycle claims the due
deliveries (up to `in_flight_max`) with a lease that pushes their due time past the
attempt's timeout, sends them all at once over kept-alive connections (transport.py: a
lean HTTP/1.1 client, as httpx costs about 1 ms of CPU per POST), and records every
outcome in one statement. A leader that dies mid-attempt leaves its claims due again once
the lease ends: at least once. The claim uses FOR UPDATE SKIP LOCKED, so several senders
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

import asyncpg
from prometheus_client import Counter, Gauge

from core.kit.rate_limit import Throttle
from core.ledger.webhooks import RetryPolicy, headers, retry_in, secret_key
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
OLDEST_PENDING_AGE = Gauge(
    "kassa_webhook_oldest_pending_age_seconds",
    "Age of the oldest webhook delivery not yet succeeded or dead-lettered (set by the "
    "sending process).",
    multiprocess_mode="livemax",
)
LEASE_MARGIN_S = 5.0
ERROR_TEXT_MAX = 200
GAUGE_INTERVAL_S = 1.0
# What a failed attempt raises (the answer itself is judged by its status).
ATTEMPT_ERRORS = (OSError, TimeoutError, EOFError, ProtocolError, ValueError,
                  asyncio.LimitOverrunError)


@dataclass(frozen=True)
class SenderOptions:
    """KASSA_WEBHOOK_*: the retry schedule, the attempt's timeout, how many at once and
    how often due retries are looked for."""

    policy: RetryPolicy = RetryPolicy()
    timeout_s: float = 10.0
    in_flight_max: int = 64
    poll_interval_s: float = 0.5


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
        self.sent = 0  # succeeded attempts, for tests and logs

    async def run(self, session: OutboxSession, stopping: asyncio.Event) -> bool:
        """Send until `stopping`; database errors are raised (the relay reconnects)."""
        o = self._options
        self._http = Transport()
        try:
            while not stopping.is_set():
                await self._update_gauge(session)
                claimed = await claim(session, o.in_flight_max, o.timeout_s + LEASE_MARGIN_S)
                if claimed:
                    outcomes = await asyncio.gather(*(self._attempt(d) for d in claimed))
                    await record(session, _columns(outcomes))
                if len(claimed) < o.in_flight_max:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(o.poll_interval_s):
                            await self.wakeup.wait()
                    self.wakeup.clear()
            return True
        finally:
            await self._http.aclose()
            OLDEST_PENDING_AGE.set(0)  # the next leader reports it

    async def _attempt(self, d: asyncpg.Record) -> tuple[int, bool, float | None, int | None,
                                                          str | None]:
        assert self._http is not None
        key = self._keys.get(d["secret"])
        if key is None:
            key = self._keys[d["secret"]] = secret_key(d["secret"])
        body = bytes(d["payload"])
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self._options.timeout_s):
                status = await self._http.post(d["url"], body, headers(
                    key, MESSAGE_ID_PREFIX + d["receipt_code"], int(time.time()), body))
            if 200 <= status < 300:
                DELIVERIES.labels("succeeded").inc()
                self.sent += 1
                return d["id"], True, None, status, None
            error = f"HTTP {status}"
        except ATTEMPT_ERRORS as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX]
        wait_s = retry_in(self._options.policy, d["attempts"], d["window_left_s"])
        DELIVERIES.labels("retried" if wait_s is not None else "failed").inc()
        if wait_s is None:
            log.warning("webhook delivery %d to %s dead-lettered after %d attempts: %s",
                        d["id"], d["url"], d["attempts"], error)
        elif self._warning.ready():  # a receiver down: one line per interval
            log.info("webhook delivery %d to %s failed (%s); retrying", d["id"], d["url"], error)
        return d["id"], False, wait_s, status, error

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
