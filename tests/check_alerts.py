"""Check the alert rules: with Debian's promtool when it is installed (syntax, then the unit
tests below), else a structural parse.

Run as `python -m tests.check_alerts deploy/prometheus/alerts.yml` (make lint does;
tests/test_alerts.py too).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# The queue alerts, evaluated by `promtool test rules`. Host a runs two workers holding
# 9,000 tasks together (45% of its 20,000): quiet. Host b runs one worker holding 8,500
# (85% of 10,000): both alerts. A rule that sums over workers or hosts and compares with
# one worker's capacity fires on a (and once, for both hosts together): the test fails.
QUEUE_SERIES = [
    ('transactions_queue_size{job="kassa", instance="a"}', "9000x20"),
    ('worker_pool_utilization{job="kassa", instance="a", pid="1"}', "0.5x20"),
    ('worker_pool_utilization{job="kassa", instance="a", pid="2"}', "0.5x20"),
    ('transactions_queue_size{job="kassa", instance="b"}', "8500x20"),
    ('worker_pool_utilization{job="kassa", instance="b", pid="3"}', "0.9x20"),
]
QUEUE_ALERTS = {
    "KassaQueueNearlyFull": ("critical", "Processor queues on b above 80% of their capacity: "
                                         "503 overloaded is next"),
    "KassaQueueFilling": ("warning", "Processor queues on b above 50% of their capacity"),
}
QUEUE_METRIC = "transactions_queue_size"


def unit_tests(rules_path: str) -> dict[str, Any]:
    """A promtool rules test file (JSON is YAML) for the rules at `rules_path`."""
    alerts = [{"eval_time": "5m", "alertname": name,
               "exp_alerts": [{"exp_labels": {"severity": severity, "instance": "b"},
                               "exp_annotations": {"summary": summary}}]}
              for name, (severity, summary) in QUEUE_ALERTS.items()]
    return {"rule_files": [str(Path(rules_path).resolve())], "evaluation_interval": "1m",
            "tests": [{"interval": "15s",
                       "input_series": [{"series": s, "values": v} for s, v in QUEUE_SERIES],
                       "alert_rule_test": alerts}]}


def structural(rules: list[dict[str, Any]]) -> None:
    """What holds without promtool: the fields, and no queue rule summing across hosts."""
    for rule in rules:
        assert {"alert", "expr", "labels"} <= rule.keys(), rule
        assert rule["labels"]["severity"] in ("critical", "warning"), rule
        expr = str(rule["expr"])
        if QUEUE_METRIC in expr:
            assert re.search(r"by \(instance\) \(" + QUEUE_METRIC, expr), \
                f"{rule['alert']}: the queue is summed over hosts, not per instance"
            assert "count by (instance)" in expr, \
                f"{rule['alert']}: capacity must grow with the workers of the instance"


def check(path: str) -> None:
    import yaml

    doc = yaml.safe_load(Path(path).read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    structural(rules)
    promtool = shutil.which("promtool")
    if not promtool:
        print(f"{path}: {len(rules)} rules parsed (promtool not installed)")
        return
    subprocess.run([promtool, "check", "rules", path], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        tests = Path(tmp) / "alerts_test.yml"
        tests.write_text(json.dumps(unit_tests(path)))
        subprocess.run([promtool, "test", "rules", str(tests)], check=True)


if __name__ == "__main__":
    check(sys.argv[1])
