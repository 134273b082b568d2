"""Check the alert rules: with Debian's promtool when it is installed, else a structural parse.

Run as `python -m tests.check_alerts deploy/prometheus/alerts.yml` (make lint does).
"""

from __future__ import annotations

import shutil
import subprocess
import sys


def check(path: str) -> None:
    promtool = shutil.which("promtool")
    if promtool:
        subprocess.run([promtool, "check", "rules", path], check=True)
        return
    import yaml  # only without promtool

    doc = yaml.safe_load(open(path))
    rules = [r for g in doc["groups"] for r in g["rules"]]
    for rule in rules:
        assert {"alert", "expr", "labels"} <= rule.keys(), rule
        assert rule["labels"]["severity"] in ("critical", "warning"), rule
    print(f"{path}: {len(rules)} rules parsed (promtool not installed)")


if __name__ == "__main__":
    check(sys.argv[1])
