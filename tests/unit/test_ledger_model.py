"""The ledger's pure decisions against a small reference model (issue 12).

A Hypothesis state machine runs batches of transfers, deposits, withdrawals (single and
multi-leg), holds, captures, voids, reversals and hold expiries (a clock the test moves)
through the REAL decisions, combined as core/pipeline/executor.py combines them: a batch
decides its plain journals first (`decide_batch`), then its linked ones in order
(`decide_with_linked`), against the accounts and named journals as the database would
hand them over. Next to it runs a reference model written here from the contract
(docs/api.md, "Holds" and "Reversals"), by plain arithmetic; every outcome, balance, hold
and reversed sum of the real side must equal the model's, and the ledger's invariants must
hold after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from core.ledger.decide import Outcome, decide_batch
from core.ledger.linked import (
    CAPTURE,
    REVERSAL,
    VOID,
    Target,
    decide_with_linked,
    is_linked,
    source_debits,
)
from core.ledger.models import AccountSnapshot, Leg, Transaction, world_account
from core.ledger.status import COMPLETED, FAILED, HELD, VOIDED
from core.pipeline.expiry import EXPIRED, expiry_void
from core.pipeline.links import NamedJournal

NOW = "2026-12-02T00:00:00.000000Z"
WORLD = world_account("USD")
# id: (currency, status, overdraft limit); "ghost" is named by requests but never exists.
ACCOUNTS: dict[str, tuple[str, str, int | None]] = {
    "a": ("USD", "active", 0),
    "b": ("USD", "active", 0),
    "c": ("USD", "active", 50),
    WORLD: ("USD", "active", None),
    "f": ("USD", "frozen", 0),
    "e": ("EUR", "active", 0),
}
USERS = ["a", "b", "c"]
ODD = ["f", "e", "ghost"]  # refused by the static rules
REVERSIBLE = {"transfer", "deposit", "withdrawal", CAPTURE}
MISSING = "RCP-missing"


# ---------------------------------------------------------------- the reference model


@dataclass
class MJournal:
    """The model's view of one decided journal."""

    code: str
    tx: Transaction
    status: str
    deadline: int | None = None  # holds only: when the server voids it
    reversed: int = 0
    ended_by: list[str] = field(default_factory=list)  # captures and voids that ended it
    expiry_voids: int = 0  # expiry void journals recorded for this hold

    @property
    def is_hold(self) -> bool:
        return self.tx.hold_expires_in_s is not None


class Model:
    """Balances, held amounts, holds and reversals by the contract, decided one by one."""

    def __init__(self) -> None:
        self.balance = dict.fromkeys(ACCOUNTS, 0)
        self.held = dict.fromkeys(ACCOUNTS, 0)
        self.journals: dict[str, MJournal] = {}

    def available_ok(self, account: str, new_balance: int, old_balance: int) -> bool:
        """Whether a debit leaving `new_balance` keeps what is held reserved (native's rule:
        only an account whose balance falls is checked)."""
        limit = ACCOUNTS[account][2]
        if limit is None or new_balance >= old_balance:
            return True
        return new_balance - self.held[account] >= -limit

    def static(self, tx: Transaction) -> str | None:
        for account in tx.account_ids:  # sorted, as the rules are checked
            if account not in ACCOUNTS:
                return "account_not_found"
            currency, status, _ = ACCOUNTS[account]
            if currency != tx.currency:
                return "currency_mismatch"
            if status != "active":
                return "account_inactive"
        return None

    def post(self, legs: tuple[Leg, ...]) -> str | None:
        net: dict[str, int] = {}
        for leg in legs:
            net[leg.source] = net.get(leg.source, 0) - leg.amount
            net[leg.destination] = net.get(leg.destination, 0) + leg.amount
        for account, change in net.items():
            if not self.available_ok(account, self.balance[account] + change,
                                     self.balance[account]):
                return "insufficient_funds"
        for account, change in net.items():
            self.balance[account] += change
        return None

    def decide(self, code: str, tx: Transaction, clock: int) -> tuple[str, str | None]:
        """Decide one journal: (status, error code); records it."""
        status, error = self._decide(tx)
        deadline = clock + tx.hold_expires_in_s if tx.hold_expires_in_s is not None else None
        self.journals[code] = MJournal(code, tx, status, deadline)
        return status, error

    def _decide(self, tx: Transaction) -> tuple[str, str | None]:
        # A void releases its hold whatever became of the accounts since: no static rules.
        error = self.static(tx) if tx.type != VOID else None
        if error is not None:
            return FAILED, error
        if tx.type in (CAPTURE, VOID):
            hold = self.journals.get(tx.target or "")
            if hold is None or not hold.is_hold or hold.status != HELD:
                return FAILED, "hold_not_pending"
            debits = source_debits(hold.tx.legs)
            for account, amount in debits.items():
                self.held[account] -= amount
            if tx.type == CAPTURE:
                error = self.post(tx.legs)
                if error is not None:
                    for account, amount in debits.items():
                        self.held[account] += amount
                    return FAILED, error
            hold.status = COMPLETED if tx.type == CAPTURE else VOIDED
            hold.ended_by.append(tx.type)
            return (COMPLETED if tx.type == CAPTURE else VOIDED), None
        if tx.type == REVERSAL:
            original = self.journals.get(tx.target or "")
            # A hold has no entries to reverse, captured or not: its capture is reversed.
            if (original is None or original.status != COMPLETED or original.is_hold
                    or original.tx.type not in REVERSIBLE):
                return FAILED, "invalid_request"
            if original.reversed + tx.amount > original.tx.amount:
                return FAILED, "reversal_exceeds_original"
            error = self.post(tx.legs)
            if error is not None:
                return FAILED, error
            original.reversed += tx.amount
            return COMPLETED, None
        if tx.hold_expires_in_s is not None:
            debits = source_debits(tx.legs)
            # The system account has no balance to reserve: never a hold's source.
            if any(ACCOUNTS[account][2] is None for account in debits):
                return FAILED, "invalid_request"
            for account, amount in debits.items():
                limit = ACCOUNTS[account][2]
                if limit is not None and (self.balance[account] - self.held[account] - amount
                                          < -limit):
                    return FAILED, "insufficient_funds"
            for account, amount in debits.items():
                self.held[account] += amount
            return HELD, None
        error = self.post(tx.legs)
        return (FAILED, error) if error is not None else (COMPLETED, None)


# ---------------------------------------------------------------- the "database" side


@dataclass
class Row:
    """A journal row as the database keeps it (what lock_targets reads back)."""

    journal_id: int
    tx: Transaction
    status: str
    hold_expires_at: int | None
    reversed: int = 0

    @property
    def is_hold(self) -> bool:
        return self.hold_expires_at is not None


class Real:
    """Accounts and journals as the adapter stores them; batches go through the real
    decisions exactly as `_execute_once` calls them."""

    def __init__(self) -> None:
        self.accounts = {i: AccountSnapshot(i, cur, status, 0, limit)
                         for i, (cur, status, limit) in ACCOUNTS.items()}
        self.rows: dict[str, Row] = {}

    def targets(self, codes: list[str]) -> dict[str, Target]:
        return {c: Target(c, self.rows[c].journal_id, self.rows[c].tx.type, self.rows[c].status,
                          self.rows[c].tx.legs, self.rows[c].is_hold, self.rows[c].reversed,
                          self.rows[c].tx.currency)
                for c in codes if c in self.rows}

    def run(self, batch: list[tuple[int, str, Transaction]], clock: int
            ) -> list[tuple[str, str, str | None]]:
        """Decide and write one batch; (receipt, status, error code) in decision order."""
        ids = sorted({a for _, _, tx in batch for a in tx.account_ids})
        accounts = {a: self.accounts[a] for a in ids if a in self.accounts}
        plain = [t for t in batch if not is_linked(t[2])]
        linked = [t for t in batch if is_linked(t[2])]
        decision = decide_batch(plain, accounts, NOW)
        if linked:
            named = sorted({tx.target for _, _, tx in linked if tx.target})
            decision = decide_with_linked(decision, linked, accounts, self.targets(named), NOW)
        txs = {code: tx for _, code, tx in batch}
        assert [o.receipt_code for o in decision.outcomes] == [c for _, c, _ in plain + linked]
        self._check_entries(decision.outcomes, txs)
        # The write: balances and held in one UPDATE (held only where it changed).
        assert set(decision.held) <= set(decision.balances)
        for account_id, balance in decision.balances.items():
            old = self.accounts[account_id]
            self.accounts[account_id] = AccountSnapshot(
                old.id, old.currency, old.status, balance, old.overdraft_limit,
                held=decision.held.get(account_id, old.held))
        for (journal_id, code, tx), outcome in zip(plain + linked, decision.outcomes,
                                                   strict=True):
            assert outcome.journal_id == journal_id
            expires = clock + tx.hold_expires_in_s if tx.hold_expires_in_s is not None else None
            self.rows[code] = Row(journal_id, tx, outcome.status, expires)
        for target in decision.targets:  # update_targets
            row = self.rows[target.receipt_code]
            row.status, row.reversed = target.status, target.reversed
        return [(o.receipt_code, o.status, o.error.code if o.error else None)
                for o in decision.outcomes]

    @staticmethod
    def _check_entries(outcomes: list[Outcome], txs: dict[str, Transaction]) -> None:
        """Entries: only for posted journals, the journal's legs, balanced."""
        for outcome in outcomes:
            tx = txs[outcome.receipt_code]
            if outcome.status != COMPLETED or tx.type == VOID:
                assert outcome.entries == [], outcome
                continue
            debits = [(e.account, e.amount) for e in outcome.entries if e.direction == "debit"]
            credits = [(e.account, e.amount) for e in outcome.entries if e.direction == "credit"]
            assert debits == [(leg.source, leg.amount) for leg in tx.legs]
            assert credits == [(leg.destination, leg.amount) for leg in tx.legs]


# ---------------------------------------------------------------- the state machine

class Picks:
    """Choices decoded from one drawn integer (few draws keep the machine fast; 0 shrinks
    to the first choice of each)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def take(self, k: int) -> int:
        if k <= 1:
            return 0
        self.n, value = divmod(self.n, k)
        return value


KINDS = ["deposit", "deposit", "withdrawal", "transfer", "multi",
         CAPTURE, CAPTURE, VOID, REVERSAL, REVERSAL]
Op = tuple[int, int, int]  # kind, choices, amount
OPS = st.tuples(st.integers(0, len(KINDS) - 1), st.integers(0, 2**40), st.integers(1, 120))


def _plain(kind: str, p: Picks, amount: int) -> Transaction:
    """A deposit, withdrawal, transfer or multi-leg transfer, maybe a hold, rarely naming an
    account the static rules refuse."""
    hold = (1 + p.take(100) if kind in ("withdrawal", "transfer", "multi") and p.take(3) == 0
            else None)
    pool = USERS + ODD if p.take(10) == 0 else USERS
    legs: tuple[Leg, ...] = ()
    if kind == "deposit":
        legs = (Leg(WORLD, pool[p.take(len(pool))], amount),)
    elif kind == "withdrawal":
        legs = (Leg(pool[p.take(len(pool))], WORLD, amount),)
    else:
        sources = pool if kind == "transfer" else USERS + [WORLD]
        for i in range(1 if kind == "transfer" else 2 + p.take(2)):
            source = sources[p.take(len(sources))]
            others = [u for u in USERS if u != source]
            legs += (Leg(source, others[p.take(len(others))], amount if i == 0
                         else 1 + p.take(120)),)
    return Transaction("transfer" if kind == "multi" else kind, "USD", legs,
                       hold_expires_in_s=hold)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.real = Real()
        self.clock = 0
        self.ids = 0
        self.expiry_keys: dict[str, str] = {}  # "expire:<hold>" -> the void's receipt
        self.queued: list[tuple[int, str, Transaction]] = []  # expiry voids not yet run
        self.ended: dict[str, list[str]] = {}  # hold -> receipts of captures/voids that ended it

    # ---- requests ---------------------------------------------------------------------

    def _next(self) -> tuple[int, str]:
        self.ids += 1
        return self.ids, f"RCP-{self.ids:04d}"

    def _request(self, op: Op) -> Transaction:
        kind, pick, amount = op
        p = Picks(pick)
        if KINDS[kind] in (CAPTURE, VOID, REVERSAL):
            return self._linked(KINDS[kind], p, amount)
        return _plain(KINDS[kind], p, amount)

    def _linked(self, kind: str, p: Picks, amount: int) -> Transaction:
        """A capture, void or reversal built as core/pipeline/links.py builds it, without its
        early checks: the named journal may have changed before the writer decides."""
        rows = self.real.rows
        if kind == REVERSAL:
            preferred = [c for c, r in rows.items() if r.status == COMPLETED]
            others = preferred
        else:  # pending holds mostly, else any hold (ended, or failed)
            preferred = [c for c, r in rows.items() if r.is_hold and r.status == HELD]
            others = [c for c, r in rows.items() if r.is_hold]
        mode = p.take(6)
        pool = ((preferred or others) if mode < 3 else others if mode == 3
                else list(rows) if mode == 4 else [])
        code = pool[p.take(len(pool))] if pool else MISSING
        row = rows.get(code)
        legs = row.tx.legs if row is not None else (Leg("a", "b", amount),)
        total = sum(leg.amount for leg in legs)
        if kind != VOID and len(legs) == 1 and p.take(2):  # partial
            legs = (legs[0]._replace(amount=1 + (amount - 1) % total),)
        if kind == REVERSAL:
            legs = tuple(Leg(leg.destination, leg.source, leg.amount) for leg in legs)
        currency = row.tx.currency if row is not None else "USD"
        return Transaction(kind, currency, legs, target=code)

    # ---- rules ------------------------------------------------------------------------

    @rule(ops=st.lists(OPS, min_size=1, max_size=4), mix=st.integers(0, 255))
    def batch(self, ops: list[Op], mix: int) -> None:
        """One writer batch of client requests, maybe with queued expiry voids among them
        (a capture may reach the writer before the expiry void of its hold)."""
        batch = [(*self._next(), self._request(op)) for op in ops]
        p = Picks(mix)
        if self.queued and p.take(2):
            for item in self.queued:
                batch.insert(p.take(len(batch) + 1), item)
            self.queued = []
        self._run(batch)

    @rule(seconds=st.integers(1, 60), sweeps=st.integers(1, 2), run_now=st.booleans())
    def expire(self, seconds: int, sweeps: int, run_now: bool) -> None:
        """Move the clock and sweep (maybe twice, as two processes would): each expired
        pending hold gets one expiry void, the second sweep's being a replay of the key."""
        self.clock += seconds
        for _ in range(sweeps):
            due = sorted(((r.hold_expires_at, c) for c, r in self.real.rows.items()
                          if r.status == HELD and r.is_hold and r.hold_expires_at is not None
                          and r.hold_expires_at <= self.clock))
            for _, code in due:
                row = self.real.rows[code]
                sub = expiry_void(NamedJournal(code, row.tx.type, row.status, row.tx.currency,
                                               row.tx.legs, True, row.reversed))
                assert sub.idempotency_key == f"expire:{code}"
                assert sub.transaction.description == EXPIRED
                if sub.idempotency_key in self.expiry_keys:
                    continue  # the unique key: a replay, no second journal
                journal_id, receipt = self._next()
                self.expiry_keys[sub.idempotency_key] = receipt
                self.model.journals[code].expiry_voids += 1
                self.queued.append((journal_id, receipt, sub.transaction))
        if run_now and self.queued:
            batch, self.queued = self.queued, []
            self._run(batch)

    @precondition(lambda self: bool(self.queued))
    @rule()
    def run_expiry_voids(self) -> None:
        batch, self.queued = self.queued, []
        self._run(batch)

    def _run(self, batch: list[tuple[int, str, Transaction]]) -> None:
        got = self.real.run(batch, self.clock)
        order = ([t for t in batch if not is_linked(t[2])] + [t for t in batch if is_linked(t[2])])
        want = [(code, *self.model.decide(code, tx, self.clock)) for _, code, tx in order]
        assert got == want, f"real {got} != model {want} for {order}"
        for (_, code, tx), (_, status, _) in zip(order, got, strict=True):
            if tx.type in (CAPTURE, VOID) and status != FAILED and tx.target:
                self.ended.setdefault(tx.target, []).append(code)

    # ---- invariants -------------------------------------------------------------------

    @invariant()
    def balances_match_the_model_and_sum_to_zero(self) -> None:
        real = {a: s.balance for a, s in self.real.accounts.items()}
        assert real == self.model.balance
        for currency in {cur for cur, _, _ in ACCOUNTS.values()}:
            assert sum(s.balance for s in self.real.accounts.values()
                       if s.currency == currency) == 0

    @invariant()
    def held_is_the_pending_holds(self) -> None:
        pending: dict[str, int] = dict.fromkeys(ACCOUNTS, 0)
        for row in self.real.rows.values():
            if row.is_hold and row.status == HELD:
                for account, amount in source_debits(row.tx.legs).items():
                    pending[account] += amount
        assert {a: s.held for a, s in self.real.accounts.items()} == pending == self.model.held

    @invariant()
    def what_is_held_stays_within_the_limit(self) -> None:
        for account in self.real.accounts.values():
            if account.overdraft_limit is not None:
                assert account.balance - account.held >= -account.overdraft_limit, account
                assert account.floor is not None and account.balance >= account.floor

    @invariant()
    def holds_end_once(self) -> None:
        for hold, enders in self.ended.items():
            assert len(enders) == 1, (hold, enders)
            assert self.real.rows[hold].status in (COMPLETED, VOIDED)
        for code, journal in self.model.journals.items():
            assert len(journal.ended_by) <= 1
            assert journal.expiry_voids <= 1
            assert self.real.rows[code].status == journal.status, code

    @invariant()
    def expired_holds_have_their_void_queued(self) -> None:
        queued = {tx.target for _, _, tx in self.queued}
        for code, row in self.real.rows.items():
            if row.status == HELD and row.hold_expires_at is not None \
                    and row.hold_expires_at <= self.clock:
                assert f"expire:{code}" in self.expiry_keys and code in queued, code

    @invariant()
    def reversals_never_exceed_the_original(self) -> None:
        reversed_by: dict[str, int] = {}
        for row in self.real.rows.values():
            if row.tx.type == REVERSAL and row.status == COMPLETED and row.tx.target:
                reversed_by[row.tx.target] = reversed_by.get(row.tx.target, 0) + row.tx.amount
        for code, row in self.real.rows.items():
            assert row.reversed == reversed_by.get(code, 0) == self.model.journals[code].reversed
            assert row.reversed <= row.tx.amount
            if row.reversed:
                assert not row.is_hold and row.tx.type in REVERSIBLE


LedgerMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestLedgerModel = LedgerMachine.TestCase
