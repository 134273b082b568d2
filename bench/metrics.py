"""Batch sizes and latencies from the server's /metrics, as deltas over one scenario."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

# Histograms whose mean over the scenario says how well the batchers batch.
HISTOGRAMS = ("kassa_receipt_batch_size", "kassa_receipt_call_duration_seconds",
              "kassa_accept_batch_size", "kassa_execute_batch_size",
              "kassa_accept_to_final_seconds")
COUNTERS = ("kassa_requests_refused_total",)

Snapshot = dict[str, float]


def scrape(url: str) -> Snapshot:
    """{'<metric>{label=value}_sum': x, ..._count, counter samples}; empty if unreachable."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    wanted = set(HISTOGRAMS) | {c.removesuffix("_total") for c in COUNTERS}
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        for s in family.samples:
            if s.name.endswith(("_sum", "_count", "_total")):
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
    return out


def summarize(before: Snapshot, after: Snapshot) -> dict[str, dict[str, float]]:
    """Per histogram series: count and mean over the scenario; per counter: increase."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    out: dict[str, dict[str, float]] = {}
    for key, count in delta.items():
        name, _, labels = key.partition("{")
        if name.endswith("_count") and count > 0:
            series = name.removesuffix("_count") + "{" + labels
            total = delta.get(name.removesuffix("_count") + "_sum{" + labels, 0.0)
            out[series.replace("{}", "")] = {"count": count, "mean": round(total / count, 6)}
        elif name.endswith("_total") and count > 0:
            out[key.replace("{}", "")] = {"increase": count}
    return out
