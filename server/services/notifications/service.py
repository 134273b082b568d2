"""The notification service: delivers batches of notifications, one result per item.

Items of a batch are delivered concurrently (bounded), each with its own retries;
those that still fail are written to `notification_dead_letters` in one insert, so
an operator can replay them.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import grpc
import msgspec

from server.adapters.grpc.gen.kassa.v1 import notifications_pb2 as pb
from server.adapters.grpc.gen.kassa.v1 import notifications_pb2_grpc as pb_grpc
from server.adapters.grpc.security import GrpcSecurity
from server.adapters.postgres.pool import keep_session
from server.process.settings import load_settings
from server.services.grpc_server import listen_address, run_until_signal, serve_until_cancelled
from server.services.notifications.delivery import (
    CHANNELS,
    Deliverer,
    DeliveryFailed,
    NotificationConfig,
    WebhookPayload,
)

log = logging.getLogger("kassa.notifications")

SERVICE_NAME = "kassa.v1.NotificationService"
BATCH_SIZE_MAX = 1000
CONCURRENT_DELIVERIES_MAX = 32
POOL_SIZE_MAX = 4

INSERT_DEAD_LETTERS = """
INSERT INTO notification_dead_letters (receipt_code, channel, recipient, payload, attempts, last_error)
SELECT receipt_code, channel, recipient, payload::jsonb, attempts, last_error FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[])
    AS u(receipt_code, channel, recipient, payload, attempts, last_error)
"""

_encode = msgspec.json.Encoder().encode


class NotificationServicer(pb_grpc.NotificationServiceServicer):
    def __init__(self, pool: asyncpg.Pool, deliverer: Deliverer) -> None:
        self._pool = pool
        self._deliverer = deliverer
        self._slots = asyncio.Semaphore(CONCURRENT_DELIVERIES_MAX)

    async def SendNotifications(  # noqa: N802 - name fixed by the proto
        self, request: pb.SendNotificationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SendNotificationsResponse:
        if len(request.items) > BATCH_SIZE_MAX:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"more than {BATCH_SIZE_MAX} items")
        payloads = [_payload(item) for item in request.items]
        outcomes = await asyncio.gather(*(self._deliver_one(p) for p in payloads))
        dead = [(p, o) for p, o in zip(payloads, outcomes, strict=True) if isinstance(o, DeliveryFailed)]
        stored = await self._dead_letter(dead)
        return pb.SendNotificationsResponse(results=[_result(o, stored) for o in outcomes])

    async def _deliver_one(self, payload: WebhookPayload) -> int | DeliveryFailed:
        if payload.channel not in CHANNELS:
            return DeliveryFailed(0, f"unknown channel {payload.channel!r}")
        async with self._slots:
            try:
                return await self._deliverer.deliver(payload)
            except DeliveryFailed as exc:
                return exc

    async def _dead_letter(self, dead: list[tuple[WebhookPayload, DeliveryFailed]]) -> bool:
        # Unknown channels are refused, not dead-lettered: a replay could not deliver them.
        dead = [(p, f) for p, f in dead if f.attempts > 0]
        if not dead:
            return True
        try:
            await self._pool.execute(
                INSERT_DEAD_LETTERS,
                [p.receipt_code for p, _ in dead], [p.channel for p, _ in dead],
                [p.recipient for p, _ in dead], [_encode(p).decode() for p, _ in dead],
                [f.attempts for _, f in dead], [f.last_error for _, f in dead],
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.error("could not dead-letter %d notifications: %r", len(dead), exc)
            return False
        log.warning("dead-lettered %d notifications", len(dead))
        return True


def _payload(item: pb.NotificationItem) -> WebhookPayload:
    return WebhookPayload(item.receipt_code, item.channel, item.recipient, item.subject, item.body)


def _result(outcome: int | DeliveryFailed, stored: bool) -> pb.NotificationResult:
    if isinstance(outcome, DeliveryFailed):
        return pb.NotificationResult(
            delivered=False, attempts=outcome.attempts, error=outcome.last_error,
            dead_lettered=stored and outcome.attempts > 0,
        )
    return pb.NotificationResult(delivered=True, attempts=outcome)


async def serve(
    port: int, database_url: str, config: NotificationConfig, *, host: str = "127.0.0.1",
    security: GrpcSecurity | None = None,
) -> None:
    """Serve until cancelled; `host` may be a `unix:/path` address (then `port` is unused)."""
    deliverer = Deliverer(config)
    try:
        async with asyncpg.create_pool(database_url, min_size=1, max_size=POOL_SIZE_MAX,
                                    reset=keep_session) as pool:
            servicer = NotificationServicer(pool, deliverer)
            await serve_until_cancelled(
                lambda s: pb_grpc.add_NotificationServiceServicer_to_server(servicer, s),
                SERVICE_NAME, listen_address(host, port), security,
            )
    finally:
        await deliverer.aclose()


def run_notification_service(
    port: int, database_url: str, config: NotificationConfig | None = None,
    host: str = "127.0.0.1", security: GrpcSecurity | None = None,
) -> None:
    """Blocking entry point for the CLI: serve until SIGTERM/SIGINT; config from the env."""
    resolved = config if config is not None else NotificationConfig.from_settings(load_settings())
    run_until_signal(lambda: serve(port, database_url, resolved, host=host, security=security))
