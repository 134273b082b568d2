"""PostCommit on the fakes: what follows a commit, and the bound of the effect queue."""

from __future__ import annotations

import logging
import time

import pytest

from core.kit.request_context import REQUEST_ID
from core.ledger.decide import decide_batch
from core.ledger.status import COMPLETED, FAILED
from core.pipeline.effects import PostCommit
from core.pipeline.executor import Executed
from core.pipeline.tasks import Task
from core.pipeline.tracker import StatusTracker
from server.process.logs import RequestIdFilter
from tests.fakes import (
    FakeAccountCache,
    FakeJournalStore,
    FakeNotifier,
    FakeStatusStore,
    RecordingObserver,
)
from tests.unit.conftest import PipelineFactory, pending, transfer


class Effects:
    def __init__(self) -> None:
        self.store = FakeJournalStore()
        self.store.add_account("alice", 100, contact={"email": "alice@example.com",
                                                      "phone": "+15550100"})
        self.store.add_account("bob", 0)
        self.status_store = FakeStatusStore()
        self.tracker = StatusTracker(self.status_store, flush_interval_ms=10, redis_ttl_s=60,
                                     memory_ttl_s=60)
        self.notifier = FakeNotifier()
        self.cache, self.observer = FakeAccountCache(self.store), RecordingObserver()
        self.wakes = 0
        self.post = PostCommit(tracker=self.tracker, notifier=self.notifier, balances_committed=self.cache.set_balances,
                               wake_relay=self.wake, observer=self.observer)

    def wake(self) -> None:
        self.wakes += 1

    def executed(self, *amounts: int) -> Executed:
        """A batch of transfers alice → bob as the executor decides it; task i was
        submitted by request `req-i`."""
        accounts = self.store.snapshots(["alice", "bob"])
        tasks = [Task(i, f"RCP-{i}", transfer(a), time.monotonic(), request_id=f"req-{i}")
                 for i, a in enumerate(amounts, 1)]
        decision = decide_batch([(t.journal_id, t.receipt_code, t.transaction) for t in tasks],
                                accounts, "2026-12-02T00:00:00Z")
        return Executed(tasks, decision.outcomes, accounts)


async def test_final_statuses_reach_the_tracker_and_then_the_status_store() -> None:
    e = Effects()
    await e.post(e.executed(30, 500))
    assert [e.tracker.get(c).status for c in ("RCP-1", "RCP-2")] == [COMPLETED, FAILED]  # type: ignore[union-attr]
    assert await e.tracker.flush() == 2
    assert e.status_store.records["RCP-2"].status == FAILED


async def test_each_contact_of_a_touched_account_is_notified() -> None:
    e = Effects()
    await e.post(e.executed(30))
    assert sorted((n.channel, n.recipient) for n in e.notifier.sent) == [
        ("email", "alice@example.com"), ("sms", "+15550100")]
    assert all(n.receipt_code == "RCP-1" and "completed" in n.subject for n in e.notifier.sent)


async def test_committed_balances_reach_the_account_cache() -> None:
    e = Effects()
    await e.cache.get_accounts(["alice", "bob"])  # cached at 100 and 0
    await e.post(e.executed(30, 20))
    assert {a: s.balance for a, s in e.cache.cached.items()} == {"alice": 50, "bob": 50}


async def test_the_relay_is_woken_only_when_something_finished() -> None:
    e = Effects()
    await e.post(Executed([], []))
    assert e.wakes == 0
    await e.post(e.executed(1))
    assert e.wakes == 1


async def test_the_observer_counts_outcomes_by_status_and_type() -> None:
    e = Effects()
    await e.post(e.executed(30, 500, 1))
    assert e.observer.finished_counts == {(COMPLETED, "transfer"): 2, (FAILED, "transfer"): 1}


async def test_a_full_effect_queue_drops_effects_and_the_commit_stands(
        make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(apply_at_accept=True, start=False, effect_queue_max=1)
    journals = [pending(transfer(1)), pending(transfer(1))]
    await p.pool.record(journals[:1])
    await p.pool.record(journals[1:])  # no effect worker runs: the queue holds one batch
    assert p.pool.effects_dropped == 1
    assert p.store.balance("bob") == 2
    assert not p.relay_wakes  # no effect ran


async def test_effects_of_a_pipeline_run_after_its_commit(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(apply_at_accept=True)
    journal = pending(transfer(1))
    await p.pool.record([journal])
    await p.drain()
    assert not p.receipts.registered  # the relay registers it (the receipts sink)
    assert p.tracker.get(journal.receipt_code) is not None
    assert len(p.relay_wakes) == 1


async def test_a_hold_and_a_void_go_through_every_effect() -> None:
    """`held` and `voided` outcomes carry no error: logging, counting and notifying them
    must not stop the batch's effects (a hold's effects once failed on an assert)."""
    import logging

    from core.ledger.decide import Outcome
    from core.ledger.linked import Target
    from core.ledger.models import Leg, Transaction
    from core.ledger.status import HELD, VOIDED

    e = Effects()
    hold = Transaction("transfer", "USD", (Leg("alice", "bob", 30),), hold_expires_in_s=60)
    void = Transaction("void", "USD", (Leg("alice", "bob", 30),), target="RCP-1")
    tasks = [Task(1, "RCP-1", hold, time.monotonic()), Task(2, "RCP-2", void, time.monotonic())]
    outcomes = [Outcome(1, "RCP-1", HELD, [], None, "2026-12-02T00:00:00Z"),
                Outcome(2, "RCP-2", VOIDED, [], None, "2026-12-02T00:00:00Z")]
    named = Target("RCP-1", 1, "transfer", VOIDED, hold.legs, is_hold=True, currency="USD")
    logging.getLogger("kassa.effects").setLevel(logging.INFO)
    await e.post(Executed(tasks, outcomes, e.store.snapshots(["alice", "bob"]), [], [named]))
    assert e.tracker.get("RCP-1").status == VOIDED  # type: ignore[union-attr]  # the hold, ended
    assert e.tracker.get("RCP-2").status == VOIDED  # type: ignore[union-attr]
    # Counted when final only: `held` is not (its capture or void is counted then).
    assert e.observer.finished_counts == {(VOIDED, "void"): 1}
    assert len(e.notifier.sent) >= 2  # alice's contact hears of both


async def test_each_outcome_line_is_written_under_its_requests_id(
        caplog: pytest.LogCaptureFixture) -> None:
    """The effect worker serves no request: each line names the request that submitted the
    transaction (kept on its Task), and the worker's own id is left as it was."""
    caplog.set_level(logging.INFO, logger="kassa.effects")
    caplog.handler.addFilter(RequestIdFilter())
    e = Effects()
    await e.post(e.executed(30, 500))
    assert [(r.request_id, r.getMessage().split(" | ")[0]) for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "kassa.effects"] == [
        ("req-1", "[TRANSACTION SUCCESS] Receipt: RCP-1"),
        ("req-2", "[TRANSACTION ERROR] Receipt: RCP-2")]
    assert REQUEST_ID.get() == "-"


async def test_a_recovered_journal_is_logged_outside_any_request(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kassa.effects")
    caplog.handler.addFilter(RequestIdFilter())
    e = Effects()
    executed = e.executed(30)
    executed.tasks[0].request_id = "-"  # as recovery queues it: no request submitted it here
    await e.post(executed)
    assert [r.request_id for r in caplog.records] == ["-"]  # type: ignore[attr-defined]
