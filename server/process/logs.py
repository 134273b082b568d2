"""Log format and level (KASSA_LOG_LEVEL; `warning` silences per-transaction lines).

Every line names the HTTP request it was written for (`X-Request-Id`, set per request by
server/http/hot.py), or `-` outside one. KASSA_LOG_FORMAT=json writes each record as one
JSON object per line (for log shippers) instead of the text FORMAT; while tracing is on
(server/tracing/), a JSON line written inside a span also carries its `trace_id` and
`span_id` (hex, as OpenTelemetry writes them), so a log line leads to its trace.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import msgspec

from core.kit.request_context import REQUEST_ID
from server.tracing import spans

FORMAT = "%(asctime)s %(levelname)s [%(process)d] [%(request_id)s] %(name)s: %(message)s"

class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record: the request the current task serves; and, in a
    span while tracing is on, `trace_id` and `span_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        if spans.ENABLED and (ids := spans.log_ids()) is not None:
            record.trace_id, record.span_id = ids
        return True


_encode = msgspec.json.Encoder().encode


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, pid, request_id,
    message, and `exception` / `stack` when the record carries them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            # Set by RequestIdFilter; read here too so a handler without it still names one.
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get(),
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id is not None:
            entry["trace_id"], entry["span_id"] = trace_id, getattr(record, "span_id", None)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # A JSON string never holds a raw newline: one record stays one line.
        return _encode(entry).decode()


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of KASSA_LOG_FORMAT (`text` or `json`, validated by settings)."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(FORMAT)


def use_format(handler: logging.Handler, log_format: str) -> None:
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RequestIdFilter())


def configure(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    use_format(handler, log_format)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Third-party chatter stays at warning whatever our level is.
    for noisy in ("aiokafka", "asyncio", "pgserver", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
