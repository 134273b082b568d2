"""Prometheus metrics: the contract's names plus what separates accepted from applied.

Under gunicorn every worker writes to PROMETHEUS_MULTIPROC_DIR (set by `kassa serve`)
and /metrics aggregates all of them.
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import logging
import os
import platform
from collections.abc import Awaitable, Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

from core.ledger.errors import BusinessRuleError
from core.ledger.linked import LINKED_TYPES
from core.ledger.status import FINAL
from core.ledger.validation import TYPES
from core.pipeline.read_ports import Backlog
from core.pipeline.tracker import StatusTracker
from server.version import package_version

log = logging.getLogger("kassa.metrics")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)

# Names follow Prometheus's conventions (issue 22): `kassa_` first, the unit last, counters
# end in `_total` (prometheus_client appends it to a counter's family name). CHANGELOG.md
# lists the names they replaced.
TRANSACTIONS = Counter("kassa_transactions_total",
                       "Transactions that reached a final status (completed, failed, voided; "
                       "not held, which a capture or void ends)", ["status", "type"])
FAILED = Counter("kassa_transactions_failed_total", "Transactions that ended failed", ["type"])
REFUSED = Counter("kassa_requests_refused_total", "Requests refused before acceptance", ["code"])
DURATION = Histogram("kassa_accept_to_final_seconds",
                     "Accept to final status of the transactions that reached one",
                     buckets=LATENCY_BUCKETS)
ACCEPT_LATENCY = Histogram("kassa_accept_latency_seconds", "Request start to durable accept",
                           ["kind"], buckets=LATENCY_BUCKETS)
ACCEPT_BATCH = Histogram("kassa_accept_batch_size", "Journals per group commit", buckets=SIZE_BUCKETS)
QUEUE_SIZE = Gauge("kassa_executor_queued_tasks", "Tasks queued for execution",
                   multiprocess_mode="livesum")
UTILIZATION = Gauge("kassa_executor_writers_busy_ratio", "Busy executor writers / writers",
                    multiprocess_mode="liveall")
PROCESSING = Histogram("kassa_execute_batch_duration_seconds", "Seconds to execute one batch",
                       buckets=LATENCY_BUCKETS)
EXECUTE_BATCH = Histogram("kassa_execute_batch_size", "Transactions per executed batch", buckets=SIZE_BUCKETS)
BACKLOG = Gauge("kassa_backlog_size", "Accepted journals not yet final (database)", multiprocess_mode="livemax")
OLDEST = Gauge("kassa_oldest_unexecuted_age_seconds", "Age of the oldest unfinished journal",
               multiprocess_mode="livemax")
STATUS_LOOKUPS = Counter("kassa_status_cache_lookups_total",
                         "Status lookups: hit (answered from this process's memory) or miss",
                         ["result"])
TRACKER_SIZE = Gauge("kassa_status_cache_entries", "Statuses held in memory",
                     multiprocess_mode="livesum")
BUILD_INFO = Gauge("kassa_build_info", "1, labelled with the running Kassa and Python versions",
                   ["version", "python"], multiprocess_mode="livemax")

HTTP_REQUESTS = Counter("kassa_http_requests_total", "HTTP requests answered",
                        ["route", "method", "status"])
HTTP_DURATION = Histogram("kassa_http_request_duration_seconds",
                          "Request start to the last byte of the answer handed to the server",
                          ["route", "method", "status"], buckets=LATENCY_BUCKETS)

GAUGE_INTERVAL_S = 5.0


def observe_many(histogram: Histogram, values: list[float], repeat: int = 1) -> None:
    """Observe each value `repeat` times with one write per bucket touched and one to the
    sum, instead of two per observation: in multiprocess mode every write goes through a
    lock and an mmap, which per transaction cost more than the rest of the bookkeeping.
    Uses the histogram's bucket and sum values (prometheus_client's own layout, stable
    across the versions pyproject.toml admits); a test checks the result against observe()."""
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += repeat
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(sum(values) * repeat)


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STATUS_CLASSES = tuple(f"{n}xx" for n in range(10))


class HttpMetrics:
    """`kassa_http_requests_total` and `kassa_http_request_duration_seconds` by route
    template, method and status class, accumulated in this process and written to the
    prometheus children in one go: in multiprocess mode each child write takes a lock and
    an mmap write, and one request would need three (count, bucket, sum). Counts, bucket
    counts and sums are written every `flush_interval_s` (a timer on the running loop),
    every `flush_every` requests, before /metrics renders (`render`) and at exit; the
    result is exactly what one observe() per request gives (a unit test checks).

    `record` is what server/http gets (server/http/api.py `RecordRequest`): `route` is a
    route template or `unmatched`, never a path with an id in it."""

    def __init__(self, requests: Counter = HTTP_REQUESTS, duration: Histogram = HTTP_DURATION,
                 flush_interval_s: float = 1.0, flush_every: int = 5000) -> None:
        self._requests = requests
        self._duration = duration
        self._bounds = tuple(duration._upper_bounds)
        self._flush_interval_s = flush_interval_s
        self._flush_every = flush_every
        # (route, method, status class) -> [count, sum of seconds, count per bucket...]
        self._pending: dict[tuple[str, str, str], list[float]] = {}
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._recorded = 0
        self._timer = False

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method if method in HTTP_METHODS else "other",
               STATUS_CLASSES[status // 100] if 0 <= status < 1000 else "other")
        entry = self._pending.get(key)
        if entry is None:
            entry = self._pending[key] = [0] * (len(self._bounds) + 2)
        entry[0] += 1
        entry[1] += seconds
        entry[2 + bisect.bisect_left(self._bounds, seconds)] += 1
        self._recorded += 1
        if self._recorded >= self._flush_every:
            self.flush()
        elif not self._timer:
            self._start_timer()

    def _start_timer(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script, a test): count, render and exit flush
            return
        self._timer = True
        loop.call_later(self._flush_interval_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = False
        self.flush()

    def flush(self) -> None:
        pending, self._pending, self._recorded = self._pending, {}, 0
        for key, entry in pending.items():
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (self._requests.labels(*key),
                                                  self._duration.labels(*key))
            counter, histogram = children
            counter.inc(entry[0])
            for bucket, count in zip(histogram._buckets, entry[2:], strict=True):
                if count:
                    bucket.inc(count)
            histogram._sum.inc(entry[1])


HTTP_METRICS = HttpMetrics()
atexit.register(HTTP_METRICS.flush)


ACCEPT_KINDS = ("transaction",)  # core/pipeline/accept.py's `accepted` kinds
STATUS_RESULTS = ("hit", "miss")


def refusal_codes() -> frozenset[str]:
    """Every code pre-validation can refuse with: those of the ledger's rule errors
    (BusinessRuleError's subclasses; core/ledger/linked.py, imported above, defines some)."""
    found: set[str] = set()
    pending: list[type[BusinessRuleError]] = [BusinessRuleError]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if cls is not BusinessRuleError:
            found.add(cls.code)
    return frozenset(found)


def export_known_series() -> None:
    """Every known label combination at 0 from the start, so that a server that has served
    nothing shows every series, and rate() sees the first event as an increase (a series
    first seen at 1 has no earlier sample to rise from). Creating a child is what exports
    it; in multiprocess mode it is written to this process's file at once."""
    types = (*TYPES, *sorted(LINKED_TYPES))
    for type_ in types:
        FAILED.labels(type_)
        for status in sorted(FINAL):
            TRANSACTIONS.labels(status, type_)
    for code in sorted(refusal_codes()):
        REFUSED.labels(code)
    for kind in ACCEPT_KINDS:
        ACCEPT_LATENCY.labels(kind)
    for result in STATUS_RESULTS:
        STATUS_LOOKUPS.labels(result)
    BUILD_INFO.labels(package_version(), platform.python_version()).set(1)


class PrometheusObserver:
    """The pipeline's Observer; creating one exports the known series at 0
    (`export_known_series`)."""

    def __init__(self) -> None:
        self._accept_latency: dict[str, Histogram] = {}
        self._status_hits = self._status_misses = 0
        export_known_series()

    def accepted(self, kind: str, seconds: float, count: int = 1) -> None:
        child = self._accept_latency.get(kind)
        if child is None:
            child = self._accept_latency[kind] = ACCEPT_LATENCY.labels(kind)
        observe_many(child, [seconds], count)

    def refused(self, code: str) -> None:
        REFUSED.labels(code).inc()

    def finished(self, counts: dict[tuple[str, str], int], accept_to_final_s: list[float]
                 ) -> None:
        for (status, type_), count in counts.items():
            TRANSACTIONS.labels(status, type_).inc(count)
            if status == "failed":
                FAILED.labels(type_).inc(count)
        observe_many(DURATION, accept_to_final_s)

    def batch_executed(self, size: int, seconds: float) -> None:
        PROCESSING.observe(seconds)
        EXECUTE_BATCH.observe(size)

    def queue_changed(self, queued: int, capacity: int, busy_writers: int, writers: int) -> None:
        QUEUE_SIZE.set(queued)
        UTILIZATION.set(busy_writers / writers)

    def accept_flushed(self, size: int, seconds: float) -> None:
        ACCEPT_BATCH.observe(size)

    def count_status_lookups(self, tracker: StatusTracker) -> None:
        """The tracker's hits and misses since the last call, onto the counters (the
        tracker is core and counts in plain integers)."""
        hits, misses = tracker.hits - self._status_hits, tracker.misses - self._status_misses
        self._status_hits, self._status_misses = tracker.hits, tracker.misses
        if hits:
            STATUS_LOOKUPS.labels("hit").inc(hits)
        if misses:
            STATUS_LOOKUPS.labels("miss").inc(misses)
        TRACKER_SIZE.set(len(tracker))

    async def run_gauges(self, backlog: Callable[[], Awaitable[Backlog]],
                         tracker: StatusTracker) -> None:
        """Refresh the gauges that need a query (`backlog`) and the tracker's counts;
        cheap, every few seconds."""
        while True:
            try:
                found = await backlog()
                BACKLOG.set(found.size)
                OLDEST.set(found.oldest_age_s)
            except Exception as exc:  # noqa: BLE001 - a gauge may lag; never crash the worker
                log.debug("gauge refresh failed: %r", exc)
            self.count_status_lookups(tracker)
            await asyncio.sleep(GAUGE_INTERVAL_S)


def render() -> tuple[bytes, str]:
    HTTP_METRICS.flush()  # this worker's requests so far; the others' within a second
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
