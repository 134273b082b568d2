"""The batched histogram update gives exactly what one observe() per value gives; the
status cache's hits and misses become counters."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from core.pipeline.ports import JournalStatus
from core.pipeline.tracker import StatusTracker
from server.adapters.prometheus import LATENCY_BUCKETS, PrometheusObserver, observe_many


def samples(histogram: Histogram, registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("le", "")): s.value
            for metric in registry.collect() for s in metric.samples
            if not s.name.endswith("_created")}


def test_observe_many_matches_observe_one_by_one() -> None:
    values = [0.0, 0.0005, 0.0007, 0.001, 0.3, 7.0, 31.0, 100.0, 0.0005]
    one_registry, many_registry = CollectorRegistry(), CollectorRegistry()
    one = Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=one_registry)
    many = Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=many_registry)
    for value in values:
        for _ in range(3):
            one.observe(value)
    observe_many(many, values, repeat=3)
    assert samples(many, many_registry) == samples(one, one_registry)
    assert samples(many, many_registry)[("h_count", "")] == 27


def test_status_lookups_are_counted_from_the_trackers_totals() -> None:
    """The tracker counts in plain integers; each refresh adds what it counted since."""
    def value(result: str) -> float:
        return REGISTRY.get_sample_value("kassa_status_cache_lookups_total",
                                         {"result": result}) or 0.0

    observer = PrometheusObserver()
    tracker = StatusTracker(None, flush_interval_ms=1000, redis_ttl_s=60, memory_ttl_s=60)
    before = value("hit"), value("miss")
    tracker.finished([JournalStatus("RCP-1", "completed", None, "2026-12-07T00:00:00Z")])
    for code in ("RCP-1", "RCP-1", "RCP-2"):
        tracker.get(code)
    observer.count_status_lookups(tracker)
    tracker.get("RCP-1")
    observer.count_status_lookups(tracker)
    observer.count_status_lookups(tracker)  # nothing new: nothing added
    assert (value("hit") - before[0], value("miss") - before[1]) == (3, 1)
    assert REGISTRY.get_sample_value("kassa_status_cache_entries") == 1
