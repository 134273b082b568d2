"""Log format and level (KASSA_LOG_LEVEL; `warning` silences per-transaction lines).

Every line names the HTTP request it was written for (`X-Request-Id`, set per request by
server/http/handlers/hot.py), or `-` outside one.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

FORMAT = "%(asctime)s %(levelname)s [%(process)d] [%(request_id)s] %(name)s: %(message)s"

REQUEST_ID: ContextVar[str] = ContextVar("kassa_request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record: the request the current task serves."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def configure(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
    # Third-party chatter stays at warning whatever our level is.
    for noisy in ("aiokafka", "asyncio", "pgserver", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
