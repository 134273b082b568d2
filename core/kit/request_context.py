"""The HTTP request the current task serves, for log lines: `X-Request-Id`, or `-` outside
one (batch-shared work). Set by server/http/hot.py, read by server/process/logs.py.

TRACEPARENT: the W3C traceparent of the request's span while tracing is on (None when
off), an opaque string to core: stored with the journal, carried on its task, linked by the
batches that serve it (server/tracing/spans.py)."""

from __future__ import annotations

import logging
from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("kassa_request_id", default="-")
TRACEPARENT: ContextVar[str | None] = ContextVar("kassa_traceparent", default=None)


def log_info_for(request_id: str, logger: logging.Logger, message: str, *args: object) -> None:
    """Log at info under `request_id`, from a task that serves no request (a writer, an
    effect worker) on behalf of one: its transaction's lines stay under its X-Request-Id."""
    if not logger.isEnabledFor(logging.INFO):
        return
    token = REQUEST_ID.set(request_id)
    try:
        logger.info(message, *args, stacklevel=2)
    finally:
        REQUEST_ID.reset(token)
