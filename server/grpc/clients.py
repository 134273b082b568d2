"""Clients of the receipt and notification services: the core ports, batched over gRPC.

Each client owns one channel, one circuit breaker and core.batcher.Batcher instances
with one call in flight, so items arriving during a call form the next batch. gRPC
errors become core.errors.Unavailable here, once; an open breaker refuses at once,
before anything is queued, instead of letting callers wait for a timeout.

The CLI/lifespan builds them with the service address (`host:port` or `unix:/path`),
calls `start()` inside the running loop and `await close()` on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, TypeVar

import grpc

from core.batcher import Batcher
from core.breaker import OPEN, CircuitBreaker
from core.errors import InvalidRequest, Overloaded, Unavailable
from core.ports import Notification, ReceiptRequest, ReceiptStatus
from server.grpc import metrics
from server.grpc.gen.kassa.v1 import notifications_pb2 as npb
from server.grpc.gen.kassa.v1 import notifications_pb2_grpc as npb_grpc
from server.grpc.gen.kassa.v1 import receipts_pb2 as rpb
from server.grpc.gen.kassa.v1 import receipts_pb2_grpc as rpb_grpc

log = logging.getLogger("kassa.grpc.clients")

T = TypeVar("T")

# Reconnect quickly: gRPC's default backoff grows to 120 s, far longer than the
# breaker's cool-down, and a restarted service would stay unused meanwhile.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# Extra time the batcher allows a sink beyond the gRPC deadline, as a backstop only.
_BACKSTOP_MS = 1000


async def guarded(breaker: CircuitBreaker, call: Callable[[], Awaitable[T]]) -> T:
    """Run one gRPC call behind the breaker; any failure is Unavailable and counts."""
    if not breaker.allow():
        raise Unavailable(f"{breaker.name} circuit open", retry_after_s=breaker.retry_after_s())
    try:
        result = await call()
    except grpc.aio.AioRpcError as exc:
        breaker.record_failure()
        raise Unavailable(
            f"{breaker.name}: {exc.code().name} {exc.details()}", retry_after_s=1
        ) from exc
    except BaseException:
        # Cancelled (timeout backstop, shutdown) or a bug: still give the trial slot back.
        breaker.record_failure()
        raise
    breaker.record_success()
    return result


def _open_error(breaker: CircuitBreaker) -> Unavailable:
    return Unavailable(f"{breaker.name} circuit open", retry_after_s=breaker.retry_after_s())


def _consume(future: asyncio.Future[None]) -> None:
    """Done callback for futures nobody awaits: read the failure so asyncio does not warn."""
    if not future.cancelled():
        future.exception()


def breaker_states(*clients: ReceiptClient | NotificationClient) -> dict[str, str]:
    """Breaker name → state, for /readyz."""
    return {c.breaker.name: c.breaker.state for c in clients}


def _new_breaker(name: str, failures_max: int, reset_ms: float) -> CircuitBreaker:
    breaker = CircuitBreaker(
        name, failures_max=failures_max, reset_ms=reset_ms,
        on_change=_on_breaker_change,
    )
    metrics.BREAKER_STATE.labels(name=name).set(0)
    return breaker


def _on_breaker_change(name: str, old: str, new: str) -> None:
    log.warning("circuit breaker %s: %s -> %s", name, old, new)
    metrics.record_breaker_state(name, old, new)


class _Create(NamedTuple):
    request: ReceiptRequest
    deadline: float  # monotonic; past it the caller has given up


class ReceiptClient:
    """core.ports.ReceiptSource over gRPC."""

    def __init__(
        self,
        address: str,
        *,
        batch_size_max: int = 50,
        flush_interval_ms: float = 50,
        timeout_ms: float = 2000,
        update_batch_size_max: int = 500,
        pending_max: int = 10_000,
        breaker_failures_max: int = 3,
        breaker_reset_ms: float = 1000,
    ) -> None:
        self.address = address
        self._timeout_s = timeout_ms / 1000
        self.breaker = _new_breaker("receipt_service", breaker_failures_max, breaker_reset_ms)
        self._channel: grpc.aio.Channel | None = None
        self._stub: rpb_grpc.ReceiptServiceStub | None = None
        self._creates: Batcher[_Create, str] = Batcher(
            "receipts", self._create_batch, batch_size_max=batch_size_max,
            flush_interval_ms=flush_interval_ms, pending_max=pending_max,
            timeout_ms=timeout_ms + _BACKSTOP_MS, on_flush=_observer("create"),
        )
        self._updates: Batcher[rpb.StatusUpdate, None] = Batcher(
            "receipt-updates", self._update_batch, batch_size_max=update_batch_size_max,
            flush_interval_ms=flush_interval_ms, pending_max=max(pending_max, update_batch_size_max),
            timeout_ms=timeout_ms + _BACKSTOP_MS, on_flush=_observer("update"),
        )

    def start(self) -> None:
        """Open the channel and start the batchers; call inside the running loop."""
        self._channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self._stub = rpb_grpc.ReceiptServiceStub(self._channel)
        self._creates.start()
        self._updates.start()

    async def close(self) -> None:
        """Flush what is pending, then close the channel."""
        await self._creates.close()
        await self._updates.close()
        if self._channel is not None:
            await self._channel.close()

    async def new_receipt(self, request: ReceiptRequest) -> str:
        if self.breaker.state == OPEN:
            raise _open_error(self.breaker)
        deadline = time.monotonic() + self._timeout_s
        future = self._creates.submit(_Create(request, deadline))
        try:
            # A little slack so the call's own deadline error, which the breaker
            # counts, normally arrives first.
            return await asyncio.wait_for(future, self._timeout_s + 0.05)
        except TimeoutError:
            raise Unavailable("receipt service timed out", retry_after_s=1) from None

    def status_changed(self, code: str, status: str, error_code: str | None) -> None:
        update = rpb.StatusUpdate(code=code, status=status, error_code=error_code or "")
        try:
            future = self._updates.submit(update)
        except (Overloaded, RuntimeError) as exc:  # full, closing, or no running loop
            metrics.RECEIPT_UPDATES_DROPPED.inc()
            log.warning("[RECEIPT BATCHER] dropped status update of %s: %s", code, exc)
            return
        future.add_done_callback(_consume)

    async def get_receipt(self, code: str) -> ReceiptStatus | None:
        request = rpb.GetReceiptRequest(code=code)
        try:
            found = await guarded(
                self.breaker, lambda: self._live_stub().GetReceipt(request, timeout=self._timeout_s)
            )
        except Unavailable as exc:
            log.warning("receipt lookup of %s failed: %s", code, exc.message)
            return None
        if not found.found:
            return None
        return ReceiptStatus(found.code, found.status, found.error_code or None, found.updated_at)

    def _live_stub(self) -> rpb_grpc.ReceiptServiceStub:
        assert self._stub is not None, "ReceiptClient.start() was not called"
        return self._stub

    async def _create_batch(self, items: list[_Create]) -> Sequence[str | BaseException]:
        now = time.monotonic()
        live = [i for i, item in enumerate(items) if item.deadline > now]
        results: list[str | BaseException] = [_gave_up() for _ in items]
        if not live:
            return results
        request = rpb.CreateReceiptsRequest(items=[_new_receipt(items[i].request) for i in live])
        # The call's deadline is the earliest caller's: nobody waits past their own.
        timeout_s = max(0.001, min(items[i].deadline for i in live) - now)
        response = await guarded(
            self.breaker, lambda: self._live_stub().CreateReceipts(request, timeout=timeout_s)
        )
        assert len(response.results) == len(live), "receipt service broke the batch contract"
        for i, result in zip(live, response.results, strict=True):
            if result.WhichOneof("result") == "code":
                results[i] = result.code
            else:
                results[i] = InvalidRequest(result.error.message)
        log.info("[RECEIPT BATCHER] Created %d receipts", len(live))
        return results

    async def _update_batch(self, items: list[rpb.StatusUpdate]) -> Sequence[None]:
        request = rpb.UpdateReceiptStatusesRequest(items=items)
        try:
            response = await guarded(
                self.breaker,
                lambda: self._live_stub().UpdateReceiptStatuses(request, timeout=self._timeout_s),
            )
        except Unavailable as exc:
            metrics.RECEIPT_UPDATES_DROPPED.inc(len(items))
            log.warning("[RECEIPT BATCHER] dropped %d status updates: %s", len(items), exc.message)
            return [None] * len(items)
        refused = [r.error.code for r in response.results if not r.ok]
        if refused:
            metrics.RECEIPT_UPDATES_DROPPED.inc(len(refused))
            log.warning("[RECEIPT BATCHER] %d status updates refused: %s", len(refused), refused[:5])
        log.info("[RECEIPT BATCHER] Updated %d receipts", len(items) - len(refused))
        return [None] * len(items)


def _gave_up() -> Unavailable:
    return Unavailable("receipt service too slow: the caller gave up", retry_after_s=1)


def _new_receipt(request: ReceiptRequest) -> rpb.NewReceipt:
    return rpb.NewReceipt(
        type=request.type, currency=request.currency, amount=request.amount,
        account_ids=request.accounts,
    )


def _observer(op: str) -> Callable[[int, float], None]:
    size, latency = metrics.RECEIPT_BATCH_SIZE.labels(op=op), metrics.RECEIPT_BATCH_LATENCY.labels(op=op)

    def observe(count: int, seconds: float) -> None:
        size.observe(count)
        latency.observe(seconds)

    return observe


class NotificationClient:
    """core.ports.Notifier over gRPC: best effort, failures are logged and counted only."""

    def __init__(
        self,
        address: str,
        *,
        batch_size_max: int = 100,
        flush_interval_ms: float = 50,
        timeout_ms: float = 10_000,
        pending_max: int = 10_000,
        breaker_failures_max: int = 3,
        breaker_reset_ms: float = 1000,
    ) -> None:
        self.address = address
        self._timeout_s = timeout_ms / 1000
        self.breaker = _new_breaker("notification_service", breaker_failures_max, breaker_reset_ms)
        self._channel: grpc.aio.Channel | None = None
        self._stub: npb_grpc.NotificationServiceStub | None = None
        self._batcher: Batcher[Notification, None] = Batcher(
            "notifications", self._send_batch, batch_size_max=batch_size_max,
            flush_interval_ms=flush_interval_ms, pending_max=pending_max,
            timeout_ms=timeout_ms + _BACKSTOP_MS,
            on_flush=lambda count, _: metrics.NOTIFICATION_BATCH_SIZE.observe(count),
        )

    def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self._stub = npb_grpc.NotificationServiceStub(self._channel)
        self._batcher.start()

    async def close(self) -> None:
        await self._batcher.close()
        if self._channel is not None:
            await self._channel.close()

    def notify(self, notification: Notification) -> None:
        if self.breaker.state == OPEN:
            metrics.NOTIFICATIONS_FAILED.inc()
            log.debug("[NOTIFICATION BATCHER] circuit open, dropped %s", notification.receipt_code)
            return
        try:
            future = self._batcher.submit(notification)
        except (Overloaded, RuntimeError) as exc:
            metrics.NOTIFICATIONS_FAILED.inc()
            log.warning("[NOTIFICATION BATCHER] dropped %s: %s", notification.receipt_code, exc)
            return
        future.add_done_callback(_consume)

    async def _send_batch(self, items: list[Notification]) -> Sequence[None]:
        assert self._stub is not None, "NotificationClient.start() was not called"
        stub = self._stub
        request = npb.SendNotificationsRequest(items=[_item(n) for n in items])
        try:
            response = await guarded(
                self.breaker, lambda: stub.SendNotifications(request, timeout=self._timeout_s)
            )
        except Unavailable as exc:
            metrics.NOTIFICATIONS_FAILED.inc(len(items))
            log.warning("[NOTIFICATION BATCHER] %d notifications not sent: %s", len(items), exc.message)
            return [None] * len(items)
        failed = sum(1 for r in response.results if not r.delivered)
        if failed:
            metrics.NOTIFICATIONS_FAILED.inc(failed)
            log.warning("[NOTIFICATION BATCHER] %d notifications failed", failed)
        log.info("[NOTIFICATION BATCHER] Sent %d notifications", len(items) - failed)
        return [None] * len(items)


def _item(n: Notification) -> npb.NotificationItem:
    return npb.NotificationItem(
        receipt_code=n.receipt_code, channel=n.channel, recipient=n.recipient,
        subject=n.subject, body=n.body,
    )
