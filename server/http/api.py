"""The one object the HTTP layer gets from the composition root: the use cases and what
HTTP itself needs (API keys, the rate limit, the body size limit, the metrics page).

Never a database or Redis client: handlers decode, call one use case, encode.
server/process/runtime.py builds it; the app reaches it as `app.state.runtime.api`
(the lifespan, or a test, puts the runtime there).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.kit.rate_limit import Quota
from core.pipeline.accept import TransactionService
from core.pipeline.accounts import AccountService
from core.pipeline.health import HealthCheck
from core.pipeline.links import LinkedRequests
from core.pipeline.listing import Listing
from core.pipeline.transaction_metadata import TransactionMetadata
from core.pipeline.transaction_query import TransactionQuery
from core.pipeline.webhooks import Webhooks
from server.http.auth import ApiKeys

# Records one answered request: route template (or `unmatched`), method, HTTP status,
# seconds from the request's start to its last byte handed to the server. The composition
# root passes the Prometheus adapter's (server/adapters/prometheus.py `HttpMetrics.record`);
# it must be cheap: server/http/hot.py calls it once per request.
RecordRequest = Callable[[str, str, int, float], None]


@dataclass
class Api:
    transactions: TransactionService
    accounts: AccountService
    queries: TransactionQuery
    transaction_metadata: TransactionMetadata
    listing: Listing
    links: LinkedRequests
    health: HealthCheck
    keys: ApiKeys
    # Per-key rate limit: what is left of the key's quota (None: no limit set); raises
    # RateLimited (429) when it is spent.
    limit: Callable[[str], Awaitable[Quota | None]]
    # The /metrics page and its content type; None when it is on its own port (404 here).
    metrics: Callable[[], tuple[bytes, str]] | None
    body_size_max: int
    record_request: RecordRequest | None = None  # HTTP metrics (server/http/hot.py)
    webhooks: Webhooks | None = None  # /v1/webhooks (None only in tests without a database)
    metrics_token: str | None = None  # required from /metrics's callers when set


def api_of(state: Any) -> Api:
    """The Api of an app's state (Starlette's `app.state`)."""
    api: Api = state.runtime.api
    return api
