"""The simulator itself: a seed's run is the same every time, a calm seed passes every
check, and a bug re-introduced into core is found (so the checks can fail)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import core.pipeline.pool as pool
from core.ledger.errors import Unavailable
from tests.sim.checks import invariants
from tests.sim.run import run_seed
from tests.sim.store import SimStore

LOST_ACK_SEED = 5  # the first seed that finds it (docs/simulation.md, "Bugs it finds")


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def test_a_seed_reproduces_its_schedule_and_answers_byte_for_byte() -> None:
    """In fresh interpreters (as `make sim SEED=…` runs it): the same output twice."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = [sys.executable, "-m", "tests.sim", "--seed", "3", "--ops", "120"]
    root = Path(__file__).resolve().parents[2]
    runs = [subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                           cwd=root) for _ in range(2)]
    assert runs[0].stdout == runs[1].stdout and "schedule" in runs[0].stdout
    assert runs[0].returncode == 0, runs[0].stdout


def test_seeds_pass_every_check() -> None:
    for seed in range(4):
        result = run_seed(seed, 200)
        assert result.violations == [], (seed, result.violations[:5])
        assert result.ops >= 200 and result.journals > 0


def test_a_reintroduced_lost_ack_bug_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commit d045eff's bug, as core saw it: a COMMIT whose acknowledgement was lost
    answered Unavailable (503, not recorded) without looking whether it landed. The
    client history must show a request told "not accepted" whose journal exists."""

    async def unchecked(store, journals, lost, timeout_s):  # type: ignore[no-untyped-def]
        raise Unavailable("the database is unavailable") from lost

    monkeypatch.setattr(pool, "landed", unchecked)
    found = run_seed(LOST_ACK_SEED, 200).violations
    assert any("told not applied, but journal" in v for v in found), found[:5]


def test_verify_rules_report_a_planted_violation() -> None:
    store = SimStore(lambda: 0.0, lease_s=10)
    store.add_account("a", 5)
    store.add_account("@world:USD", -5, overdraft_limit=None)
    opening = {"a": 5, "@world:USD": -5}
    assert invariants(store, opening, quiescent=True) == []
    store.add_account("a", 6, held=2)  # a balance no entry explains, a hold nobody made
    assert set(invariants(store, opening, quiescent=True)) == {
        "balance of a is not the sum of its entries", "USD balances sum to 1",
        "held of a is 2, its pending holds 0"}
