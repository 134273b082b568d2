"""The alert rules pass promtool's syntax check and the queue alerts' unit tests
(tests/check_alerts.py), so a queue rule comparing a sum with one worker's capacity fails;
every alert links its own section of docs/operations.md."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.check_alerts import OPERATIONS, check, github_anchors, runbook_urls, structural
from tests.test_dashboard import metric_names
from tests.unit.test_doc_metrics import defined_metrics, sample_names

pytestmark = pytest.mark.timeout(60)

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yml"


def test_the_alert_rules_pass_their_checks() -> None:
    check(str(RULES))


def test_every_metric_an_alert_names_is_one_kassa_exports() -> None:
    """A renamed metric breaks this test, not the alert (which would never fire)."""
    samples = sample_names(defined_metrics())
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    named = {name for rule in rules for name, _ in metric_names(str(rule["expr"]))}
    assert named and named <= samples.keys(), sorted(named - samples.keys())


def test_a_queue_rule_summed_over_every_host_is_refused() -> None:
    old = {"alert": "KassaQueueNearlyFull", "expr": "sum(kassa_executor_queued_tasks) > 8000",
           "labels": {"severity": "critical"}}
    with pytest.raises(AssertionError, match="summed over hosts"):
        structural([old])
    assert yaml.safe_load(RULES.read_text())["groups"]


def test_github_anchors_follow_githubs_rules() -> None:
    doc = ("# Operating Kassa\n## Health endpoints\n```\n# not a heading\n```\n"
           "### KassaOutboxLag\n## `kassa verify`\n## Backups, and restore!\n"
           "## Health endpoints ##\n#NotAHeading\n")
    assert github_anchors(doc) == ["operating-kassa", "health-endpoints", "kassaoutboxlag",
                                   "kassa-verify", "backups-and-restore", "health-endpoints-1"]


def test_every_alert_links_its_own_section_of_the_operations_document() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    urls = runbook_urls(rules, OPERATIONS.read_text())
    assert urls.keys() == {r["alert"] for r in rules}
    assert urls["KassaOutboxLag"] == "docs/operations.md#kassaoutboxlag"


@pytest.mark.parametrize(("url", "error"), [
    (None, "no runbook_url"),
    ("docs/operations.md#kassacircuitopen", "should point at #kassaoutboxlag"),
    ("docs/performance.md#kassaoutboxlag", "is not docs/operations.md"),
])
def test_a_missing_or_wrong_runbook_url_is_refused(url: str | None, error: str) -> None:
    annotations = {"summary": "lag"} | ({"runbook_url": url} if url else {})
    rule = {"alert": "KassaOutboxLag", "expr": "1", "labels": {"severity": "critical"},
            "annotations": annotations}
    with pytest.raises(AssertionError, match=error):
        runbook_urls([rule], OPERATIONS.read_text())


def test_a_runbook_url_needs_the_section_and_may_have_any_base() -> None:
    rule = {"alert": "KassaNew", "expr": "1", "labels": {"severity": "warning"},
            "annotations": {"runbook_url": "https://git.example.com/kassa/blob/v1/docs/operations.md#kassanew"}}
    with pytest.raises(AssertionError, match="has no section #kassanew"):
        runbook_urls([rule], OPERATIONS.read_text())
    assert runbook_urls([rule], "## Alerts\n### KassaNew\n") == {
        "KassaNew": "https://git.example.com/kassa/blob/v1/docs/operations.md#kassanew"}


needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed")


def promtool_alert_test(tmp_path: Path, alert: str, series: list[tuple[str, str]],
                        expected: dict[str, bool]) -> None:
    """`promtool test rules` on RULES: with `series` (one sample a minute), at each
    `eval_time` of `expected` the alert fires (True) or is quiet (False); firing, it carries
    its severity and annotations as alerts.yml gives them."""
    rule = next(r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
                if r.get("alert") == alert)
    fired = {"exp_labels": rule["labels"], "exp_annotations": rule["annotations"]}
    tests = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [{"eval_time": at, "alertname": alert,
                             "exp_alerts": [fired] if fires else []}
                            for at, fires in expected.items()]}]}
    path = tmp_path / "alert_test.yml"
    path.write_text(json.dumps(tests))
    result = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize(("alert", "gauge"), [("KassaNoOutboxRelay", "kassa_outbox_relay_leader"),
                                              ("KassaNoWebhookSender", "kassa_webhook_sender_leader")])
def test_a_no_leader_alert_fires_only_when_no_process_leads(tmp_path: Path, alert: str,
                                                           gauge: str) -> None:
    """Two instances; a's process leads (publishes, sends) for 5 minutes, then nobody does:
    quiet while one leads (the standbys' zeros do not count), firing 3 minutes after the
    last one."""
    series = [(f'{gauge}{{job="kassa", instance="a"}}', "1x5 0x20"),
              (f'{gauge}{{job="kassa", instance="b"}}', "0x25")]
    promtool_alert_test(tmp_path, alert, series,
                        {"5m": False, "8m": False, "9m": True, "20m": True})


@needs_promtool
def test_the_failure_rate_alert_fires_on_the_series_kassa_exports(tmp_path: Path) -> None:
    """On the series as Kassa exports them (at 0 from the start, failures also counted as
    kassa_transactions_total{status="failed"}): quiet while nothing fails, firing once
    failures stayed above 5% of final statuses for 5 minutes."""
    labels = 'job="kassa", instance="a", type="transfer"'
    series = [(f'kassa_transactions_total{{{labels}, status="completed"}}', "0+100x20"),
              (f'kassa_transactions_total{{{labels}, status="failed"}}', "0x5 10+10x15"),
              (f'kassa_transactions_failed_total{{{labels}}}', "0x5 10+10x15")]
    promtool_alert_test(tmp_path, "KassaHighFailureRate", series, {"5m": False, "15m": True})
