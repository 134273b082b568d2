"""What both gRPC clients share: channel options and the circuit-breaker guard of a call.

gRPC errors become core.ledger.errors.Unavailable here, once; the breaker counts only the
dependency's failures (UNAVAILABLE, DEADLINE_EXCEEDED), and an open breaker refuses at once
instead of letting callers wait for a timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from core.kit.breaker import CircuitBreaker
from core.ledger.errors import Unavailable
from server.adapters.grpc import metrics

log = logging.getLogger("kassa.grpc.clients")  # one logger name for both clients

T = TypeVar("T")

# Reconnect quickly: gRPC's default backoff grows to 120 s, far longer than the
# breaker's cool-down, and a restarted service would stay unused meanwhile.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
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


def consume(future: asyncio.Future[None]) -> None:
    """Done callback for futures nobody awaits: read the failure so asyncio does not warn."""
    if not future.cancelled():
        future.exception()


def new_breaker(name: str, failures_max: int, reset_ms: float) -> CircuitBreaker:
    breaker = CircuitBreaker(
        name, failures_max=failures_max, reset_ms=reset_ms,
        on_change=_on_breaker_change,
    )
    metrics.BREAKER_STATE.labels(name=name).set(0)
    return breaker


def _on_breaker_change(name: str, old: str, new: str) -> None:
    log.warning("circuit breaker %s: %s -> %s", name, old, new)
    metrics.record_breaker_state(name, old, new)
