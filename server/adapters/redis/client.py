"""One asyncio Redis client per process, with short timeouts so a dead Redis answers fast,
and one circuit breaker around every call of the adapters here (but the rate limiter, which
keeps its own): a Redis that stalls (SIGSTOP, a long fork, a full network buffer) costs each
call its socket timeout, so after KASSA_BREAKER_FAILURES_MAX outages in a row the calls are
refused at once and their callers fall back (the database's idempotency check, statuses
kept in memory) until a trial call every KASSA_REDIS_BREAKER_RESET_MS finds Redis back."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.exceptions import (
    BusyLoadingError,
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TimeoutError,
)

from core.kit.breaker import CircuitBreaker
from core.ledger.errors import Unavailable
from server.adapters.grpc import metrics
from server.tracing import spans

log = logging.getLogger("kassa.redis")

BREAKER_NAME = "redis"
# What says Redis is down, stalled or cannot take writes: counted by the breaker. Any other
# error is an answer from a working Redis (a bug on one side): converted, not counted.
# OOM ("OOM command not allowed when used memory > 'maxmemory'") is an outage too: every
# write would fail the same way until memory is freed.
OUTAGES: tuple[type[BaseException], ...] = (
    ConnectionError, TimeoutError, OSError, OutOfMemoryError, BusyLoadingError, ReadOnlyError)


def create_client(url: str) -> aioredis.Redis:
    return aioredis.from_url(
        url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=10,
        max_connections=64,
    )


def new_breaker(failures_max: int, reset_ms: float) -> CircuitBreaker:
    """The breaker of this process's Redis calls, exported as kassa_circuit_breaker_state
    {name="redis"} and logged on every change."""
    breaker = CircuitBreaker(BREAKER_NAME, failures_max=failures_max, reset_ms=reset_ms,
                             on_change=_on_change)
    metrics.BREAKER_STATE.labels(name=BREAKER_NAME).set(0)
    return breaker


def _on_change(name: str, old: str, new: str) -> None:
    log.warning("circuit breaker %s: %s -> %s", name, old, new)
    metrics.record_breaker_state(name, old, new)


@contextlib.asynccontextmanager
async def converted_errors(what: str, breaker: CircuitBreaker | None = None
                           ) -> AsyncIterator[None]:
    """Redis errors become Unavailable; with a breaker, an open one refuses at once (no
    socket timeout paid) and outages are counted."""
    if breaker is not None and not breaker.allow():
        raise Unavailable(f"redis is unavailable ({what}): circuit open", retry_after_s=1)
    # A request's Redis call is a span of its trace (server/tracing/spans.py).
    with spans.in_trace("redis", what):
        try:
            yield
        except OUTAGES as exc:
            if breaker is not None:
                breaker.record_failure()
            # The message may reach a client: the driver's text (host, port) goes to the log.
            log.warning("redis unavailable (%s): %r", what, exc)
            raise Unavailable(f"redis is unavailable ({what})", retry_after_s=1) from exc
        except RedisError as exc:
            if breaker is not None:
                breaker.record_success()  # Redis answered
            log.warning("redis error (%s): %r", what, exc)
            raise Unavailable(f"redis is unavailable ({what})", retry_after_s=1) from exc
        except BaseException:
            if breaker is not None:
                breaker.record_abandoned()  # cancelled: a half-open trial slot is given back
            raise
        if breaker is not None:
            breaker.record_success()
