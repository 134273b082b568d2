"""The HTTP request the current task serves, for log lines: `X-Request-Id`, or `-` outside
one (batch-shared work). Set by server/http/hot.py, read by server/process/logs.py."""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("kassa_request_id", default="-")
