"""Receipts waiting for registration with the receipt service (docs/design.md, the flow of a transaction).

Registration is best effort from a request's point of view: it happens after the
outcome, never blocks or fails a request, and survives a receipt service outage by
retrying, within a bounded amount of memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from core.ledger.errors import Unavailable
from core.pipeline.ports import ReceiptRecord
from server.adapters.grpc import metrics
from server.adapters.grpc.receipt_stock import RETRY_MIN_S

log = logging.getLogger("kassa.grpc.clients")


class RegistrationQueue:
    """Receipts waiting to be registered: bounded, batched, one call in flight, retried.

    `add` never blocks or raises: past `pending_max` waiting receipts it drops the new
    ones (counted, logged at most once a second). A batch is sent when it holds
    `batch_size_max` receipts or its oldest has waited `flush_interval_ms`; receipts that
    arrive meanwhile form the next batch. A batch stays at the head of the queue until
    `send` returns: while it raises Unavailable (the service is down) the batch is retried
    with backoff, as registering a receipt twice is harmless. What `send` has to give up
    on (a refusal, which retrying would not cure) it reports through `dropped`.
    """

    def __init__(self, send: Callable[[list[ReceiptRecord]], Awaitable[None]], *,
                 batch_size_max: int, flush_interval_ms: float, pending_max: int,
                 retry_max_ms: float) -> None:
        assert 1 <= batch_size_max <= pending_max
        self._send = send
        self._size = batch_size_max
        self._interval_s = flush_interval_ms / 1000
        self._pending_max = pending_max
        self._retry_max_s = max(RETRY_MIN_S, retry_max_ms / 1000)
        self._pending: deque[ReceiptRecord] = deque()
        self._first_at = 0.0  # monotonic time the oldest waiting receipt arrived
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._drops = _DropLog()
        self.batches_sent = 0

    def __len__(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="receipt-registrations")

    def dropped(self, count: int, reason: str) -> None:
        """Receipts that will never be registered (refused by the service)."""
        self._drops.add(count, reason, force_log=True)

    def add(self, records: list[ReceiptRecord]) -> None:
        room = self._pending_max - len(self._pending)
        if len(records) > room:
            self._drops.add(len(records) - room, "the registration queue is full")
            records = records[:room]
        if not records:
            return
        if not self._pending:
            self._first_at = time.monotonic()
        self._pending.extend(records)
        self._wakeup.set()

    async def close(self, timeout_s: float) -> None:
        """Register what is waiting, for at most `timeout_s`; drop (and count) the rest."""
        self._closing = True
        self._wakeup.set()
        self.start()
        assert self._task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending:
            self._drops.add(len(self._pending), "shutting down", force_log=True)
            self._pending.clear()

    async def _run(self) -> None:
        backoff_s = RETRY_MIN_S
        while self._pending or not self._closing:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._wait_until_due()
            batch = list(itertools.islice(self._pending, self._size))
            started = time.monotonic()
            try:
                await self._send(batch)
            except Unavailable as exc:
                self._drops.retrying(len(self._pending), exc.message)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._retry_max_s)
                continue
            except Exception:  # noqa: BLE001 - a bug: say so, give the batch up, go on
                log.exception("[RECEIPT BATCHER] registration failed")
                self.dropped(len(batch), "unexpected error")
            backoff_s = RETRY_MIN_S
            self.batches_sent += 1
            for _ in batch:
                self._pending.popleft()
            self._first_at = started  # what is left arrived during the call

    async def _wait_until_due(self) -> None:
        while len(self._pending) < self._size and not self._closing:
            remaining = self._first_at + self._interval_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)


class _DropLog:
    """Counts dropped registrations and says so in the log at most once a second."""

    def __init__(self) -> None:
        self._unlogged = 0
        self._logged_at = 0.0
        self._retry_logged_at = 0.0

    def add(self, count: int, reason: str, *, force_log: bool = False) -> None:
        metrics.RECEIPT_REGISTRATIONS_DROPPED.inc(count)
        self._unlogged += count
        now = time.monotonic()
        if force_log or now - self._logged_at >= 1.0:
            log.warning("[RECEIPT BATCHER] dropped %d receipt registrations: %s",
                        self._unlogged, reason)
            self._unlogged, self._logged_at = 0, now

    def retrying(self, waiting: int, reason: str) -> None:
        now = time.monotonic()
        if now - self._retry_logged_at >= 1.0:
            log.warning("[RECEIPT BATCHER] %d receipts wait for registration: %s", waiting, reason)
            self._retry_logged_at = now
