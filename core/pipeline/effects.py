"""After a batch commits: status, notifications, cached balances, relay wake-up.

Receipts are not registered here: the relay registers them from the journals it reads
(server/adapters/kafka/relay.py, the receipts sink), so a finished journal's receipt is
registered even when this process dies right after the commit.

A transaction's outcome line is written here, by an effect worker that serves no request:
it is written under the X-Request-Id of the request that submitted the transaction (kept
on its Task), so that it follows that request's `[TRANSACTION START]` under the same id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from core.kit.clock import utc_now_iso
from core.kit.request_context import log_info_for
from core.ledger.decide import Outcome
from core.ledger.models import AccountSnapshot
from core.ledger.status import COMPLETED, HELD, VOIDED, is_final
from core.pipeline.executor import Executed
from core.pipeline.observer import NullObserver, Observer
from core.pipeline.ports import JournalStatus, Notification, Notifier
from core.pipeline.tracker import StatusTracker

log = logging.getLogger("kassa.effects")

# Sets the cached balances of accounts to what a commit of this process left (no I/O).
BalancesCommitted = Callable[[dict[str, int]], None]

# Which contact field feeds which notification channel.
CHANNELS = (("email", "email"), ("phone", "sms"), ("push_token", "push"))


def notifications_for(outcome: Outcome, accounts: list[AccountSnapshot],
                      traceparent: str | None = None) -> list[Notification]:
    subject = f"Transaction {outcome.receipt_code} {outcome.status}"
    notes = []
    for account in accounts:
        contact = account.contact or {}
        amount = sum(e.amount for e in outcome.entries if e.account == account.id)
        body = _note_body(outcome, account.id, amount, account.currency)
        for field_name, channel in CHANNELS:
            if contact.get(field_name):
                notes.append(Notification(outcome.receipt_code, channel, contact[field_name],
                                          subject, body, traceparent))
    return notes


def _note_body(outcome: Outcome, account_id: str, amount: int, currency: str) -> str:
    if outcome.status == COMPLETED:
        return f"Account {account_id}: {amount} {currency} moved."
    if outcome.status == HELD:
        return f"Account {account_id}: funds reserved by a hold, nothing moved yet."
    if outcome.status == VOIDED:
        return f"Account {account_id}: a hold was released, nothing moved."
    code = outcome.error.code if outcome.error else ""
    return f"Account {account_id}: nothing moved ({code})."


class PostCommit:
    def __init__(self, *, tracker: StatusTracker, notifier: Notifier | None = None,
                 balances_committed: BalancesCommitted | None = None,
                 wake_relay: Callable[[], None] | None = None,
                 observer: Observer | None = None) -> None:
        self._tracker = tracker
        self._notifier = notifier
        self._balances_committed = balances_committed
        self._wake_relay = wake_relay
        self._observer = observer or NullObserver()

    async def __call__(self, executed: Executed) -> None:
        if self._wake_relay is not None and executed.outcomes:
            self._wake_relay()
        now, now_iso = time.monotonic(), utc_now_iso()
        # A hold's `held` is not final (its capture or void ends it): never cached.
        self._tracker.finished([JournalStatus(o.receipt_code, o.status, o.error, now_iso)
                                for o in executed.outcomes if is_final(o.status)])
        self._tracker.finished([JournalStatus(t.receipt_code, t.status, None, now_iso)
                                for t in executed.targets if is_final(t.status)])
        # Counted once final: a hold's `held` is counted when its capture or void ends it.
        counts: dict[tuple[str, str], int] = {}
        latencies: list[float] = []
        logging_info = log.isEnabledFor(logging.INFO)
        for task, outcome in zip(executed.tasks, executed.outcomes, strict=True):
            if is_final(outcome.status):
                key = (outcome.status, task.transaction.type)
                counts[key] = counts.get(key, 0) + 1
                latencies.append(now - task.accepted_at)
            if logging_info:
                self._log(outcome, now - task.accepted_at, task.request_id)
            if self._notifier is not None:
                touched = [executed.accounts[a] for a in task.transaction.account_ids
                           if a in executed.accounts]
                for note in notifications_for(outcome, touched, task.traceparent):
                    self._notifier.notify(note)
        if self._balances_committed is not None and executed.accounts:
            # Every locked account, moved or not: the lock read is the freshest view there is.
            balances = {a.id: a.balance for a in executed.accounts.values()}
            balances |= {e.account: e.balance_after for o in executed.outcomes for e in o.entries}
            self._balances_committed(balances)
        self._observer.finished(counts, latencies)

    @staticmethod
    def _log(outcome: Outcome, seconds: float, request_id: str) -> None:
        if outcome.error is None:  # completed, held (a hold) or voided (a void)
            log_info_for(request_id, log, "[TRANSACTION SUCCESS] Receipt: %s | Journal ID: %d | "
                         "Status: %s | Duration: %.1fms", outcome.receipt_code,
                         outcome.journal_id, outcome.status, seconds * 1000)
        else:
            log_info_for(request_id, log, "[TRANSACTION ERROR] Receipt: %s | Journal ID: %d | "
                         "Error: %s", outcome.receipt_code, outcome.journal_id,
                         outcome.error.code)
