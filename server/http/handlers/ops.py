"""/healthz, /readyz, /metrics, /openapi.json: no API key needed."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from server.adapters import prometheus as metrics
from server.http.handlers.common import json_response, runtime_of
from server.http.openapi import OPENAPI

HEALTH = b'{"status":"ok"}'
CHECK_TIMEOUT_S = 1.0


async def healthz(request: Request) -> Response:
    return Response(HEALTH, 200, media_type="application/json")


async def readyz(request: Request) -> Response:
    runtime = runtime_of(request)
    checks = {"postgres": await _check(runtime.db.fetchval("SELECT 1")),
              "redis": (await _check(runtime.redis.ping()) if runtime.redis is not None
                        else "not_configured"),
              "worker_pool": "ok" if runtime.pool.has_room else "full"}
    checks.update(runtime.dependency_states())
    ready = checks["postgres"] == "ok" and checks["worker_pool"] == "ok" and not runtime.stopping
    return json_response({"status": "ready" if ready else "not_ready", **checks},
                         200 if ready else 503)


async def _check(awaitable: object) -> str:
    try:
        await asyncio.wait_for(awaitable, CHECK_TIMEOUT_S)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - any failure means the dependency is down
        return "down"
    return "ok"


async def prometheus(request: Request) -> Response:
    body, content_type = metrics.render()
    return Response(body, 200, media_type=content_type)


async def openapi(request: Request) -> Response:
    return json_response(OPENAPI)
