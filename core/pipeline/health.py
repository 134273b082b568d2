"""Readiness: may this process accept writes now? Not when the database does not answer,
or refused a statement for lack of resources just now (a full disk still answers a ping),
the worker pool has no room, the process is stopping, a required dependency's circuit
breaker is open (the receipt service, when codes come from one), or the receipt codes ran
out while their service cannot be reached. Redis and the other remote services are
reported but degrade service rather than stop it.

Every check is one field of /readyz; `reasons` lists, for a process that is not ready, one
line per failing check ("postgres: down", "receipt_codes: exhausted ...")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from core.pipeline.read_ports import Ping

CHECK_TIMEOUT_S = 1.0
OPEN = "open"  # core.kit.breaker.OPEN


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    checks: dict[str, str]  # in the order /readyz lists them
    reasons: tuple[str, ...] = ()  # why not ready, one line per failing check


@dataclass(frozen=True, slots=True)
class CodeSupply:
    """The receipt codes this process holds and whether their source is failing now."""

    available: int
    source_failing: bool  # the last reservation failed (take() refuses once dry), or the breaker is not closed


def code_state(supply: CodeSupply) -> str:
    """`ok` (codes in stock), `refilling` (none left, the service answers: the next block
    is on its way), `exhausted` (none left and the service cannot be reached)."""
    if supply.available > 0:
        return "ok"
    return "exhausted" if supply.source_failing else "refilling"


_WHY = {
    "postgres": "the database does not answer",
    "postgres_refusing": "the database refused a statement for lack of resources just now",
    "worker_pool": "no room in this process's queue",
    "receipt_codes": "no receipt codes left and the receipt service cannot be reached",
}


class HealthCheck:
    def __init__(self, *, database: Ping, redis: Ping | None, has_room: Callable[[], bool],
                 dependency_states: Callable[[], dict[str, str]],
                 stopping: Callable[[], bool], timeout_s: float = CHECK_TIMEOUT_S,
                 receipt_codes: Callable[[], CodeSupply] | None = None,
                 required: Collection[str] = (),
                 database_refusing: Callable[[], str | None] | None = None) -> None:
        self._database = database
        self._redis = redis
        self._has_room = has_room
        self._dependency_states = dependency_states  # circuit breakers of remote services
        self._stopping = stopping
        self._timeout_s = timeout_s
        self._receipt_codes = receipt_codes  # None: codes made in this process
        self._required = frozenset(required)  # breakers that stop writes when open
        # Why the database refused statements just now (a full disk answers a ping): None
        # when it did not.
        self._database_refusing = database_refusing

    async def readiness(self) -> Readiness:
        database, redis = await asyncio.gather(
            self._check(self._database.ping()),
            self._check(self._redis.ping()) if self._redis is not None else _constant("not_configured"))
        refusing = self._database_refusing() if self._database_refusing is not None else None
        checks = {"postgres": refusing if database == "ok" and refusing else database,
                  "redis": redis, "worker_pool": "ok" if self._has_room() else "full"}
        if self._receipt_codes is not None:
            checks["receipt_codes"] = code_state(self._receipt_codes())
        states = self._dependency_states()
        checks.update(states)
        reasons = [f"{name}: {checks[name]} ({_WHY[name]})"
                   for name, good in (("postgres", "ok"), ("worker_pool", "ok"))
                   if checks[name] != good]
        if refusing and database == "ok":
            reasons[0] = f"postgres: {refusing} ({_WHY['postgres_refusing']})"
        if checks.get("receipt_codes") == "exhausted":
            reasons.append(f"receipt_codes: exhausted ({_WHY['receipt_codes']})")
        reasons += [f"{name}: {OPEN} (circuit breaker open: calls are refused)"
                    for name in sorted(self._required) if states.get(name) == OPEN]
        if self._stopping():
            reasons.append("shutting_down: this process is stopping")
        return Readiness(not reasons, checks, tuple(reasons))

    async def _check(self, ping: Awaitable[None]) -> str:
        try:
            await asyncio.wait_for(ping, self._timeout_s)
        except Exception:  # noqa: BLE001 - any failure means the dependency is down
            return "down"
        return "ok"


async def _constant(value: str) -> str:
    return value
