"""The reference model: the ledger's rules written again, small and independent of
core/ledger, replayed over the commit log in commit order (the linearisation the database
chose). After each commit the journals it finished must have the status the model
decides, and the accounts they touched the model's balance and held.

Rules (docs/api.md): a transaction's accounts exist, share its currency and are active
(a void ignores status); a debit may leave an account below its floor (held minus the
overdraft limit; none for @world) only if it leaves it no lower than it was; a hold
reserves each source's debit within its available balance; a capture posts at most its
pending hold's legs after releasing it; a void releases a pending hold; a reversal posts
a completed, non-hold transfer, deposit, withdrawal or capture backwards, its reversals
adding up to at most its amount.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.ledger.models import Leg, Transaction
from core.ledger.status import COMPLETED, FAILED, HELD, VOIDED
from tests.sim.store import Finish, LogEntry, SimStore, StatusChange

REVERSIBLE = {"transfer", "deposit", "withdrawal", "capture"}


@dataclass
class Account:
    currency: str
    status: str
    balance: int
    held: int
    overdraft: int | None


@dataclass
class Journal:
    code: str
    tx: Transaction
    status: str
    is_hold: bool
    reversed: int = 0


class Refused(Exception):
    pass


@dataclass
class Model:
    store: SimStore
    accounts: dict[str, Account] = field(default_factory=dict)
    journals: dict[str, Journal] = field(default_factory=dict)
    decided: dict[int, str] = field(default_factory=dict)  # journal id → status its commit gave
    violations: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, store: SimStore) -> Model:
        model = cls(store)
        for a in store.accounts.values():
            model.accounts[a.id] = Account(a.currency, a.status, a.balance, a.held,
                                           a.overdraft_limit)
        return model

    def replay(self, entries: list[LogEntry]) -> None:
        touched: set[str] = set()
        for entry in entries:
            if isinstance(entry, StatusChange):
                self.accounts[entry.account_id].status = entry.status
            else:
                touched |= self._finish(entry)
        for account_id in sorted(touched):
            self._compare(account_id)

    def _finish(self, finish: Finish) -> set[str]:
        row = self.store.journals[finish.journal_id]
        tx = row.transaction
        if finish.journal_id in self.decided:
            self.violations.append(f"journal {row.receipt_code} finished twice")
        self.decided[finish.journal_id] = finish.status
        saved = {k: (a.balance, a.held) for k, a in self.accounts.items()}
        try:
            status = self._decide(row.receipt_code, tx)
        except Refused:
            for k, (balance, held) in saved.items():
                self.accounts[k].balance, self.accounts[k].held = balance, held
            status = FAILED
        if status != finish.status:
            self.violations.append(f"journal {row.receipt_code} ({tx.type}, {tx.description}) "
                                   f"{finish.status}, the model says {status}")
        self.journals[row.receipt_code] = Journal(row.receipt_code, tx, status,
                                                  tx.hold_expires_in_s is not None)
        return {a for leg in tx.legs for a in (leg.source, leg.destination)}

    def _compare(self, account_id: str) -> None:
        real, model = self.store.accounts[account_id], self.accounts[account_id]
        if (real.balance, real.held) != (model.balance, model.held):
            self.violations.append(f"account {account_id}: balance/held {real.balance}/"
                                   f"{real.held}, the model says {model.balance}/{model.held}")

    # ---- the rules ------------------------------------------------------------------

    def _decide(self, code: str, tx: Transaction) -> str:
        if tx.type == "void":
            self._release(self._pending_hold(tx)).status = VOIDED
            return VOIDED
        self._static(tx)
        if tx.type == "capture":
            hold = self._pending_hold(tx)
            if not _within(tx.legs, hold.tx.legs):
                raise Refused
            self._release(hold)
            self._post(tx.legs)
            hold.status = COMPLETED
            return COMPLETED
        if tx.type == "reversal":
            original = self.journals.get(tx.target or "")
            if (original is None or original.is_hold or original.status != COMPLETED
                    or original.tx.type not in REVERSIBLE
                    or original.reversed + tx.amount > original.tx.amount):
                raise Refused
            self._post(tx.legs)
            original.reversed += tx.amount
            return COMPLETED
        if tx.hold_expires_in_s is not None:
            self._reserve(tx.legs)
            return HELD
        self._post(tx.legs)
        return COMPLETED

    def _static(self, tx: Transaction) -> None:
        for account_id in tx.account_ids:
            account = self.accounts.get(account_id)
            if account is None or account.currency != tx.currency or account.status != "active":
                raise Refused

    def _pending_hold(self, tx: Transaction) -> Journal:
        hold = self.journals.get(tx.target or "")
        if hold is None or not hold.is_hold or hold.status != HELD:
            raise Refused
        return hold

    def _release(self, hold: Journal) -> Journal:
        for leg in hold.tx.legs:
            self.accounts[leg.source].held -= leg.amount
        return hold

    def _reserve(self, legs: tuple[Leg, ...]) -> None:
        debits: dict[str, int] = {}
        for leg in legs:
            debits[leg.source] = debits.get(leg.source, 0) + leg.amount
        for account_id, amount in debits.items():
            a = self.accounts[account_id]
            if a.overdraft is None or a.balance - amount < a.held - a.overdraft:
                raise Refused
        for account_id, amount in debits.items():
            self.accounts[account_id].held += amount

    def _post(self, legs: tuple[Leg, ...]) -> None:
        before = {}
        for leg in legs:
            for account_id, delta in ((leg.source, -leg.amount), (leg.destination, leg.amount)):
                a = self.accounts[account_id]
                before.setdefault(account_id, a.balance)
                a.balance += delta
        for account_id, was in before.items():
            a = self.accounts[account_id]
            if a.overdraft is not None and a.balance < a.held - a.overdraft and a.balance < was:
                raise Refused


def _within(legs: tuple[Leg, ...], hold: tuple[Leg, ...]) -> bool:
    if legs == hold:
        return True
    return (len(legs) == len(hold) == 1 and legs[0][:2] == hold[0][:2]
            and legs[0].amount <= hold[0].amount)
