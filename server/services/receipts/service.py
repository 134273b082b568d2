"""The receipt service: the authority for receipt codes, and the store of receipt records.

Codes: `ReserveCodes` hands out a whole block at once (one `nextval` of the PostgreSQL
sequence `receipt_blocks`), so any number of services and workers, on any hosts, never
hand out the same code. Records: `RegisterReceipts` stores a batch of receipts with their
final status in one statement. Run it with `run_receipt_service(port, database_url)`
(blocks until SIGTERM) or `await serve(...)` inside a loop.
"""

from __future__ import annotations

import logging

import asyncpg
import grpc

import native
from server.adapters.grpc.gen.kassa.v1 import receipts_pb2 as pb
from server.adapters.grpc.gen.kassa.v1 import receipts_pb2_grpc as pb_grpc
from server.adapters.grpc.security import GrpcSecurity
from server.adapters.postgres.pool import keep_session
from server.services.grpc_server import listen_address, run_until_signal, serve_until_cancelled
from server.services.receipts import store

log = logging.getLogger("kassa.receipts")

SERVICE_NAME = "kassa.v1.ReceiptService"
POOL_SIZE_MAX = 10
BATCH_SIZE_MAX = 10_000  # items per RegisterReceipts call; a larger request is refused whole
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


class ReceiptServicer(pb_grpc.ReceiptServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ReserveCodes(  # noqa: N802 - name fixed by the proto
        self, request: pb.ReserveCodesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReserveCodesResponse:
        if not 1 <= request.count <= native.BLOCK_SPAN:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"count must be 1 to {native.BLOCK_SPAN}")
        try:
            async with self._pool.acquire() as conn:
                block = await store.reserve_block(conn)
        except _DB_ERRORS as exc:
            await _abort_unavailable(context, exc)
        return pb.ReserveCodesResponse(block=block, count=request.count)

    async def RegisterReceipts(  # noqa: N802
        self, request: pb.RegisterReceiptsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterReceiptsResponse:
        items = request.items
        if len(items) > BATCH_SIZE_MAX:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"more than {BATCH_SIZE_MAX} items")
        refused = [pb.RefusedItem(index=i, error=error) for i, item in enumerate(items)
                   if (error := store.refusal(item)) is not None]
        valid = items if not refused else [items[i] for i in _valid_indexes(len(items), refused)]
        if valid:
            try:
                async with self._pool.acquire() as conn:
                    await store.register_receipts(conn, valid)
            except _DB_ERRORS as exc:
                await _abort_unavailable(context, exc)
        return pb.RegisterReceiptsResponse(refused=refused)

    async def GetReceipt(  # noqa: N802
        self, request: pb.GetReceiptRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetReceiptResponse:
        try:
            async with self._pool.acquire() as conn:
                return await store.get_receipt(conn, request.code)
        except _DB_ERRORS as exc:
            await _abort_unavailable(context, exc)
            raise AssertionError("abort returned") from exc  # abort always raises


def _valid_indexes(count: int, refused: list[pb.RefusedItem]) -> list[int]:
    skip = {r.index for r in refused}
    return [i for i in range(count) if i not in skip]


async def _abort_unavailable(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    log.warning("receipt service: database error: %r", exc)
    await context.abort(grpc.StatusCode.UNAVAILABLE, "database unavailable")


async def serve(port: int, database_url: str, *, host: str = "127.0.0.1",
                security: GrpcSecurity | None = None) -> None:
    """Serve until cancelled; `host` may be a `unix:/path` address (then `port` is unused)."""
    async with asyncpg.create_pool(database_url, min_size=1, max_size=POOL_SIZE_MAX,
                                    reset=keep_session) as pool:
        servicer = ReceiptServicer(pool)
        await serve_until_cancelled(
            lambda s: pb_grpc.add_ReceiptServiceServicer_to_server(servicer, s),
            SERVICE_NAME, listen_address(host, port), security,
        )


def run_receipt_service(port: int, database_url: str, host: str = "127.0.0.1",
                        security: GrpcSecurity | None = None) -> None:
    """Blocking entry point for the CLI and child processes: serve until SIGTERM/SIGINT."""
    run_until_signal(lambda: serve(port, database_url, host=host, security=security))
