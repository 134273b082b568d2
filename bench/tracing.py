"""`--trace LABEL=RATIO`: the cost of tracing (issue 22, 1: at most 3 % more CPU per
transfer at 1 % sampling, 10 % at 100 %). The servers of the build labelled LABEL (with
--kassa-bin LABEL=PATH, the same build several times compares sampling rates in one run)
run with the standard OTEL_* variables: OTLP/HTTP export of a share RATIO of the requests'
traces (parentbased_traceidratio; wrk sends no traceparent, so each request is a root) to a
sink on loopback that answers every POST with 204 (the webhook benchmark's receiver
process, bench/webhook.py): the workers pay for the spans, their batching and the export,
the sink's own CPU is not counted (a collector's, not Kassa's)."""

from __future__ import annotations

import sys


def parse(items: list[str]) -> dict[str, float]:
    """LABEL=RATIO items: the sampling ratio of each build named."""
    ratios: dict[str, float] = {}
    for item in items:
        label, _, ratio = item.rpartition("=")
        try:
            value = float(ratio)
        except ValueError:
            sys.exit(f"--trace {item}: RATIO must be a number from 0 to 1")
        if not label or not 0 <= value <= 1:
            sys.exit(f"--trace {item}: expected LABEL=RATIO with RATIO from 0 to 1")
        ratios[label] = value
    return ratios


def server_env(endpoint: str, ratio: float) -> dict[str, str]:
    """The OTEL_* variables of a traced server (they pass the launcher, which drops only the
    caller's KASSA_*)."""
    return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": repr(ratio), "OTEL_SERVICE_NAME": "kassa-bench"}
