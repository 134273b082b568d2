"""Shared plumbing of the two gRPC services: listen, health, run until cancelled or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server.adapters.grpc.security import GrpcSecurity
from server.tracing import grpc_context, setup

log = logging.getLogger("kassa.grpc")

GRACE_S = 2.0  # in-flight calls get this long to finish on shutdown
MESSAGE_BYTES_MAX = 8 * 1024 * 1024


def listen_address(host: str, port: int) -> str:
    """`host:port`, or `host` itself when it is a `unix:/path` address."""
    return host if host.startswith("unix:") else f"{host}:{port}"


async def start_server(
    register: Callable[[grpc.aio.Server], None], service_name: str, address: str,
    security: GrpcSecurity | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A started server with the standard health service; returns it and its bound port.

    Raises InsecureListen for a non-loopback address without TLS and a token."""
    security = security or GrpcSecurity()
    setup.configure(f"kassa-{service_name.rsplit('.', 1)[-1].lower()}")
    security.check_listen(address.rsplit(":", 1)[0] if not address.startswith("unix:") else address)
    server = grpc.aio.server(
        interceptors=[*security.interceptors(), *grpc_context.server_interceptors()],
        options=[
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
        ],
    )
    register(server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = security.add_port(server, address)
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await checker.set("", serving)
    await checker.set(service_name, serving)
    log.info("%s listening on %s", service_name, address)
    return server, port, checker


async def stop_server(server: grpc.aio.Server, checker: health.aio.HealthServicer) -> None:
    # Report NOT_SERVING first so health-checking clients stop routing here.
    await checker.enter_graceful_shutdown()
    await server.stop(GRACE_S)


async def serve_until_cancelled(
    register: Callable[[grpc.aio.Server], None], service_name: str, address: str,
    security: GrpcSecurity | None = None,
) -> None:
    """Run a server with the health service until the calling task is cancelled."""
    server, _, checker = await start_server(register, service_name, address, security)
    try:
        await asyncio.Event().wait()
    finally:
        await stop_server(server, checker)


def run_until_signal(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `main()` until it returns or SIGTERM/SIGINT cancels it (for the CLI)."""

    async def runner() -> None:
        task = asyncio.create_task(main())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())
