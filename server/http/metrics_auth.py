"""/metrics's optional bearer token (KASSA_METRICS_TOKEN), checked the same way on the API
port (handlers/ops.py) and on the metrics port (server/process/metrics_server.py).

It is not an API key: API keys do not open /metrics, and the token opens nothing else."""

from __future__ import annotations

import hmac

CHALLENGE = 'Bearer realm="kassa-metrics"'  # the WWW-Authenticate of a 401


def token_matches(authorization: str, token: str) -> bool:
    """Whether an Authorization header's value is `Bearer <token>` (compared in constant
    time)."""
    scheme, _, sent = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(),
                                                              token.encode())
