"""After a batch commits: status, receipt status, notifications, cache invalidation, relay."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from core.executor import Executed, utc_now_iso
from core.ledger import Outcome
from core.models import AccountSnapshot
from core.observer import NullObserver, Observer
from core.ports import JournalStatus, Notification, Notifier, ReceiptSource
from core.status import COMPLETED
from core.tracker import StatusTracker

log = logging.getLogger("kassa.effects")

Invalidate = Callable[[list[str]], Awaitable[None]]

# Which contact field feeds which notification channel.
CHANNELS = (("email", "email"), ("phone", "sms"), ("push_token", "push"))


def notifications_for(outcome: Outcome, accounts: list[AccountSnapshot]) -> list[Notification]:
    subject = f"Transaction {outcome.receipt_code} {outcome.status}"
    notes = []
    for account in accounts:
        contact = account.contact or {}
        amount = sum(e.amount for e in outcome.entries if e.account == account.id)
        body = (f"Account {account.id}: {amount} {account.currency} moved."
                if outcome.status == COMPLETED else
                f"Account {account.id}: nothing moved ({outcome.error.code if outcome.error else ''}).")
        for field_name, channel in CHANNELS:
            if contact.get(field_name):
                notes.append(Notification(outcome.receipt_code, channel, contact[field_name],
                                          subject, body))
    return notes


class PostCommit:
    def __init__(self, *, tracker: StatusTracker, receipts: ReceiptSource,
                 notifier: Notifier | None = None, invalidate: Invalidate | None = None,
                 wake_relay: Callable[[], None] | None = None,
                 observer: Observer | None = None) -> None:
        self._tracker = tracker
        self._receipts = receipts
        self._notifier = notifier
        self._invalidate = invalidate
        self._wake_relay = wake_relay
        self._observer = observer or NullObserver()

    async def __call__(self, executed: Executed) -> None:
        if self._wake_relay is not None and executed.outcomes:
            self._wake_relay()
        now, now_iso = time.monotonic(), utc_now_iso()
        self._tracker.finished([JournalStatus(o.receipt_code, o.status, o.error, now_iso)
                                for o in executed.outcomes])
        for task, outcome in zip(executed.tasks, executed.outcomes, strict=True):
            self._receipts.status_changed(outcome.receipt_code, outcome.status,
                                          outcome.error.code if outcome.error else None)
            self._observer.finished(outcome.status, task.transaction.type, now - task.accepted_at)
            self._log(outcome, now - task.accepted_at)
            if self._notifier is not None:
                touched = [executed.accounts[a] for a in task.transaction.account_ids
                           if a in executed.accounts]
                for note in notifications_for(outcome, touched):
                    self._notifier.notify(note)
        if self._invalidate is not None:
            changed = sorted({e.account for o in executed.outcomes for e in o.entries})
            if changed:
                await self._invalidate(changed)

    @staticmethod
    def _log(outcome: Outcome, seconds: float) -> None:
        if outcome.status == COMPLETED:
            log.info("[TRANSACTION SUCCESS] Receipt: %s | Journal ID: %d | Duration: %.1fms",
                     outcome.receipt_code, outcome.journal_id, seconds * 1000)
        else:
            assert outcome.error is not None
            log.info("[TRANSACTION ERROR] Receipt: %s | Journal ID: %d | Error: %s",
                     outcome.receipt_code, outcome.journal_id, outcome.error.code)
