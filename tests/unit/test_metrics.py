"""The batched histogram update gives exactly what one observe() per value gives."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from server.adapters.prometheus import LATENCY_BUCKETS, observe_many


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
