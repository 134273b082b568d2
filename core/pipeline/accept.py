"""Accepting a transaction: the flow of docs/design.md, up to the durable accept (and waiting for the outcome).

validate (done by the caller) → idempotency → pre-validate on the cached view →
reserve queue room (`with pool.admission(n) as room`, given back on every way out but
`room.put`) → receipt code → durable journal (group commit) → queue → answer.
A 202 is given only after the journal is committed; a full queue refuses before
anything is written.

Log lines at info, under the request's X-Request-Id: `[TRANSACTION START]` once the receipt
code is known and before the journal is submitted, so it precedes the outcome line whoever
writes that (core/pipeline/effects.py, on the id kept on the journal and its Task). A
request that gets no outcome line gets one of its own: `[TRANSACTION REPLAY]` (a repeat of
an Idempotency-Key: the receipt it is answered with, and the code its START named, unused),
`[TRANSACTION REFUSED]` (refused by the ledger's rules or the key's first request) or
`[TRANSACTION ERROR]` (not recorded after its START). A 503 before a receipt code (queue
full, receipt source down) logs only the rate-limited markers of its cause: shedding load
costs no line per request. None of these lines is on the path of an accepted transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from core.kit.batcher import Batcher
from core.kit.request_context import REQUEST_ID, TRACEPARENT
from core.kit.spans import NO_SPANS, Spans
from core.ledger.decide import Outcome, prevalidate
from core.ledger.errors import (
    AmountOverflow,
    IdempotencyKeyReused,
    InsufficientFunds,
    KassaError,
    Overloaded,
    Unavailable,
)
from core.ledger.models import AccountSnapshot, Transaction
from core.pipeline.idempotency import IdempotencyGate, replay_of_journal
from core.pipeline.observer import NullObserver, Observer
from core.pipeline.pool import Admission, ProcessorPool
from core.pipeline.ports import (
    AccountReader,
    ExistingJournal,
    IdempotencyCache,
    PendingJournal,
    ReceiptSource,
    RecordedKeys,
)
from core.pipeline.submission import (
    Accepted,
    Finished,
    Replayed,
    Submission,
    Submitted,
    format_ms,
)
from core.pipeline.tasks import Task

log = logging.getLogger("kassa.accept")
Recorded = int | ExistingJournal | Outcome  # what the journal batcher answers an item
# Refusals that depend on balances or `held`, which the cached view may show stale: each is
# confirmed by a fresh read before it is answered.
STALE_REFUSALS = (InsufficientFunds, AmountOverflow)


class TransactionService:
    def __init__(
        self,
        *,
        journals: Batcher[PendingJournal, Recorded],
        receipts: ReceiptSource,
        accounts: AccountReader,
        pool: ProcessorPool,
        idempotency: IdempotencyCache | None,
        owner: str,
        wait_timeout_s: float,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
        spans: Spans = NO_SPANS,
        recorded_keys: RecordedKeys | None = None,
    ) -> None:
        self._journals = journals
        self._receipts = receipts
        self._accounts = accounts
        self._pool = pool
        self._idem = IdempotencyGate(idempotency) if idempotency is not None else None
        self._owner = owner
        self._wait_timeout_s = wait_timeout_s
        self._observer = observer or NullObserver()
        self._clock = clock
        self._spans = spans
        self._recorded_keys = recorded_keys  # read before refusing a keyed request early

    async def view_accounts(self, account_ids: list[str]) -> dict[str, AccountSnapshot]:
        """One read for many submissions (the batch endpoint), passed back to `submit`."""
        return await self._accounts.get_accounts(sorted(set(account_ids)))

    async def submit(self, sub: Submission,
                     accounts: dict[str, AccountSnapshot] | None = None) -> Submitted:
        started = self._clock()
        owned = False
        if sub.idempotency_key is not None and self._idem is not None and sub.cached_key:
            try:
                replay, owned = await self._idem.begin(sub)
            except KassaError as exc:  # the key's first request differs or is in flight
                _log_refused(exc, sub.transaction)
                raise
            if replay is not None:
                _log_replay(replay.receipt_code, None)
                return replay
        try:
            accepted = await self._accept(sub, started, accounts)
        except BaseException:
            if owned:
                assert self._idem is not None
                await self._idem.abandon(sub)
            raise
        if isinstance(accepted, Accepted | Replayed):
            return accepted
        code, processing_time, done = accepted
        if owned:
            assert self._idem is not None
            await self._idem.remember(sub, code, processing_time)
        if not sub.wait:
            return Accepted(code, processing_time)
        if isinstance(done, Outcome):
            return _finished(code, processing_time, done, sub.transaction)
        return await self._wait(done, processing_time)

    async def submit_many(self, subs: list[Submission], accounts: dict[str, AccountSnapshot]
                          ) -> list[Submitted | KassaError]:
        """The items of one batch request, each answered on its own. Items with an
        Idempotency-Key go one by one (each may replay); the others are checked, coded and
        recorded together: one reservation, one block of codes, one group commit."""
        keyed = [i for i, s in enumerate(subs) if s.idempotency_key is not None]
        plain = [i for i, s in enumerate(subs) if s.idempotency_key is None]
        plain_answers, keyed_answers = await asyncio.gather(
            self._accept_plain([subs[i] for i in plain], accounts),
            asyncio.gather(*(self._submit_or_error(subs[i], accounts) for i in keyed)))
        results: list[Submitted | KassaError | None] = [None] * len(subs)
        for i, answer in [*zip(plain, plain_answers, strict=True),
                          *zip(keyed, keyed_answers, strict=True)]:
            results[i] = answer
        return [r for r in results if r is not None]

    async def _submit_or_error(self, sub: Submission, accounts: dict[str, AccountSnapshot]
                               ) -> Submitted | KassaError:
        try:
            return await self.submit(sub, accounts)
        except KassaError as exc:
            return exc
        except Exception:  # noqa: BLE001 - a defect, logged; the other items stand
            log.exception("a batch item failed unexpectedly")
            return Unavailable("the transaction could not be recorded", retry_after_s=1)

    async def _accept_plain(self, subs: list[Submission], accounts: dict[str, AccountSnapshot]
                            ) -> list[Submitted | KassaError]:
        if not subs:
            return []
        started = self._clock()
        refusals = await self._check_many(subs, accounts)
        ok = [i for i, refusal in enumerate(refusals) if refusal is None]
        answers: list[Submitted | KassaError | Task | None] = list(refusals)
        try:
            room = self._pool.admission(len(ok))
        except Overloaded as exc:
            return [exc if r is None else r for r in refusals]
        with room, self._spans.step("kassa.admission"):
            try:
                codes = await self._receipts.next_codes(len(ok))
            except KassaError as exc:
                return [exc if r is None else r for r in refusals]
            if log.isEnabledFor(logging.INFO):
                for i, code in zip(ok, codes, strict=True):
                    _log_start(code, subs[i].transaction)
            us = int((self._clock() - started) * 1e6)
            rid = REQUEST_ID.get()  # every item of a batch request is logged under its id
            tp = TRACEPARENT.get()  # and carries its trace
            recorded: list[Recorded | BaseException]
            try:
                recorded = await self._journals.submit_many([PendingJournal(
                    code, subs[i].transaction, None, None, None,
                    "sync" if subs[i].wait else "async", us, self._owner, rid, tp)
                    for i, code in zip(ok, codes, strict=True)])
            except KassaError as exc:  # refused whole by the batcher (too many waiting)
                recorded = [exc] * len(ok)
            processing_time = format_ms(self._clock() - started)
            for i, code, result in zip(ok, codes, recorded, strict=True):
                answers[i] = self._accepted_item(room, subs[i], code, result, started,
                                                 processing_time, rid, tp)
        self._observer.accepted("transaction", self._clock() - started, len(ok))
        tasks = [a for a in answers if isinstance(a, Task)]
        if not tasks:
            return [a for a in answers if a is not None and not isinstance(a, Task)]
        finished = iter(await self._wait_all(tasks, processing_time))
        return [next(finished) if isinstance(a, Task) else a for a in answers
                if a is not None]

    async def _check_many(self, subs: list[Submission], accounts: dict[str, AccountSnapshot]
                          ) -> list[KassaError | None]:
        """Pre-validation of many items; a refusal on funds or on the 64-bit range is
        confirmed by one fresh read."""
        errors: list[KassaError | None] = [prevalidate(s.transaction, accounts) for s in subs]
        short = [i for i, e in enumerate(errors) if isinstance(e, STALE_REFUSALS)]
        if short:
            fresh = await self._accounts.get_accounts(
                sorted({a for i in short for a in subs[i].transaction.account_ids}), fresh=True)
            for i in short:
                errors[i] = prevalidate(subs[i].transaction, fresh)
        for sub, error in zip(subs, errors, strict=True):
            if error is not None:
                self._observer.refused(error.code)
                _log_refused(error, sub.transaction)
        return errors

    def _accepted_item(self, room: Admission, sub: Submission, code: str, result: object,
                       started: float, processing_time: str, rid: str, tp: str | None
                       ) -> Submitted | KassaError | Task:
        """One recorded item: its answer, or its Task when it waits for a writer."""
        if isinstance(result, BaseException):
            if not isinstance(result, KassaError):
                log.error("recording a batch item failed", exc_info=result)
                result = Unavailable("the transaction could not be recorded", retry_after_s=1)
            _log_unrecorded(code, result)
            return result
        if isinstance(result, Outcome):  # applied in the accept's commit
            return (_finished(code, processing_time, result, sub.transaction) if sub.wait
                    else Accepted(code, processing_time))
        assert isinstance(result, int)
        waiter = asyncio.get_running_loop().create_future() if sub.wait else None
        task = Task(result, code, sub.transaction, started, waiter, rid, tp)
        room.put(task)
        return task if sub.wait else Accepted(code, processing_time)

    async def _accept(self, sub: Submission, started: float,
                      accounts: dict[str, AccountSnapshot] | None
                      ) -> tuple[str, str, Task | Outcome] | Accepted | Replayed:
        tx = sub.transaction
        if accounts is None:
            accounts = await self._accounts.get_accounts(tx.account_ids)
        error = prevalidate(tx, accounts)
        if isinstance(error, STALE_REFUSALS):
            # A cached balance may be stale-low (a credit committed by another process), or
            # stale near the int64 edge: refuse on funds or range only by the database's view.
            error = prevalidate(tx, await self._accounts.get_accounts(tx.account_ids, fresh=True))
        if error is not None:
            replay = await self._replay_of_recorded(sub)
            if replay is not None:
                return replay
            self._observer.refused(error.code)
            _log_refused(error, tx)
            raise error
        with self._pool.admission() as room, self._spans.step("kassa.admission"):
            # From this process's stock of codes: no await unless it ran dry (then 503).
            code = (await self._receipts.next_codes(1))[0]
            # Before the journal is submitted: an outcome applied in the accept commit is
            # logged by an effect worker, possibly before this coroutine resumes.
            if log.isEnabledFor(logging.INFO):
                _log_start(code, tx)
            rid, tp = REQUEST_ID.get(), TRACEPARENT.get()
            try:
                result = await self._journals.submit(PendingJournal(
                    code, tx, sub.scope, sub.idempotency_key, sub.request_hash,
                    "sync" if sub.wait else "async",
                    int((self._clock() - started) * 1e6), self._owner, rid, tp))
            except Exception as exc:
                _log_unrecorded(code, exc)
                raise
            if isinstance(result, ExistingJournal):
                try:
                    replay = replay_of_journal(sub, result)
                except KassaError as exc:  # the key was used with another request
                    _log_unrecorded(code, exc)
                    raise
                _log_replay(result.receipt_code, code)
                return replay
            done: Task | Outcome
            if isinstance(result, Outcome):  # applied in the accept's commit
                done = result
            else:
                waiter = asyncio.get_running_loop().create_future() if sub.wait else None
                done = Task(result, code, tx, started, waiter, rid, tp)
                room.put(done)
        elapsed = self._clock() - started
        self._observer.accepted("transaction", elapsed)
        return code, format_ms(elapsed), done

    async def _replay_of_recorded(self, sub: Submission) -> Accepted | Replayed | None:
        """A repeat of a key the database already holds is answered as its first request
        was, even when the ledger's state would refuse it now (the account locked since, or
        the funds spent by that very request): Redis may lack the key's answer (its first
        process died before caching it, or Redis was down), and pre-validation would
        otherwise refuse a request that was applied (found by tests/sim)."""
        if sub.idempotency_key is None or self._recorded_keys is None:
            return None
        existing = await self._recorded_keys.journal_of_key(sub.scope, sub.idempotency_key)
        if existing is None:
            return None
        _log_replay(existing.receipt_code, None)
        return replay_of_journal(sub, existing)

    async def _wait_all(self, tasks: list[Task], processing_time: str) -> list[Submitted]:
        """The waiting items of a batch request, in one wait (not a waiting coroutine each):
        those still running at the timeout are answered as accepted, like `_wait`'s."""
        waiters = [t.waiter for t in tasks if t.waiter is not None]
        await asyncio.wait(waiters, timeout=self._wait_timeout_s)
        answers: list[Submitted] = []
        for task in tasks:
            assert task.waiter is not None
            outcome = task.waiter.result() if task.waiter.done() else None
            answers.append(Accepted(task.receipt_code, processing_time) if outcome is None else
                           _finished(task.receipt_code, processing_time, outcome, task.transaction))
        return answers

    async def _wait(self, task: Task, processing_time: str) -> Submitted:
        assert task.waiter is not None
        try:
            outcome = await asyncio.wait_for(asyncio.shield(task.waiter), self._wait_timeout_s)
        except TimeoutError:
            outcome = None
        if outcome is None:
            # Still running (or finished elsewhere): the receipt stands; the client polls it.
            return Accepted(task.receipt_code, processing_time)
        return _finished(task.receipt_code, processing_time, outcome, task.transaction)


def _finished(code: str, processing_time: str, outcome: Outcome, tx: Transaction) -> Finished:
    return Finished(code, processing_time, outcome, tx)


def _log_start(code: str, tx: Transaction) -> None:
    log.info("[TRANSACTION START] Receipt: %s | Type: %s | Amount: %d | Accounts: %d",
             code, tx.type, tx.amount, len(tx.account_ids))


def _log_refused(error: KassaError, tx: Transaction) -> None:
    """Refused before a receipt code: no START, this is the request's one line."""
    log.info("[TRANSACTION REFUSED] Type: %s | Amount: %d | Accounts: %d | Error: %s",
             tx.type, tx.amount, len(tx.account_ids), error.code)


def _log_unrecorded(code: str, error: Exception) -> None:
    """After its START, the transaction was not recorded (or its key names another request)."""
    kind = "REFUSED" if isinstance(error, IdempotencyKeyReused) else "ERROR"
    log.info("[TRANSACTION %s] Receipt: %s | Error: %s", kind, code,
             getattr(error, "code", "internal"))


def _log_replay(receipt_code: str, unused: str | None) -> None:
    """A repeat of an Idempotency-Key, answered with its first request's receipt; `unused`:
    the code the repeat's START named, which no journal carries (a gap)."""
    if unused is None:
        log.info("[TRANSACTION REPLAY] Receipt: %s", receipt_code)
    else:
        log.info("[TRANSACTION REPLAY] Receipt: %s | Unused: %s", receipt_code, unused)
