"""TransactionService on the fakes: what a submission records, answers and refuses."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from core.kit.request_context import REQUEST_ID
from core.ledger.decide import Outcome
from core.ledger.errors import (
    AccountInactive,
    AccountNotFound,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InsufficientFunds,
    Overloaded,
    Unavailable,
)
from core.ledger.models import AccountSnapshot, ErrorBody
from core.ledger.money import MESSAGES
from core.ledger.status import COMPLETED, FAILED, PROCESSING
from core.pipeline.submission import Accepted, Finished, Replayed
from server.process.logs import RequestIdFilter
from tests.unit.conftest import PipelineFactory, deposit, submission, transfer

T = TypeVar("T")


def finished(answer: object) -> Outcome:
    """The outcome of an answer that must have finished while the client waited."""
    assert isinstance(answer, Finished), answer
    return answer.outcome


async def test_submit_records_the_journal_before_answering(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False)  # no writer: the journal stays as recorded
    answer = await p.service.submit(submission(transfer(30)))
    assert isinstance(answer, Accepted) and not answer.replayed
    assert p.store.journal(answer.receipt_code).status == PROCESSING
    assert p.store.balance("alice") == 100


async def test_an_accepted_transaction_is_executed_by_a_writer(make_pipeline: PipelineFactory
                                                               ) -> None:
    p = await make_pipeline()
    answer = await p.service.submit(submission(transfer(30)))
    await p.drain()
    assert p.store.journal(answer.receipt_code).status == COMPLETED
    assert (p.store.balance("alice"), p.store.balance("bob")) == (70, 30)


async def test_wait_answers_with_the_outcome(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    answer = await p.service.submit(submission(transfer(30), wait=True))
    assert finished(answer).status == COMPLETED
    assert [(e.account, e.balance_after) for e in finished(answer).entries] == [("alice", 70),
                                                                               ("bob", 30)]
    assert answer.transaction == transfer(30)


async def test_wait_times_out_into_an_accepted_answer(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False, wait_timeout_s=0)
    answer = await p.service.submit(submission(transfer(30), wait=True))
    assert isinstance(answer, Accepted)
    assert p.store.journal(answer.receipt_code).status == PROCESSING


async def test_apply_at_accept_finishes_in_the_accept_commit(make_pipeline: PipelineFactory
                                                            ) -> None:
    p = await make_pipeline(apply_at_accept=True, start=False)
    answer = await p.service.submit(submission(transfer(30), wait=True))
    assert finished(answer).status == COMPLETED
    row = p.store.journal(answer.receipt_code)
    assert row.recorded_finished and row.status == COMPLETED
    assert p.pool.room == 100  # nothing queued, the reservation released


async def test_a_replay_returns_the_first_receipt_from_the_cache(make_pipeline: PipelineFactory
                                                                ) -> None:
    p = await make_pipeline()
    first = await p.service.submit(submission(transfer(10), key="k1"))
    again = await p.service.submit(submission(transfer(10), key="k1"))
    assert isinstance(again, Accepted) and again.replayed
    assert again.receipt_code == first.receipt_code
    assert again.processing_time == first.processing_time
    await p.drain()
    assert len(p.store.journals) == 1 and p.store.balance("alice") == 90


async def test_a_replay_without_the_cache_is_found_by_the_journal_key(
        make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(idempotency=False)
    first = await p.service.submit(submission(transfer(10), key="k1"))
    again = await p.service.submit(submission(transfer(10), key="k1"))
    assert again.replayed and again.receipt_code == first.receipt_code
    await p.drain()
    assert len(p.store.journals) == 1 and p.store.balance("alice") == 90


async def test_a_repeat_the_state_would_refuse_now_is_still_a_replay(
        make_pipeline: PipelineFactory) -> None:
    """Redis lacks the key's answer (its first process died before caching it, or Redis
    was down): the repeat is pre-validated against a state in which the first request
    spent the funds, and the account is locked since. It is answered as the first request
    was, not refused (tests/sim found the 409/422 to a repeat of an applied request)."""
    p = await make_pipeline(idempotency=False)
    first = await p.service.submit(submission(transfer(100), key="k1"))
    await p.drain()
    assert p.store.balance("alice") == 0
    again = await p.service.submit(submission(transfer(100), key="k1"))
    assert again.replayed and again.receipt_code == first.receipt_code
    locked = p.store.accounts["alice"]
    p.store.accounts["alice"] = AccountSnapshot(locked.id, locked.currency, "locked",
                                                locked.balance, locked.overdraft_limit)
    p.cache.cached.clear()
    again = await p.service.submit(submission(transfer(100), key="k1"))
    assert again.replayed and again.receipt_code == first.receipt_code
    with pytest.raises(AccountInactive):  # a new key: refused
        await p.service.submit(submission(transfer(100), key="k2"))
    assert len(p.store.journals) == 1 and p.store.balance("bob") == 100


async def test_a_key_reused_with_another_body_is_refused(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    await p.service.submit(submission(transfer(10), key="k1", request_hash="a"))
    with pytest.raises(IdempotencyKeyReused):
        await p.service.submit(submission(transfer(20), key="k1", request_hash="b"))
    assert len(p.store.journals) == 1


async def test_a_key_reused_with_another_body_is_refused_by_the_journals(
        make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(idempotency=False)
    await p.service.submit(submission(transfer(10), key="k1", request_hash="a"))
    with pytest.raises(IdempotencyKeyReused):
        await p.service.submit(submission(transfer(20), key="k1", request_hash="b"))
    assert len(p.store.journals) == 1


async def test_a_key_being_accepted_elsewhere_is_in_progress(make_pipeline: PipelineFactory
                                                            ) -> None:
    p = await make_pipeline()
    assert await p.idempotency.begin("scope", "k1", "hash-k1") is None  # another request
    with pytest.raises(IdempotencyInProgress):
        await p.service.submit(submission(transfer(10), key="k1"))
    assert not p.store.journals


async def test_the_cache_down_leaves_idempotency_to_the_journals(make_pipeline: PipelineFactory
                                                                ) -> None:
    p = await make_pipeline()
    p.idempotency.down = True
    first = await p.service.submit(submission(transfer(10), key="k1"))
    again = await p.service.submit(submission(transfer(10), key="k1"))
    assert again.replayed and again.receipt_code == first.receipt_code
    assert len(p.store.journals) == 1


async def test_an_unknown_account_is_refused_before_anything_is_written(
        make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    with pytest.raises(AccountNotFound):
        await p.service.submit(submission(transfer(10, destination="nobody")))
    assert not p.store.journals and not p.receipts.issued
    assert p.observer.refusals == ["account_not_found"]


async def test_insufficient_funds_is_refused_on_the_fresh_view(make_pipeline: PipelineFactory
                                                              ) -> None:
    p = await make_pipeline()
    with pytest.raises(InsufficientFunds):
        await p.service.submit(submission(transfer(101)))
    assert p.cache.fresh_reads == 1 and not p.store.journals


async def test_a_stale_low_cached_balance_does_not_refuse(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    p.cache.stale(AccountSnapshot("alice", "USD", "active", 0, 0))  # the cache missed a credit
    answer = await p.service.submit(submission(transfer(60), wait=True))
    assert finished(answer).status == COMPLETED
    assert p.store.balance("alice") == 40


async def test_a_stale_high_cached_balance_fails_at_execution_not_below_the_floor(
        make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    p.cache.stale(AccountSnapshot("alice", "USD", "active", 1000, 0))
    answer = await p.service.submit(submission(transfer(500), wait=True))
    assert finished(answer).status == FAILED
    assert finished(answer).error == ErrorBody("insufficient_funds", MESSAGES["insufficient_funds"],
                                               "alice")
    assert p.store.balance("alice") == 100


async def test_a_full_queue_refuses_before_anything_is_written(make_pipeline: PipelineFactory
                                                              ) -> None:
    p = await make_pipeline(start=False, queue_size_max=2)
    for _ in range(2):
        await p.service.submit(submission(transfer(1)))
    with pytest.raises(Overloaded):
        await p.service.submit(submission(transfer(1)))
    assert len(p.store.journals) == 2 and len(p.receipts.issued) == 2


async def test_receipt_source_down_refuses_and_releases_the_room(make_pipeline: PipelineFactory
                                                                ) -> None:
    p = await make_pipeline(start=False)
    p.receipts.down = True
    with pytest.raises(Unavailable):
        await p.service.submit(submission(transfer(1)))
    assert p.pool.room == 100 and not p.store.journals


async def test_database_down_abandons_the_idempotency_key(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    p.store.down = True
    with pytest.raises(Unavailable):
        await p.service.submit(submission(transfer(1), key="k1"))
    assert p.idempotency.abandoned == [("scope", "k1")]
    assert p.pool.room == 100
    p.store.down = False
    answer = await p.service.submit(submission(transfer(1), key="k1"))
    assert not answer.replayed


async def test_a_completed_key_remembers_its_receipt(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    answer = await p.service.submit(submission(transfer(1), key="k1"))
    record = p.idempotency.records[("scope", "k1")]
    assert record.receipt_code == answer.receipt_code and record.mode == "async"


async def test_submit_many_answers_each_item_in_order(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    subs = [submission(transfer(10)), submission(transfer(10, destination="nobody")),
            submission(deposit(5, destination="bob"), key="k1"), submission(transfer(10))]
    accounts = await p.service.view_accounts([a for s in subs for a in s.transaction.account_ids])
    answers = await p.service.submit_many(subs, accounts)
    assert isinstance(answers[1], AccountNotFound)
    codes = [a.receipt_code for a in answers if not isinstance(a, Exception)]
    assert len(codes) == 3 and len(set(codes)) == 3
    await p.drain()
    assert all(p.store.journal(c).status == COMPLETED for c in codes)
    assert (p.store.balance("alice"), p.store.balance("bob")) == (80, 25)


async def test_submit_many_replays_a_keyed_item(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    first = await p.service.submit(submission(transfer(10), key="k1"))
    subs = [submission(transfer(10), key="k1"), submission(transfer(5))]
    answers = await p.service.submit_many(subs, await p.service.view_accounts(["alice", "bob"]))
    assert not isinstance(answers[0], Exception) and answers[0].replayed
    assert answers[0].receipt_code == first.receipt_code
    assert not isinstance(answers[1], Exception) and not answers[1].replayed


async def test_submit_many_over_capacity_refuses_the_plain_items(make_pipeline: PipelineFactory
                                                                ) -> None:
    p = await make_pipeline(start=False, queue_size_max=1)
    subs = [submission(transfer(1)), submission(transfer(1))]
    answers = await p.service.submit_many(subs, await p.service.view_accounts(["alice", "bob"]))
    assert all(isinstance(a, Overloaded) for a in answers)
    assert not p.store.journals


async def test_submit_many_waits_for_the_outcomes(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    subs = [submission(transfer(60), wait=True), submission(transfer(60), wait=True)]
    answers = await p.service.submit_many(subs, await p.service.view_accounts(["alice", "bob"]))
    statuses = sorted(finished(a).status for a in answers)
    assert statuses == [COMPLETED, FAILED]
    assert p.store.balance("alice") == 40


async def test_submit_many_answers_items_still_running_at_the_timeout_as_accepted(
        make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(start=False, wait_timeout_s=0)  # no writer runs them
    subs = [submission(transfer(10), wait=True), submission(transfer(10)),
            submission(transfer(10), wait=True)]
    answers = await p.service.submit_many(subs, await p.service.view_accounts(["alice", "bob"]))
    assert [type(a) for a in answers] == [Accepted] * 3
    assert all(p.store.journal(a.receipt_code).status == PROCESSING for a in answers
               if isinstance(a, Accepted))
    assert p.pool.backlog == 3 and p.pool.room == 97  # queued, the reservation used


async def test_a_replay_of_a_waited_request_is_answered_from_the_journal(
        make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    first = await p.service.submit(submission(transfer(10), key="k1", wait=True))
    again = await p.service.submit(submission(transfer(10), key="k1", wait=True))
    assert isinstance(again, Replayed) and again.receipt_code == first.receipt_code
    assert p.store.balance("alice") == 90


async def test_concurrent_debits_never_pass_the_overdraft_limit(make_pipeline: PipelineFactory
                                                               ) -> None:
    p = await make_pipeline(batch_max=4)
    subs = [submission(transfer(20, source="carol"), wait=True) for _ in range(6)]
    answers = await asyncio.gather(*(p.service.submit(s) for s in subs))
    statuses = [finished(a).status for a in answers]
    assert statuses.count(COMPLETED) == 2 and statuses.count(FAILED) == 4
    assert (p.store.balance("carol"), p.store.balance("bob")) == (-40, 40)


# ---- log lines a person can follow: START before the outcome, under the request's id ----

Lines = Callable[[], list[tuple[str, str]]]


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Lines:
    """The [TRANSACTION ...] lines as written: (request id, message), the id as the log
    handler's RequestIdFilter stamps it (server/process/logs.py)."""
    caplog.set_level(logging.INFO, logger="kassa")
    caplog.handler.addFilter(RequestIdFilter())
    return lambda: [(r.request_id, r.getMessage()) for r in caplog.records  # type: ignore[attr-defined]
                    if r.getMessage().startswith("[TRANSACTION ")]


async def as_request(request_id: str, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` as server/http/hot.py runs a request: in its own task, under its id (the
    pool's writers and effect workers were started outside any request)."""
    context = contextvars.copy_context()
    context.run(REQUEST_ID.set, request_id)
    return await asyncio.create_task(work, context=context)


def start(code: str) -> str:
    return f"[TRANSACTION START] Receipt: {code} | Type: transfer | Amount: 30 | Accounts: 2"


def success(message: str, code: str) -> bool:
    return re.fullmatch(rf"\[TRANSACTION SUCCESS\] Receipt: {code} \| Journal ID: \d+ \| "
                        r"Status: completed \| Duration: [\d.]+ms", message) is not None


@pytest.mark.parametrize("wait", [True, False], ids=["wait", "async"])
@pytest.mark.parametrize("apply_at_accept", [True, False], ids=["apply", "queue"])
async def test_start_comes_before_the_outcome_both_under_the_request_id(
        make_pipeline: PipelineFactory, lines: Lines, apply_at_accept: bool, wait: bool) -> None:
    """Applied in the accept commit, the outcome is logged by an effect worker as soon as
    the commit returns, maybe before the request's coroutine resumes: START is written
    before the journal is submitted, and the outcome line under the id kept on the journal."""
    p = await make_pipeline(apply_at_accept=apply_at_accept)
    answer = await as_request("req-1", p.service.submit(submission(transfer(30), wait=wait)))
    await p.drain()
    code = answer.receipt_code
    executing = [] if apply_at_accept else [f"[TRANSACTION EXECUTING] Worker: 0 | Receipt: {code}"]
    assert {rid for rid, _ in lines()} == {"req-1"}, lines()
    messages = [message for _, message in lines()]
    assert messages[:-1] == [start(code), *executing] and success(messages[-1], code), messages
    assert REQUEST_ID.get() == "-"


async def test_concurrent_requests_each_have_their_lines_under_their_own_id(
        make_pipeline: PipelineFactory, lines: Lines) -> None:
    """Two requests applied in one writer batch: each outcome line under its own request."""
    p = await make_pipeline(start=False)  # queued until the writer starts: one batch
    answers = await asyncio.gather(*(as_request(f"req-{n}", p.service.submit(
        submission(transfer(30)))) for n in (1, 2)))
    p.pool.start()
    await p.drain()
    for n, answer in enumerate(answers, 1):
        mine = [message for rid, message in lines() if rid == f"req-{n}"]
        assert len(mine) == 3 and mine[0] == start(answer.receipt_code), lines()
        assert mine[1] == f"[TRANSACTION EXECUTING] Worker: 0 | Receipt: {answer.receipt_code}"
        assert success(mine[2], answer.receipt_code), lines()


@pytest.mark.parametrize("apply_at_accept", [True, False], ids=["apply", "queue"])
async def test_each_item_of_a_batch_request_is_logged_under_its_id(
        make_pipeline: PipelineFactory, lines: Lines, apply_at_accept: bool) -> None:
    p = await make_pipeline(apply_at_accept=apply_at_accept)
    subs = [submission(transfer(30), wait=True), submission(transfer(30, destination="nobody")),
            submission(transfer(30), key="k1"), submission(transfer(30))]
    accounts = await p.service.view_accounts([a for s in subs for a in s.transaction.account_ids])
    answers = await as_request("req-b", p.service.submit_many(subs, accounts))
    await p.drain()
    assert {rid for rid, _ in lines()} == {"req-b"}, lines()
    messages = [message for _, message in lines()]
    for answer in answers:
        if isinstance(answer, Exception):
            continue
        mine = [m for m in messages if f"Receipt: {answer.receipt_code}" in m
                and "EXECUTING" not in m]
        assert len(mine) == 2 and mine[0] == start(answer.receipt_code), messages
        assert success(mine[1], answer.receipt_code), messages
    assert ("[TRANSACTION REFUSED] Type: transfer | Amount: 30 | Accounts: 2 | "
            "Error: account_not_found") in messages


@pytest.mark.parametrize("wait", [True, False], ids=["wait", "async"])
async def test_a_refused_request_logs_one_refusal_under_its_id(
        make_pipeline: PipelineFactory, lines: Lines, wait: bool) -> None:
    p = await make_pipeline()
    with pytest.raises(InsufficientFunds):
        await as_request("req-poor", p.service.submit(submission(transfer(101), wait=wait)))
    assert lines() == [("req-poor", "[TRANSACTION REFUSED] Type: transfer | Amount: 101 | "
                                     "Accounts: 2 | Error: insufficient_funds")]


async def test_a_key_reused_with_another_request_logs_a_refusal(
        make_pipeline: PipelineFactory, lines: Lines) -> None:
    p = await make_pipeline()
    await p.service.submit(submission(transfer(30), key="k1", request_hash="a"))
    with pytest.raises(IdempotencyKeyReused):
        await as_request("req-2", p.service.submit(
            submission(transfer(30), key="k1", request_hash="b")))
    assert [line for line in lines() if line[0] == "req-2"] == [
        ("req-2", "[TRANSACTION REFUSED] Type: transfer | Amount: 30 | Accounts: 2 | "
                  "Error: idempotency_key_reused")]


async def test_a_replay_found_by_the_cache_logs_the_receipt_it_answers_with(
        make_pipeline: PipelineFactory, lines: Lines) -> None:
    p = await make_pipeline()
    first = await as_request("req-1", p.service.submit(submission(transfer(30), key="k1")))
    await as_request("req-2", p.service.submit(submission(transfer(30), key="k1")))
    await p.drain()
    mine = [message for rid, message in lines() if rid == "req-2"]
    assert mine == [f"[TRANSACTION REPLAY] Receipt: {first.receipt_code}"], lines()


@pytest.mark.parametrize("apply_at_accept", [True, False], ids=["apply", "queue"])
async def test_a_replay_found_by_the_journals_names_its_unused_code(
        make_pipeline: PipelineFactory, lines: Lines, apply_at_accept: bool) -> None:
    """Without the cache, a repeat takes a code and logs START before the database finds its
    key: its REPLAY line says which receipt answers it and that this code stays unused."""
    p = await make_pipeline(idempotency=False, apply_at_accept=apply_at_accept)
    first = await as_request("req-1", p.service.submit(submission(transfer(30), key="k1")))
    again = await as_request("req-2", p.service.submit(submission(transfer(30), key="k1")))
    await p.drain()
    assert again.replayed and again.receipt_code == first.receipt_code
    mine = [message for rid, message in lines() if rid == "req-2"]
    assert len(mine) == 2 and mine[0].startswith("[TRANSACTION START] Receipt: "), lines()
    unused = mine[0].split()[3]
    assert unused != first.receipt_code
    assert mine[1] == f"[TRANSACTION REPLAY] Receipt: {first.receipt_code} | Unused: {unused}"
    assert [rid for rid, message in lines() if unused in message] == ["req-2", "req-2"]


async def test_a_journal_not_recorded_after_its_start_logs_the_error(
        make_pipeline: PipelineFactory, lines: Lines) -> None:
    p = await make_pipeline()
    await p.cache.get_accounts(["alice", "bob"])  # pre-validation passes on the cached view
    p.store.down = True
    with pytest.raises(Unavailable):
        await as_request("req-1", p.service.submit(submission(transfer(30))))
    (rid, started), (rid2, error) = lines()
    code = started.split()[3]
    assert (rid, rid2) == ("req-1", "req-1") and started == start(code)
    assert error == f"[TRANSACTION ERROR] Receipt: {code} | Error: unavailable"


async def test_a_batch_the_journal_batcher_refuses_answers_and_logs_each_item(
        make_pipeline: PipelineFactory, lines: Lines) -> None:
    p = await make_pipeline()
    await p.batcher.close()  # it refuses whole groups from now on
    subs = [submission(transfer(1)), submission(transfer(2))]
    accounts = await p.service.view_accounts(["alice", "bob"])
    answers = await as_request("req-c", p.service.submit_many(subs, accounts))
    assert [type(a) for a in answers] == [Overloaded, Overloaded]
    assert p.pool.room == 100 and not p.store.journals
    messages = [m for _, m in lines()]
    assert len([m for m in messages if m.startswith("[TRANSACTION START]")]) == 2, messages
    assert len([m for m in messages if m.startswith("[TRANSACTION ERROR]")]) == 2, messages
