"""/healthz, /readyz, /metrics, /openapi.json: no API key needed (/metrics may need its own
token, or be on a port of its own: server/http/metrics_auth.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from core.ledger.errors import NotFound
from server.http.errors import error_response
from server.http.handlers.common import NO_QUERY, guarded, json_response, request_api
from server.http.metrics_auth import CHALLENGE, token_matches
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
    api = request_api(request)
    if api.metrics is None:
        raise NotFound("/metrics is served on the metrics port (KASSA_METRICS_PORT)")
    if api.metrics_token is not None and not token_matches(
            request.headers.get("authorization", ""), api.metrics_token):
        response = error_response("unauthorized", "send Authorization: Bearer <metrics token>",
                                  status=401)
        response.headers["WWW-Authenticate"] = CHALLENGE
        return response
    body, content_type = api.metrics()
    return Response(body, 200, media_type=content_type)


@guarded
async def openapi(request: Request) -> Response:
    NO_QUERY.check(request.query_params)
    return json_response(OPENAPI)
