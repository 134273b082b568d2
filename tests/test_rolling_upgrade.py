"""A rolling upgrade under load from the previous release (commit d3f739a, extracted with
`git archive` and run with this venv) to this checkout: no 5xx, no request lost, `kassa
verify` clean (bench/rolling_upgrade.py; its full-length figures are in docs/operations.md,
"A rolling upgrade")."""

from __future__ import annotations

from pathlib import Path

from bench.rolling_upgrade import rolling_upgrade

PREVIOUS_RELEASE = "d3f739a"


def test_a_rolling_upgrade_under_load_loses_nothing(tmp_path: Path) -> None:
    result = rolling_upgrade(tmp_path / "previous", PREVIOUS_RELEASE, settle_s=2.0, clients=4)
    assert result["ok"], result
    statuses = result["statuses"]
    assert isinstance(statuses, dict) and set(statuses) == {"201"}, result
    assert result["unanswered"] == 0 and result["answered_2xx_not_completed"] == 0, result
    assert result["verify_exit"] == 0, result
    status = result["migrate_status"]
    assert isinstance(status, list) and {line.split()[1] for line in status} == {"applied"}
