"""/healthz, /readyz, /metrics, /openapi.json: no API key needed."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.http.handlers.common import NO_QUERY, guarded, json_response, request_api
from server.http.openapi import OPENAPI

HEALTH = b'{"status":"ok"}'


@guarded
async def healthz(request: Request) -> Response:
    NO_QUERY.check(request.query_params)
    return Response(HEALTH, 200, media_type="application/json")


@guarded
async def readyz(request: Request) -> Response:
    NO_QUERY.check(request.query_params)
    readiness = await request_api(request).health.readiness()
    # One field per check, then why not ready (empty when ready): a load balancer needs
    # only the status code, a person the reasons.
    return json_response({"status": "ready" if readiness.ready else "not_ready",
                          **readiness.checks, "reasons": list(readiness.reasons)},
                         200 if readiness.ready else 503)


@guarded
async def prometheus(request: Request) -> Response:
    NO_QUERY.check(request.query_params)
    body, content_type = request_api(request).metrics()
    return Response(body, 200, media_type=content_type)


@guarded
async def openapi(request: Request) -> Response:
    NO_QUERY.check(request.query_params)
    return json_response(OPENAPI)
