"""Helpers for tests of the gRPC services: readiness, in-process servers, child processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.adapters.grpc.clients import CHANNEL_OPTIONS

ROOT = Path(__file__).resolve().parents[1]


async def wait_serving(address: str, timeout_s: float = 15.0) -> None:
    """Until the standard health service at `address` answers SERVING."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no SERVING health at {address} after {timeout_s}s")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def serving(main: Coroutine[Any, Any, None], address: str) -> AsyncIterator[None]:
    """Run a service's serve() coroutine as a task while the block runs, then cancel it."""
    task = asyncio.create_task(main)
    try:
        await wait_serving(address)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def start_receipt_process(port: int, dsn: str) -> subprocess.Popen[bytes]:
    """The receipt service as a child process, the way the CLI runs it."""
    code = (
        "from server.services.receipts.service import run_receipt_service; "
        f"run_receipt_service({port}, {dsn!r})"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Signal our own child by PID and reap it; returns its exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=10)
