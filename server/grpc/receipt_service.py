"""The receipt service: gRPC batch RPCs over the `receipts` table.

Run it with `run_receipt_service(port, database_url, node_id)` (blocks until SIGTERM) or
`await serve(...)` inside a loop. Codes carry the node id and this process's pid, so
several services (hosts, processes) never hand out the same code.
"""

from __future__ import annotations

import logging
import os
import time

import asyncpg
import grpc

from server.grpc import receipt_store as store
from server.grpc.gen.kassa.v1 import receipts_pb2 as pb
from server.grpc.gen.kassa.v1 import receipts_pb2_grpc as pb_grpc
from server.grpc.runtime import listen_address, run_until_signal, serve_until_cancelled

log = logging.getLogger("kassa.receipts")

SERVICE_NAME = "kassa.v1.ReceiptService"
POOL_SIZE_MAX = 10
BATCH_SIZE_MAX = 10_000  # items per call; a larger request is refused whole
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


class ReceiptServicer(pb_grpc.ReceiptServiceServicer):
    def __init__(self, pool: asyncpg.Pool, node_id: int) -> None:
        self._pool = pool
        self._node_id = node_id
        self._pid = os.getpid()
        self._clock = store.CodeClock()

    async def CreateReceipts(  # noqa: N802 - name fixed by the proto
        self, request: pb.CreateReceiptsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateReceiptsResponse:
        items = request.items
        await _check_size(len(items), context)
        # No await between reading and storing the clock: codes stay strictly increasing.
        response, coded, self._clock = store.build_receipts(
            items, self._node_id, self._pid, self._clock, time.time_ns() // 1_000_000
        )
        if coded:
            try:
                async with self._pool.acquire() as conn:
                    await store.persist_receipts(conn, items, coded)
            except _DB_ERRORS as exc:
                await _abort_unavailable(context, exc)
        return response

    async def UpdateReceiptStatuses(  # noqa: N802
        self, request: pb.UpdateReceiptStatusesRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateReceiptStatusesResponse:
        items = request.items
        await _check_size(len(items), context)
        valid = [u for u in items if u.status in store.STATUS_RANK and u.code]
        found: set[str] = set()
        if valid:
            try:
                async with self._pool.acquire() as conn:
                    found = await store.update_statuses(conn, valid)
            except _DB_ERRORS as exc:
                await _abort_unavailable(context, exc)
        return pb.UpdateReceiptStatusesResponse(results=[_update_result(u, found) for u in items])

    async def GetReceipt(  # noqa: N802
        self, request: pb.GetReceiptRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetReceiptResponse:
        try:
            async with self._pool.acquire() as conn:
                return await store.get_receipt(conn, request.code)
        except _DB_ERRORS as exc:
            await _abort_unavailable(context, exc)
            raise AssertionError("abort returned") from exc  # abort always raises


def _update_result(update: pb.StatusUpdate, found: set[str]) -> pb.UpdateReceiptStatusResult:
    if update.status not in store.STATUS_RANK:
        return pb.UpdateReceiptStatusResult(
            ok=False, error=pb.ItemError(code="invalid_request", message=f"bad status {update.status!r}")
        )
    if update.code not in found:
        return pb.UpdateReceiptStatusResult(
            ok=False, error=pb.ItemError(code="not_found", message=f"no receipt {update.code!r}")
        )
    return pb.UpdateReceiptStatusResult(ok=True)


async def _check_size(count: int, context: grpc.aio.ServicerContext) -> None:
    if count > BATCH_SIZE_MAX:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"more than {BATCH_SIZE_MAX} items")


async def _abort_unavailable(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    log.warning("receipt service: database error: %r", exc)
    await context.abort(grpc.StatusCode.UNAVAILABLE, "database unavailable")


async def serve(port: int, database_url: str, *, node_id: int, host: str = "127.0.0.1") -> None:
    """Serve until cancelled; `host` may be a `unix:/path` address (then `port` is unused)."""
    async with asyncpg.create_pool(database_url, min_size=1, max_size=POOL_SIZE_MAX) as pool:
        servicer = ReceiptServicer(pool, node_id)
        await serve_until_cancelled(
            lambda s: pb_grpc.add_ReceiptServiceServicer_to_server(servicer, s),
            SERVICE_NAME, listen_address(host, port),
        )


def run_receipt_service(
    port: int, database_url: str, node_id: int, host: str = "127.0.0.1"
) -> None:
    """Blocking entry point for the CLI and child processes: serve until SIGTERM/SIGINT."""
    run_until_signal(lambda: serve(port, database_url, node_id=node_id, host=host))
