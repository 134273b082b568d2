"""Clients of the receipt and notification services: the core ports, over gRPC.

Each client owns one channel and one circuit breaker. gRPC errors become
core.ledger.errors.Unavailable here, once; the breaker counts only the dependency's failures
(UNAVAILABLE, DEADLINE_EXCEEDED), and an open breaker refuses at once instead of letting
callers wait for a timeout.

The receipt client hands out codes from blocks it reserved (server/adapters/grpc/receipt_stock.py)
and registers receipts after their outcome, in large batches: neither puts a gRPC round
trip on the request path. The notification client batches with core.kit.batcher.Batcher, one
call in flight, so items arriving during a call form the next batch.

The CLI/lifespan builds them with the service address (`host:port` or `unix:/path`),
calls `start()` inside the running loop and `await close()` on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

import grpc

from core.kit.batcher import Batcher
from core.kit.breaker import OPEN, CircuitBreaker
from core.ledger.errors import Overloaded, Unavailable
from core.pipeline.ports import Notification, ReceiptRecord, ReceiptStatus
from server.adapters.grpc import metrics
from server.adapters.grpc.gen.kassa.v1 import notifications_pb2 as npb
from server.adapters.grpc.gen.kassa.v1 import notifications_pb2_grpc as npb_grpc
from server.adapters.grpc.gen.kassa.v1 import receipts_pb2 as rpb
from server.adapters.grpc.gen.kassa.v1 import receipts_pb2_grpc as rpb_grpc
from server.adapters.grpc.receipt_registrations import RegistrationQueue
from server.adapters.grpc.receipt_stock import CodeStock
from server.adapters.grpc.security import GrpcSecurity

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
# What says the service is down or too slow. Any other error is an answer from a live
# service (a refusal: a bug on one side), which the breaker must not count.
DEPENDENCY_FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class CallRefused(Unavailable):
    """The service answered with an error other than an outage: not counted by the
    breaker, and not worth retrying."""


async def guarded(breaker: CircuitBreaker, call: Callable[[], Awaitable[T]]) -> T:
    """Run one gRPC call behind the breaker; its errors become Unavailable (or CallRefused).

    Messages name the breaker and the status only: they may reach an HTTP client, and
    gRPC's details can carry host and port text (they are logged at debug level).
    """
    if not breaker.allow():
        raise _open_error(breaker)
    try:
        result = await call()
    except grpc.aio.AioRpcError as exc:
        log.debug("%s call failed: %s %s", breaker.name, exc.code().name, exc.details())
        if exc.code() in DEPENDENCY_FAILURES:
            breaker.record_failure()
            raise Unavailable(f"{breaker.name}: {exc.code().name}", retry_after_s=1) from exc
        breaker.record_success()
        raise CallRefused(f"{breaker.name} refused the call: {exc.code().name}",
                          retry_after_s=1) from exc
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
    states = {c.breaker.name: c.breaker.state for c in clients}
    states.update({c.read_breaker.name: c.read_breaker.state for c in clients
                   if isinstance(c, ReceiptClient)})
    return states


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


class ReceiptClient:
    """core.pipeline.ports.ReceiptSource over gRPC: codes from reserved blocks, receipts registered
    after their outcome in batches."""

    def __init__(
        self,
        address: str,
        *,
        block_size: int = 8192,
        batch_size_max: int = 2000,
        flush_interval_ms: float = 50,
        timeout_ms: float = 2000,
        pending_max: int = 100_000,
        retry_max_ms: float = 2000,
        breaker_failures_max: int = 3,
        breaker_reset_ms: float = 1000,
        security: GrpcSecurity | None = None,
    ) -> None:
        self.address = address
        self._security = security or GrpcSecurity()
        self._timeout_s = timeout_ms / 1000
        # Separate breakers for the write path (reservations, registrations) and the read path
        # (status lookups): failing lookups never stop accepting, and the other way round.
        self.breaker = _new_breaker("receipt_service", breaker_failures_max, breaker_reset_ms)
        self.read_breaker = _new_breaker("receipt_service_reads", breaker_failures_max,
                                         breaker_reset_ms)
        self._channel: grpc.aio.Channel | None = None
        self._stub: rpb_grpc.ReceiptServiceStub | None = None
        self.codes = CodeStock(self._reserve, block_size=block_size, timeout_ms=timeout_ms,
                               retry_max_ms=retry_max_ms)
        self.registrations = RegistrationQueue(
            self._register_batch, batch_size_max=batch_size_max,
            flush_interval_ms=flush_interval_ms, pending_max=pending_max,
            retry_max_ms=retry_max_ms)

    def start(self) -> None:
        """Open the channel, reserve the first block, start registering; inside the loop."""
        self._channel = self._security.channel(self.address, CHANNEL_OPTIONS)
        self._stub = rpb_grpc.ReceiptServiceStub(self._channel)
        self.codes.start()
        self.registrations.start()

    async def close(self) -> None:
        """Stop reserving, register what is pending (within the timeout), close the channel."""
        await self.codes.close()
        await self.registrations.close(self._timeout_s)
        if self._channel is not None:
            await self._channel.close()

    async def next_codes(self, count: int) -> list[str]:
        return await self.codes.take(count)

    def register(self, receipts: list[ReceiptRecord]) -> None:
        self.registrations.add(receipts)

    async def get_receipt(self, code: str) -> ReceiptStatus | None:
        request = rpb.GetReceiptRequest(code=code)
        try:
            found = await guarded(
                self.read_breaker,
                lambda: self._live_stub().GetReceipt(request, timeout=self._timeout_s))
        except Unavailable as exc:
            log.warning("receipt lookup of %s failed: %s", code, exc.message)
            return None
        if not found.found:
            return None
        return ReceiptStatus(found.code, found.status, found.error_code or None, found.updated_at)

    def _live_stub(self) -> rpb_grpc.ReceiptServiceStub:
        assert self._stub is not None, "ReceiptClient.start() was not called"
        return self._stub

    async def _reserve(self, count: int) -> tuple[int, int]:
        request = rpb.ReserveCodesRequest(count=count)
        with _observed("reserve", 1):
            response = await guarded(
                self.breaker, lambda: self._live_stub().ReserveCodes(request, timeout=self._timeout_s)
            )
        log.info("[RECEIPT BLOCKS] Reserved block %d (%d codes)", response.block, response.count)
        return response.block, response.count

    async def _register_batch(self, records: list[ReceiptRecord]) -> None:
        """One RegisterReceipts call; raises Unavailable (to be retried) on an outage only."""
        request = rpb.RegisterReceiptsRequest(items=[_record(r) for r in records])
        try:
            with _observed("register", len(records)):
                response = await guarded(
                    self.breaker,
                    lambda: self._live_stub().RegisterReceipts(request, timeout=self._timeout_s),
                )
        except CallRefused as exc:  # a bug on one side: retrying would not help
            self.registrations.dropped(len(records), exc.message)
            return
        if response.refused:
            first = response.refused[0]
            self.registrations.dropped(len(response.refused), f"refused, e.g. "
                                       f"{records[first.index].code}: {first.error.message}")
        log.info("[RECEIPT BATCHER] Registered %d receipts", len(records) - len(response.refused))


def _record(r: ReceiptRecord) -> rpb.ReceiptRecord:
    return rpb.ReceiptRecord(
        code=r.code, type=r.type, currency=r.currency, amount=r.amount,
        account_ids=r.account_ids, status=r.status, error_code=r.error_code or "",
    )


@contextlib.contextmanager
def _observed(op: str, count: int) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        metrics.RECEIPT_BATCH_SIZE.labels(op=op).observe(count)
        metrics.RECEIPT_BATCH_LATENCY.labels(op=op).observe(time.monotonic() - started)


class NotificationClient:
    """core.pipeline.ports.Notifier over gRPC: best effort, failures are logged and counted only."""

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
        security: GrpcSecurity | None = None,
    ) -> None:
        self.address = address
        self._security = security or GrpcSecurity()
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
        self._channel = self._security.channel(self.address, CHANNEL_OPTIONS)
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
