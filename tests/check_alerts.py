"""Check the alert rules: with Debian's promtool when it is installed (syntax, then the unit
tests below), else a structural parse; and that every alert's `runbook_url` points at its
own section of docs/operations.md.

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
from urllib.parse import urlsplit

# The queue alerts, evaluated by `promtool test rules`. Host a runs two workers holding
# 9,000 tasks together (45% of its 20,000): quiet. Host b runs one worker holding 8,500
# (85% of 10,000): both alerts. A rule that sums over workers or hosts and compares with
# one worker's capacity fires on a (and once, for both hosts together): the test fails.
QUEUE_SERIES = [
    ('kassa_executor_queued_tasks{job="kassa", instance="a"}', "9000x20"),
    ('kassa_executor_writers_busy_ratio{job="kassa", instance="a", pid="1"}', "0.5x20"),
    ('kassa_executor_writers_busy_ratio{job="kassa", instance="a", pid="2"}', "0.5x20"),
    ('kassa_executor_queued_tasks{job="kassa", instance="b"}', "8500x20"),
    ('kassa_executor_writers_busy_ratio{job="kassa", instance="b", pid="3"}', "0.9x20"),
]
QUEUE_ALERTS = {
    "KassaQueueNearlyFull": ("critical", "Processor queues on b above 80% of their capacity: "
                                         "503 overloaded is next"),
    "KassaQueueFilling": ("warning", "Processor queues on b above 50% of their capacity"),
}
QUEUE_METRIC = "kassa_executor_queued_tasks"
OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
RUNBOOK_PATH = "docs/operations.md"  # the URL's path ends so; the base may be rewritten


def unit_tests(rules_path: str, runbooks: dict[str, str]) -> dict[str, Any]:
    """A promtool rules test file (JSON is YAML) for the rules at `rules_path`, whose alerts
    carry the `runbooks` URLs (checked by `runbook_urls`; promtool compares every
    annotation)."""
    alerts = [{"eval_time": "5m", "alertname": name,
               "exp_alerts": [{"exp_labels": {"severity": severity, "instance": "b"},
                               "exp_annotations": {"summary": summary,
                                                   "runbook_url": runbooks[name]}}]}
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


def github_anchors(markdown: str) -> list[str]:
    """The anchors GitHub gives the headings of `markdown` (outside fenced code): the text
    in lower case, without punctuation but `-` and `_`, spaces as `-`, and `-1`, `-2`...
    after repeats (github-slugger, which GitHub's renderer follows)."""
    anchors: list[str] = []
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if re.match(r" {0,3}(```|~~~)", line):
            fenced = not fenced
            continue
        heading = None if fenced else re.match(r" {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.append(f"{slug}-{count}" if count else slug)
    return anchors


def runbook_urls(rules: list[dict[str, Any]], operations: str) -> dict[str, str]:
    """Each alert's `runbook_url`, after checking that it is the alert's own section of the
    operations document (`operations`, its Markdown): a URL whose path ends in
    docs/operations.md and whose anchor is that of a heading reading the alert's name."""
    anchors = set(github_anchors(operations))
    urls = {}
    for rule in rules:
        if "alert" not in rule:
            continue
        name = rule["alert"]
        url = (rule.get("annotations") or {}).get("runbook_url")
        assert isinstance(url, str) and url, f"{name}: no runbook_url annotation"
        parts = urlsplit(url)
        assert parts.path.endswith(RUNBOOK_PATH), f"{name}: {url} is not {RUNBOOK_PATH}"
        own = github_anchors(f"### {name}")[0]
        assert parts.fragment == own, f"{name}: {url} should point at #{own}, its section"
        assert own in anchors, f"{name}: {RUNBOOK_PATH} has no section #{own} (### {name})"
        urls[name] = url
    return urls


def check(path: str) -> None:
    import yaml

    doc = yaml.safe_load(Path(path).read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    structural(rules)
    runbooks = runbook_urls(rules, OPERATIONS.read_text())
    promtool = shutil.which("promtool")
    if not promtool:
        print(f"{path}: {len(rules)} rules parsed (promtool not installed)")
        return
    subprocess.run([promtool, "check", "rules", path], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        tests = Path(tmp) / "alerts_test.yml"
        tests.write_text(json.dumps(unit_tests(path, runbooks)))
        subprocess.run([promtool, "test", "rules", str(tests)], check=True)


if __name__ == "__main__":
    check(sys.argv[1])
