"""The Starlette application and its one routing table; server/process/asgi.py gives it a
lifespan that builds the worker's runtime."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.http.api import api_of
from server.http.errors import error_response
from server.http.handlers import accounts, links, listing, ops, transactions, webhooks
from server.http.hot import Handler, HotRoutes

log = logging.getLogger("kassa.app")

# The hot routes, served as raw ASGI ahead of Starlette (server/http/hot.py).
HOT_ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/v1/transactions"): transactions.post_transaction,
    ("POST", "/v1/transactions/batch"): transactions.post_batch,
}

ROUTES = [
    Route("/healthz", ops.healthz, methods=["GET"]),
    Route("/readyz", ops.readyz, methods=["GET"]),
    Route("/metrics", ops.prometheus, methods=["GET"]),
    Route("/openapi.json", ops.openapi, methods=["GET"]),
    Route("/v1/accounts", accounts.create_account, methods=["POST"]),
    Route("/v1/accounts", listing.list_accounts, methods=["GET"]),
    Route("/v1/accounts/{account_id}", accounts.get_account, methods=["GET"]),
    Route("/v1/accounts/{account_id}", accounts.patch_account, methods=["PATCH"]),
    Route("/v1/accounts/{account_id}/entries", accounts.list_entries, methods=["GET"]),
    Route("/v1/transactions", listing.list_transactions, methods=["GET"]),
    Route("/v1/transactions/{receipt_code}", transactions.get_transaction, methods=["GET"]),
    Route("/v1/transactions/{receipt_code}", transactions.patch_transaction, methods=["PATCH"]),
    Route("/v1/transactions/{receipt_code}/status", transactions.get_status, methods=["GET"]),
    Route("/v1/transactions/{receipt_code}/capture", links.capture, methods=["POST"]),
    Route("/v1/transactions/{receipt_code}/void", links.void, methods=["POST"]),
    Route("/v1/transactions/{receipt_code}/reverse", links.reverse, methods=["POST"]),
    Route("/v1/webhooks", webhooks.create_webhook, methods=["POST"]),
    Route("/v1/webhooks", webhooks.list_webhooks, methods=["GET"]),
    Route("/v1/webhooks/{webhook_id}", webhooks.get_webhook, methods=["GET"]),
    Route("/v1/webhooks/{webhook_id}", webhooks.delete_webhook, methods=["DELETE"]),
    Route("/v1/webhooks/{webhook_id}/deliveries", webhooks.list_deliveries, methods=["GET"]),
    Route("/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", webhooks.redeliver,
          methods=["POST"]),
]


def allowed_methods(path: str) -> list[str]:
    """The methods `path` answers, for a 405's Allow (RFC 9110 15.5.6): a hot route's path
    has its hot methods and those of a Starlette route of the same template (GET
    /v1/transactions); any other path those of every route whose template matches it
    (Starlette adds HEAD to a GET route)."""
    hot = {method for method, hot_path in HOT_ROUTES if hot_path == path}
    routes = [r for r in ROUTES if r.path == path] if hot else [
        r for r in ROUTES if r.path_regex.match(path)]
    return sorted(hot.union(*(r.methods or () for r in routes)))


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response("not_found", f"no route for {request.url.path}")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    allow = ", ".join(allowed_methods(request.url.path))
    response = error_response("invalid_request", f"{request.method} is not allowed here; "
                              f"{request.url.path} allows {allow}", status=405)
    response.headers["Allow"] = allow
    return response


async def _internal(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response("internal", "internal error")


def build_app(lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]]) -> HotRoutes:
    """The app; `lifespan` must set `app.state.runtime` (whose `api` the handlers use)."""
    app = Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers={
        404: _not_found, 405: _method_not_allowed, 500: _internal})
    return HotRoutes(app, HOT_ROUTES, lambda: api_of(app.state))
