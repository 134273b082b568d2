"""The alert rules pass promtool's syntax check and the queue alerts' unit tests
(tests/check_alerts.py), so a queue rule comparing a sum with one worker's capacity fails."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.check_alerts import check, structural

pytestmark = pytest.mark.timeout(60)

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yml"


def test_the_alert_rules_pass_their_checks() -> None:
    check(str(RULES))


def test_a_queue_rule_summed_over_every_host_is_refused() -> None:
    old = {"alert": "KassaQueueNearlyFull", "expr": "sum(transactions_queue_size) > 8000",
           "labels": {"severity": "critical"}}
    with pytest.raises(AssertionError, match="summed over hosts"):
        structural([old])
    assert yaml.safe_load(RULES.read_text())["groups"]
