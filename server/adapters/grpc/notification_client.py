"""The notification service's client: core.pipeline.ports.Notifier over gRPC, best effort.

It batches with core.kit.batcher.Batcher, one call in flight, so items arriving during a
call form the next batch. Defaults are the KASSA_NOTIFICATION_* / KASSA_BREAKER_* settings'
defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from core.kit.batcher import Batcher
from core.kit.breaker import OPEN
from core.ledger.errors import Overloaded, Unavailable
from core.pipeline.ports import Notification
from server.adapters.grpc import metrics
from server.adapters.grpc.calls import CHANNEL_OPTIONS, consume, guarded, new_breaker
from server.adapters.grpc.gen.kassa.v1 import notifications_pb2 as npb
from server.adapters.grpc.gen.kassa.v1 import notifications_pb2_grpc as npb_grpc
from server.adapters.grpc.security import GrpcSecurity
from server.process.settings import Settings
from server.tracing import spans

log = logging.getLogger("kassa.grpc.clients")
_DEFAULTS = Settings()

# Per SendNotifications call: no setting of its own (delivery retries inside the service
# take up to KASSA_NOTIFY_ATTEMPTS_MAX x KASSA_NOTIFY_TIMEOUT_MS).
CALL_TIMEOUT_MS = 10_000.0
# Extra time the batcher allows a sink beyond the gRPC deadline, as a backstop only.
_BACKSTOP_MS = 1000


class NotificationClient:
    """core.pipeline.ports.Notifier over gRPC: best effort, failures are logged and counted only."""

    def __init__(
        self,
        address: str,
        *,
        batch_size_max: int = _DEFAULTS.notification_batch_size,
        flush_interval_ms: float = _DEFAULTS.notification_flush_interval_ms,
        timeout_ms: float = CALL_TIMEOUT_MS,
        pending_max: int = _DEFAULTS.processor_queue_size,  # what runtime.py passes by default
        breaker_failures_max: int = _DEFAULTS.breaker_failures_max,
        breaker_reset_ms: float = _DEFAULTS.breaker_reset_s * 1000,
        security: GrpcSecurity | None = None,
    ) -> None:
        self.address = address
        self._security = security or GrpcSecurity()
        self._timeout_s = timeout_ms / 1000
        self.breaker = new_breaker("notification_service", breaker_failures_max, breaker_reset_ms)
        self._channel: grpc.aio.Channel | None = None
        self._stub: npb_grpc.NotificationServiceStub | None = None
        self._batcher: Batcher[Notification, None] = Batcher(
            "notifications", spans.traced_sink("kassa.notifications.send", self._send_batch),
            batch_size_max=batch_size_max,
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
        future.add_done_callback(consume)

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
