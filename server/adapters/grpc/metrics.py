"""Prometheus metrics of the gRPC clients (the HTTP server aggregates them in multiprocess mode).

Created once at import, so each name is registered once per process.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from core.kit.breaker import STATE_VALUES

_BATCH_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500)
_RECEIPT_BATCH_SIZES = (*_BATCH_SIZES, 1000, 2000, 5000, 10_000)

RECEIPT_BATCH_SIZE = Histogram(
    "kassa_receipt_batch_size",
    "Items per receipt service call (op=register: receipts; op=reserve: 1 block)",
    ["op"],
    buckets=_RECEIPT_BATCH_SIZES,
)
RECEIPT_BATCH_LATENCY = Histogram(
    "kassa_receipt_call_duration_seconds",
    "Seconds per receipt service call, batch flush to answer",
    ["op"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
RECEIPT_BLOCKS_RESERVED = Counter(
    "kassa_receipt_blocks_reserved", "Blocks of receipt codes reserved from the receipt service"
)
RECEIPT_REGISTRATIONS_DROPPED = Counter(
    "kassa_receipt_registrations_dropped",
    "Receipts never registered with the receipt service (queue full, refused, or shutdown)",
)
NOTIFICATION_BATCH_SIZE = Histogram(
    "kassa_notification_batch_size", "Items per notification service call", buckets=_BATCH_SIZES
)
NOTIFICATIONS_FAILED = Counter(
    "kassa_notifications_failed", "Notifications not delivered (dropped, refused or failed)"
)
# "livemax": across live worker processes, the worst state wins.
BREAKER_STATE = Gauge(
    "kassa_circuit_breaker_state",
    "Circuit breaker state: 0 closed, 1 half-open, 2 open",
    ["name"],
    multiprocess_mode="livemax",
)

# Both calls' series exist from the start (at 0), before the first call.
RECEIPT_OPS = ("reserve", "register")
for _op in RECEIPT_OPS:
    RECEIPT_BATCH_SIZE.labels(op=_op)
    RECEIPT_BATCH_LATENCY.labels(op=_op)


def record_breaker_state(name: str, old: str, new: str) -> None:
    """A core.kit.breaker.StateListener that exports the state as a gauge."""
    BREAKER_STATE.labels(name=name).set(STATE_VALUES[new])
