"""Readiness: may this process take traffic? The database must answer, the worker pool
must have room and the process must not be stopping; Redis and the remote services are
reported but degrade service rather than stop it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from core.pipeline.read_ports import Ping

CHECK_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    checks: dict[str, str]  # in the order /readyz lists them


class HealthCheck:
    def __init__(self, *, database: Ping, redis: Ping | None, has_room: Callable[[], bool],
                 dependency_states: Callable[[], dict[str, str]],
                 stopping: Callable[[], bool], timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self._database = database
        self._redis = redis
        self._has_room = has_room
        self._dependency_states = dependency_states  # circuit breakers of remote services
        self._stopping = stopping
        self._timeout_s = timeout_s

    async def readiness(self) -> Readiness:
        checks = {"postgres": await self._check(self._database.ping()),
                  "redis": (await self._check(self._redis.ping()) if self._redis is not None
                            else "not_configured"),
                  "worker_pool": "ok" if self._has_room() else "full"}
        checks.update(self._dependency_states())
        ready = checks["postgres"] == "ok" and checks["worker_pool"] == "ok" and not self._stopping()
        return Readiness(ready, checks)

    async def _check(self, ping: Awaitable[None]) -> str:
        try:
            await asyncio.wait_for(ping, self._timeout_s)
        except Exception:  # noqa: BLE001 - any failure means the dependency is down
            return "down"
        return "ok"
