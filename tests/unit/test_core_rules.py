"""Pure rules: request validation, the batch decision, the status machine, the tracker."""

from __future__ import annotations

import pytest

from core.ledger.decide import decide_batch, prevalidate
from core.ledger.errors import InvalidRequest
from core.ledger.models import AccountSnapshot as Account
from core.ledger.status import COMPLETED, EXECUTING, FAILED, PROCESSING, can_move
from core.ledger.validation import normalize_transaction as tx
from core.pipeline.ports import JournalStatus
from core.pipeline.tracker import StatusTracker


def accounts(**balances: tuple[int, int | None]) -> dict[str, Account]:
    made = {k: Account(k, "USD", "active", b, limit) for k, (b, limit) in balances.items()}
    made["@world:USD"] = Account("@world:USD", "USD", "active", 0, None)
    return made


@pytest.mark.parametrize("kwargs", [
    {"type": "transfer", "currency": "USD", "amount": 0, "source": "a", "destination": "b"},
    {"type": "transfer", "currency": "USD", "amount": -5, "source": "a", "destination": "b"},
    {"type": "transfer", "currency": "USD", "amount": 2**53, "source": "a", "destination": "b"},
    {"type": "transfer", "currency": "usd", "amount": 1, "source": "a", "destination": "b"},
    {"type": "transfer", "currency": "US", "amount": 1, "source": "a", "destination": "b"},
    {"type": "transfer", "currency": "USD", "amount": 1, "source": "a", "destination": "a"},
    {"type": "transfer", "currency": "USD", "amount": 1, "source": "a"},
    {"type": "deposit", "currency": "USD", "amount": 1, "source": "a", "destination": "b"},
    {"type": "withdrawal", "currency": "USD", "amount": 1, "destination": "b"},
    {"type": "refund", "currency": "USD", "amount": 1, "source": "a", "destination": "b"},
    {"type": "transfer", "currency": "USD", "legs": []},
    {"type": "transfer", "currency": "USD", "legs": [("a", "b", 1)] * 65},
    {"type": "transfer", "currency": "USD", "amount": 1, "legs": [("a", "b", 1)]},
    {"type": "transfer", "currency": "USD", "amount": 1, "source": "a b", "destination": "b"},
    {"type": "transfer", "currency": "USD", "amount": 1, "source": "@world:EUR", "destination": "b"},
])
def test_invalid_requests_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidRequest):
        tx(**kwargs)


def test_every_form_becomes_legs() -> None:
    assert tx("deposit", "USD", amount=5, destination="a").legs == (("@world:USD", "a", 5),)
    assert tx("withdrawal", "USD", amount=5, source="a").legs == (("a", "@world:USD", 5),)
    multi = tx("transfer", "USD", legs=[("a", "b", 1), ("b", "c", 2)])
    assert multi.amount == 3 and multi.account_ids == ["a", "b", "c"]


def test_decision_fails_one_task_only_and_respects_overdraft() -> None:
    accts = accounts(a=(100, 0), b=(0, 50))
    tasks = [(1, "R1", tx("transfer", "USD", amount=60, source="a", destination="b")),
             (2, "R2", tx("transfer", "USD", amount=60, source="a", destination="b")),
             (3, "R3", tx("withdrawal", "USD", amount=110, source="b")),
             (4, "R4", tx("withdrawal", "USD", amount=1, source="b"))]
    decision = decide_batch(tasks, accts, "now")
    assert [o.status for o in decision.outcomes] == [COMPLETED, FAILED, COMPLETED, FAILED]
    assert decision.outcomes[1].error.code == "insufficient_funds"
    assert decision.balances == {"a": 40, "b": -50, "@world:USD": 110}
    assert len(decision.ledger_columns[0]) == 4


def test_multi_leg_posts_all_legs_or_none() -> None:
    accts = accounts(a=(10, 0), b=(0, 0), c=(0, 0))
    first = tx("transfer", "USD", legs=[("a", "b", 10), ("b", "c", 10)])
    second = tx("transfer", "USD", legs=[("c", "a", 5), ("a", "b", 5)])
    third = tx("transfer", "USD", legs=[("c", "a", 1), ("b", "c", 6)])  # b would end at -1
    decision = decide_batch([(1, "R1", first), (2, "R2", second), (3, "R3", third)], accts, "now")
    assert [o.status for o in decision.outcomes] == [COMPLETED, COMPLETED, FAILED]
    assert decision.balances == {"a": 0, "b": 5, "c": 5}
    assert [len(o.entries) for o in decision.outcomes] == [4, 4, 0]


def test_static_rules() -> None:
    accts = accounts(a=(10, 0))
    accts["e"] = Account("e", "EUR", "active", 0, 0)
    accts["l"] = Account("l", "USD", "locked", 0, 0)
    codes = [decide_batch([(1, "R", t)], accts, "now").outcomes[0].error.code for t in (
        tx("transfer", "USD", amount=1, source="a", destination="zz"),
        tx("transfer", "USD", amount=1, source="a", destination="e"),
        tx("transfer", "USD", amount=1, source="a", destination="l"))]
    assert codes == ["account_not_found", "currency_mismatch", "account_inactive"]
    assert prevalidate(tx("transfer", "USD", amount=11, source="a", destination="@world:USD"),
                       accts).code == "insufficient_funds"


def test_overflow_is_refused_not_wrapped() -> None:
    accts = accounts(a=(2**63 - 10, 0), b=(0, 0))
    decision = decide_batch([(1, "R", tx("deposit", "USD", amount=100, destination="a"))], accts, "now")
    assert decision.outcomes[0].error.code == "amount_overflow"


def test_status_machine_moves_forward_only() -> None:
    assert can_move(None, PROCESSING) and can_move(PROCESSING, EXECUTING)
    assert can_move(EXECUTING, COMPLETED) and can_move(PROCESSING, FAILED)
    assert not can_move(COMPLETED, PROCESSING) and not can_move(EXECUTING, PROCESSING)
    assert not can_move(FAILED, COMPLETED) and not can_move(COMPLETED, FAILED)


def test_tracker_keeps_final_statuses_and_bounds_memory() -> None:
    now = [0.0]
    tracker = StatusTracker(None, flush_interval_ms=1000, redis_ttl_s=60, memory_ttl_s=600,
                            entries_max=3, clock=lambda: now[0])
    tracker.finished([JournalStatus("R", COMPLETED, None, "t1")])
    assert tracker.get("R").status == COMPLETED
    assert tracker.get("P") is None, "an unknown receipt falls through to the chain"
    now[0] = 100.0
    tracker.finished([JournalStatus(c, FAILED, None, "t2") for c in ("A", "B", "C")])
    assert len(tracker) == 3 and tracker.get("R") is None, "past entries_max the oldest goes"
    now[0] = 750.0
    tracker.finished([JournalStatus("D", COMPLETED, None, "t3")])
    assert tracker.get("A") is None, "bounded again: the oldest went"
    assert tracker.cleanup() == 2 and len(tracker) == 1, "entries older than the TTL go"
    assert tracker.get("D") is not None
    with pytest.raises(AssertionError):
        tracker.finished([JournalStatus("E", PROCESSING, None, "t4")])


async def test_tracker_keeps_unsent_statuses_bounded_while_redis_is_down() -> None:
    class DownStore:
        async def write_statuses(self, records: list[JournalStatus], ttl_s: int) -> None:
            raise ConnectionError("down")

        async def read_status(self, receipt_code: str) -> JournalStatus | None:
            return None

    tracker = StatusTracker(DownStore(), flush_interval_ms=1000, redis_ttl_s=60,
                            memory_ttl_s=600, entries_max=2)
    for code in ("A", "B", "C"):
        tracker.finished([JournalStatus(code, COMPLETED, None, "t")])
        assert await tracker.flush() == 0
    assert tracker.dropped == 1 and len(tracker._dirty) == 2
