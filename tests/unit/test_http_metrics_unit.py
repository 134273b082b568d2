"""HTTP metrics accumulated in process memory and flushed give exactly what one observe()
and one inc() per request give."""

from __future__ import annotations

import asyncio
import random

from prometheus_client import CollectorRegistry, Counter, Histogram

from server.adapters.prometheus import LATENCY_BUCKETS, HttpMetrics

LABELS = ["route", "method", "status"]


def pair(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
    return (Counter("kassa_http_requests_total", "r", LABELS, registry=registry),
            Histogram("kassa_http_request_duration_seconds", "d", LABELS,
                      buckets=LATENCY_BUCKETS, registry=registry))


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): round(s.value, 9)
            for metric in registry.collect() for s in metric.samples
            if not s.name.endswith("_created")}


REQUESTS = [("/v1/transactions", "POST", 202), ("/v1/transactions/{receipt_code}", "GET", 200),
            ("/v1/transactions/{receipt_code}", "GET", 404), ("unmatched", "GET", 404),
            ("/v1/transactions", "POST", 503), ("/healthz", "GET", 200)]
SECONDS = [0.0, 0.0005, 0.0007, 0.001, 0.003, 0.3, 7.0, 31.0, 100.0]


def test_accumulated_counts_and_buckets_match_one_write_per_request() -> None:
    rng = random.Random(13)
    calls = [(*rng.choice(REQUESTS), rng.choice(SECONDS)) for _ in range(2000)]
    one_registry, many_registry = CollectorRegistry(), CollectorRegistry()
    requests, duration = pair(one_registry)
    metrics = HttpMetrics(*pair(many_registry), flush_every=300)  # flushes mid-way too
    for route, method, status, seconds in calls:
        klass = f"{status // 100}xx"
        requests.labels(route, method, klass).inc()
        duration.labels(route, method, klass).observe(seconds)
        metrics.record(route, method, status, seconds)
    assert samples(many_registry) != samples(one_registry)  # the last 200 are pending
    metrics.flush()
    assert samples(many_registry) == samples(one_registry)
    assert sum(v for (name, _), v in samples(many_registry).items()
               if name == "kassa_http_requests_total") == 2000
    metrics.flush()  # nothing pending: nothing changes
    assert samples(many_registry) == samples(one_registry)


def test_labels_stay_bounded() -> None:
    registry = CollectorRegistry()
    metrics = HttpMetrics(*pair(registry))
    metrics.record("unmatched", "BREW", 418, 0.01)
    metrics.record("unmatched", "GET", 1234, 0.01)
    metrics.flush()
    found = {dict(labels)["method"] + " " + dict(labels)["status"]
             for (name, labels), _ in samples(registry).items()
             if name == "kassa_http_requests_total"}
    assert found == {"other 4xx", "GET other"}


async def test_a_timer_flushes_what_requests_left_pending() -> None:
    registry = CollectorRegistry()
    metrics = HttpMetrics(*pair(registry), flush_interval_s=0.01)
    metrics.record("/healthz", "GET", 200, 0.001)
    assert not samples(registry)  # no child before the first flush
    await asyncio.sleep(0.05)
    assert samples(registry)[("kassa_http_requests_total",
                              (("method", "GET"), ("route", "/healthz"), ("status", "2xx")))] == 1
