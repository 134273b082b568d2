"""The receipt service's client: core.pipeline.ports.ReceiptSource over gRPC.

It hands out codes from blocks it reserved (server/adapters/grpc/receipt_stock.py) and
registers receipts after their outcome, in large batches: neither puts a gRPC round trip on
the request path. Defaults are the KASSA_RECEIPT_* / KASSA_BREAKER_* settings' defaults.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import grpc

from core.kit.code_cipher import CodeCipher
from core.ledger.errors import Unavailable
from core.pipeline.ports import ReceiptRecord, ReceiptStatus
from server.adapters.grpc import metrics
from server.adapters.grpc.calls import CHANNEL_OPTIONS, CallRefused, guarded, new_breaker
from server.adapters.grpc.gen.kassa.v1 import receipts_pb2 as rpb
from server.adapters.grpc.gen.kassa.v1 import receipts_pb2_grpc as rpb_grpc
from server.adapters.grpc.receipt_registrations import RegistrationQueue
from server.adapters.grpc.receipt_stock import CodeStock
from server.adapters.grpc.security import GrpcSecurity
from server.process.settings import Settings

log = logging.getLogger("kassa.grpc.clients")
_DEFAULTS = Settings()


class ReceiptClient:
    """core.pipeline.ports.ReceiptSource over gRPC: codes from reserved blocks, receipts registered
    after their outcome in batches."""

    def __init__(
        self,
        address: str,
        *,
        cipher: CodeCipher,
        block_size: int = _DEFAULTS.receipt_block_size,
        batch_size_max: int = _DEFAULTS.receipt_batch_size,
        flush_interval_ms: float = _DEFAULTS.receipt_flush_interval_ms,
        timeout_ms: float = _DEFAULTS.receipt_timeout_ms,
        pending_max: int = _DEFAULTS.receipt_pending_max,
        retry_max_ms: float = _DEFAULTS.receipt_retry_max_ms,
        breaker_failures_max: int = _DEFAULTS.breaker_failures_max,
        breaker_reset_ms: float = _DEFAULTS.breaker_reset_s * 1000,
        security: GrpcSecurity | None = None,
    ) -> None:
        self.address = address
        self._security = security or GrpcSecurity()
        self._timeout_s = timeout_ms / 1000
        # Separate breakers for the write path (reservations, registrations) and the read path
        # (status lookups): failing lookups never stop accepting, and the other way round.
        self.breaker = new_breaker("receipt_service", breaker_failures_max, breaker_reset_ms)
        self.read_breaker = new_breaker("receipt_service_reads", breaker_failures_max,
                                         breaker_reset_ms)
        self._channel: grpc.aio.Channel | None = None
        self._stub: rpb_grpc.ReceiptServiceStub | None = None
        self.codes = CodeStock(self._reserve, cipher=cipher, block_size=block_size,
                               timeout_ms=timeout_ms, retry_max_ms=retry_max_ms)
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


class ReceiptRegistrar:
    """Registers receipts with the receipt service, one RegisterReceipts call per batch:
    the relay's receipts sink (server/adapters/kafka/relay.py), which reads finished
    journals past its cursor and moves the cursor once a call succeeded. Its own breaker
    (`receipt_registrations`): a failing registration never closes the write path's."""

    def __init__(self, address: str, *, timeout_ms: float = _DEFAULTS.receipt_timeout_ms,
                 breaker_failures_max: int = _DEFAULTS.breaker_failures_max,
                 breaker_reset_ms: float = _DEFAULTS.breaker_reset_s * 1000,
                 security: GrpcSecurity | None = None) -> None:
        self.address = address
        self._security = security or GrpcSecurity()
        self._timeout_s = timeout_ms / 1000
        self.breaker = new_breaker("receipt_registrations", breaker_failures_max,
                                   breaker_reset_ms)
        self._channel: grpc.aio.Channel | None = None
        self._stub: rpb_grpc.ReceiptServiceStub | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ReceiptRegistrar | None:
        """The registrar of KASSA_RECEIPT_SERVICE_ADDR; None without a receipt service
        (plain gunicorn keeps no receipt records)."""
        if not settings.receipt_service_addr:
            return None
        return cls(settings.receipt_service_addr, timeout_ms=settings.receipt_timeout_ms,
                   breaker_failures_max=settings.breaker_failures_max,
                   breaker_reset_ms=settings.breaker_reset_s * 1000,
                   security=GrpcSecurity.from_settings(settings))

    async def register(self, records: list[ReceiptRecord]) -> None:
        """One RegisterReceipts call. Raises Unavailable while the service is down (the
        caller retries the batch: registering a receipt twice changes nothing); what the
        service refuses is logged and given up, as retrying would not cure it."""
        if self._stub is None:
            self._channel = self._security.channel(self.address, CHANNEL_OPTIONS)
            self._stub = rpb_grpc.ReceiptServiceStub(self._channel)
        stub = self._stub
        request = rpb.RegisterReceiptsRequest(items=[_record(r) for r in records])
        try:
            with _observed("register", len(records)):
                response = await guarded(
                    self.breaker, lambda: stub.RegisterReceipts(request, timeout=self._timeout_s))
        except CallRefused as exc:
            metrics.RECEIPT_REGISTRATIONS_DROPPED.inc(len(records))
            log.error("[RECEIPT BATCHER] dropped %d receipt registrations: %s", len(records),
                      exc.message)
            return
        if response.refused:
            first = response.refused[0]
            metrics.RECEIPT_REGISTRATIONS_DROPPED.inc(len(response.refused))
            log.error("[RECEIPT BATCHER] dropped %d receipt registrations: refused, e.g. %s: %s",
                      len(response.refused), records[first.index].code, first.error.message)
        log.info("[RECEIPT BATCHER] Registered %d receipts", len(records) - len(response.refused))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None


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
