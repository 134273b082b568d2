"""An in-memory JournalStore (and AccountReader): the rules of server/adapters/postgres/journals.py
without PostgreSQL.

One `FakeJournalStore` is the database: accounts, journals, ledger entries. Every commit
is all or nothing; a unit works on staged changes and commits on a clean exit. Units run
one at a time (a stricter isolation than the row locks they stand for). The rules the real
store promises are enforced, not assumed:

- an idempotency key (scope, key) names at most one journal; an insert of a key that the
  open unit inserted waits until that unit ends, as PostgreSQL's unique index makes it
  wait (then it finds the journal, or inserts if the unit rolled back);
- a journal is finished once: `write` refuses a journal that is not `processing`;
- an account's balance never goes below its floor (-overdraft_limit): a commit that
  would leave one there is refused (Rejected), as the database's check constraint does;
- leases: `claim_expired` takes only unfinished journals whose lease expired, never
  those listed as held; the lease clock is `now` (seconds), moved by the test;
- holds: a journal recorded with `hold_expires_in_s` gets its deadline `hold_expires_at`
  (`now` + those seconds) at the accept, as the real INSERT does; `held` is written with
  the balance (only for accounts whose balance row the decision carries, as the real
  UPDATE does: a held change without one is a bug, refused here), and the floor a commit
  must respect is `held - overdraft_limit`; `lock_targets`/`update_targets` read and
  write the named journals (a target's status only moves forward); `named_journal` and
  `expired_holds` are the reads of server/adapters/postgres/holds.py.

Faults to inject: `down` (every call raises Unavailable), `reject` (receipt codes whose
group the database refuses: Rejected, the group rolled back), `lose_acks` (that many
next commits raise CommitUnknown; `lost_commits_land` tells whether they landed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from core.ledger.decide import BatchDecision
from core.ledger.errors import CommitUnknown, Rejected, TransientConflict, Unavailable
from core.ledger.linked import Target
from core.ledger.models import AccountSnapshot, Entry, ErrorBody, Transaction
from core.ledger.status import FAILED, HELD, PROCESSING, can_move, is_final
from core.pipeline.links import NamedJournal
from core.pipeline.ports import (
    ClaimedJournal,
    ExistingJournal,
    JournalStatus,
    PendingJournal,
    RecordedJournal,
)

Key = tuple[str, str]


@dataclass
class JournalRow:
    id: int
    receipt_code: str
    transaction: Transaction
    scope: str | None
    key: str | None
    request_hash: str | None
    mode: str
    accept_time_us: int | None
    status: str = PROCESSING
    error: ErrorBody | None = None
    entries: list[Entry] = field(default_factory=list)
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    recorded_finished: bool = False  # inserted already decided (apply at accept)
    updated_at: str = "2026-12-02T00:00:00.000000Z"
    hold_expires_at: float | None = None  # set at the accept for a hold (store clock)
    reversed: int = 0  # the sum of its completed reversals

    @property
    def is_hold(self) -> bool:
        return self.hold_expires_at is not None

    def target(self) -> Target:
        tx = self.transaction
        return Target(self.receipt_code, self.id, tx.type, self.status, tx.legs, self.is_hold,
                      self.reversed, tx.currency)

    def named(self) -> NamedJournal:
        tx = self.transaction
        return NamedJournal(self.receipt_code, tx.type, self.status, tx.currency, tx.legs,
                            self.is_hold, self.reversed)

    def existing(self) -> ExistingJournal:
        return ExistingJournal(self.id, self.receipt_code, self.request_hash, self.mode,
                               self.status, self.accept_time_us)


def _key_of(journal: PendingJournal) -> Key | None:
    if journal.idempotency_key is None:
        return None
    assert journal.idempotency_scope is not None
    return journal.idempotency_scope, journal.idempotency_key


class _Staged:
    """What one commit changes: new rows, finished rows, balances and held amounts, the
    named journals' status and reversed sum."""

    def __init__(self) -> None:
        self.new: list[JournalRow] = []
        self.finished: dict[int, tuple[str, ErrorBody | None, list[Entry]]] = {}
        self.balances: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.targets: dict[int, tuple[str, int]] = {}

    def post(self, decision: BatchDecision) -> None:
        """Balances and held in one UPDATE, as the real posting: held only rides along a
        balance row."""
        assert set(decision.held) <= set(decision.balances), \
            f"held of {set(decision.held) - set(decision.balances)} changed without a balance row"
        self.balances |= decision.balances
        self.held |= decision.held


class FakeLedgerUnit:
    def __init__(self, store: FakeJournalStore) -> None:
        self._store = store
        self.staged = _Staged()

    async def lock_unfinished(self, journal_ids: list[int]) -> set[int]:
        self._store.check_up()
        return {i for i in journal_ids
                if i in self._store.journals and self._store.journals[i].status == PROCESSING}

    async def lock_accounts(self, account_ids: list[str]) -> dict[str, AccountSnapshot]:
        self._store.check_up()
        self._store.locks.append(list(account_ids))
        return self._store.snapshots(account_ids)

    async def write(self, decision: BatchDecision) -> None:
        self._store.check_up()
        for outcome in decision.outcomes:
            row = self._store.journals.get(outcome.journal_id)
            assert row is not None, f"journal {outcome.journal_id} was never recorded"
            assert row.status == PROCESSING and outcome.journal_id not in self.staged.finished, \
                f"journal {outcome.journal_id} finished twice"
            self.staged.finished[outcome.journal_id] = (outcome.status, outcome.error,
                                                         list(outcome.entries))
        self.staged.post(decision)

    async def lock_targets(self, receipt_codes: list[str]) -> dict[str, Target]:
        self._store.check_up()
        rows = [self._store.journal(c) for c in receipt_codes if c in self._store.by_code]
        return {r.receipt_code: r.target() for r in sorted(rows, key=lambda r: r.id)}

    async def update_targets(self, targets: list[Target]) -> None:
        self._store.check_up()
        for target in targets:
            row = self._store.journals[target.journal_id]
            assert row.receipt_code == target.receipt_code
            assert target.status == row.status or can_move(row.status, target.status), \
                f"{row.receipt_code}: {row.status} -> {target.status}"
            assert row.reversed <= target.reversed <= row.transaction.amount
            self.staged.targets[target.journal_id] = (target.status, target.reversed)

    async def existing(self, journals: list[PendingJournal]) -> dict[Key, ExistingJournal]:
        self._store.check_up()
        return self._store.existing_by_key(journals)

    async def lock_for_new(self, account_ids: list[str], count: int
                           ) -> tuple[dict[str, AccountSnapshot], list[int]]:
        accounts = await self.lock_accounts(account_ids)
        return accounts, [next(self._store.ids) for _ in range(count)]  # a sequence: gaps on rollback

    async def insert_finished(self, journals: list[PendingJournal], ids: list[int],
                              decision: BatchDecision) -> None:
        self._store.check_up()
        keys = [k for k in map(_key_of, journals) if k is not None]
        if len(set(keys)) != len(keys):
            raise AssertionError("one key twice in one insert (the executor splits repeats)")
        if any(k in self._store.by_key for k in keys):
            raise TransientConflict("an idempotency key was recorded meanwhile")
        self._store.reserve(keys)
        for journal, jid, outcome in zip(journals, ids, decision.outcomes, strict=True):
            assert outcome.journal_id == jid and outcome.receipt_code == journal.receipt_code
            self.staged.new.append(JournalRow(
                jid, journal.receipt_code, journal.transaction, journal.idempotency_scope,
                journal.idempotency_key, journal.request_hash, journal.mode,
                journal.accept_time_us, outcome.status, outcome.error, list(outcome.entries),
                recorded_finished=True,
                hold_expires_at=self._store.hold_deadline(journal.transaction)))
        self.staged.post(decision)


class FakeJournalStore:
    def __init__(self, *, lease_s: float = 30.0) -> None:
        self.lease_s = lease_s
        self.now = 0.0  # the lease clock, in seconds
        self.accounts: dict[str, AccountSnapshot] = {}
        self.journals: dict[int, JournalRow] = {}
        self.by_key: dict[Key, int] = {}
        self.by_code: dict[str, int] = {}
        self.ids = itertools.count(1)
        self.commits = 0
        self.locks: list[list[str]] = []  # the account ids each lock asked for
        self.down = False
        self.reject: set[str] = set()
        self.lose_acks = 0
        self.lost_commits_land = True
        self._unit_lock = asyncio.Lock()
        # Keys inserted by the open unit, not committed yet: as PostgreSQL's unique index
        # does, another insert of one waits until that transaction ends, then conflicts
        # (it committed) or goes ahead (it rolled back).
        self._reserved: dict[Key, asyncio.Future[None]] = {}

    # ---- set-up and inspection for tests ----------------------------------------------

    def add_account(self, account_id: str, balance: int = 0, *, overdraft_limit: int | None = 0,
                    currency: str = "USD", status: str = "active",
                    contact: dict[str, str] | None = None, held: int = 0) -> AccountSnapshot:
        account = AccountSnapshot(account_id, currency, status, balance, overdraft_limit, contact,
                                  held)
        self.accounts[account_id] = account
        return account

    def balance(self, account_id: str) -> int:
        return self.accounts[account_id].balance

    def held(self, account_id: str) -> int:
        return self.accounts[account_id].held

    def hold_deadline(self, tx: Transaction) -> float | None:
        """`hold_expires_at` as the accept sets it: now + the hold's seconds."""
        return None if tx.hold_expires_in_s is None else self.now + tx.hold_expires_in_s

    def journal(self, receipt_code: str) -> JournalRow:
        return self.journals[self.by_code[receipt_code]]

    def statuses(self) -> dict[str, str]:
        return {row.receipt_code: row.status for row in self.journals.values()}

    def check_up(self) -> None:
        if self.down:
            raise Unavailable("the database is unavailable", retry_after_s=1)

    def snapshots(self, account_ids: list[str]) -> dict[str, AccountSnapshot]:
        return {a: self.accounts[a] for a in sorted(account_ids) if a in self.accounts}

    def existing_by_key(self, journals: list[PendingJournal]) -> dict[Key, ExistingJournal]:
        found = {}
        for journal in journals:
            key = _key_of(journal)
            if key is not None and key in self.by_key:
                found[key] = self.journals[self.by_key[key]].existing()
        return found

    # ---- JournalStore -----------------------------------------------------------------

    def reserve(self, keys: list[Key]) -> None:
        future = asyncio.get_running_loop().create_future()
        self._reserved |= {key: future for key in keys}

    def _release(self) -> None:
        for future in self._reserved.values():
            if not future.done():
                future.set_result(None)
        self._reserved.clear()

    async def _wait_for_reserved(self, journals: list[PendingJournal]) -> None:
        while True:
            waits = [self._reserved[k] for k in map(_key_of, journals) if k in self._reserved]
            if not waits:
                return
            await asyncio.shield(waits[0])

    async def insert_pending(self, journals: list[PendingJournal]) -> list[int | ExistingJournal]:
        self.check_up()
        await self._wait_for_reserved(journals)
        self.check_up()
        staged = _Staged()
        results: list[int | ExistingJournal] = []
        keys: dict[Key, JournalRow] = {}
        for journal in journals:
            key = _key_of(journal)
            if key is not None and key in self.by_key:
                results.append(self.journals[self.by_key[key]].existing())
                continue
            if key is not None and key in keys:  # ON CONFLICT DO NOTHING: the first stands
                results.append(keys[key].existing())
                continue
            row = JournalRow(next(self.ids), journal.receipt_code, journal.transaction,
                             journal.idempotency_scope, journal.idempotency_key,
                             journal.request_hash, journal.mode, journal.accept_time_us,
                             lease_owner=journal.lease_owner,
                             lease_expires_at=self.now + self.lease_s,
                             hold_expires_at=self.hold_deadline(journal.transaction))
            if key is not None:
                keys[key] = row
            staged.new.append(row)
            results.append(row.id)
        self._commit(staged)
        return results

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Writers wait meanwhile (every unit waits its turn; accepts go on): what is
        queued or taken by a writer is applied, in order, when this exits."""
        async with self._unit_lock:
            yield

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[FakeLedgerUnit]:
        async with self._unit_lock:
            self.check_up()
            unit = FakeLedgerUnit(self)
            try:
                yield unit
                self._commit(unit.staged)
            finally:
                self._release()  # committed, rolled back or its process gone

    async def recorded(self, receipt_codes: list[str], session: object | None
                       ) -> dict[str, RecordedJournal]:
        self.check_up()
        rows = [self.journals[self.by_code[c]] for c in receipt_codes if c in self.by_code]
        return {r.receipt_code: RecordedJournal(r.id, r.receipt_code, r.status, r.error,
                                                list(r.entries)) for r in rows}

    async def mark_failed(self, journal_id: int, error: ErrorBody) -> bool:
        self.check_up()
        row = self.journals.get(journal_id)
        if row is None or is_final(row.status):
            return False
        row.status, row.error = FAILED, error
        row.lease_owner = row.lease_expires_at = None
        self.commits += 1
        return True

    async def claim_expired(self, owner: str, lease_s: float, limit: int,
                            held: list[int]) -> list[ClaimedJournal]:
        self.check_up()
        claimed: list[ClaimedJournal] = []
        for jid in sorted(self.journals):
            row = self.journals[jid]
            if len(claimed) == limit:
                break
            if (row.status == PROCESSING and row.lease_expires_at is not None
                    and row.lease_expires_at < self.now and jid not in held):
                row.lease_owner, row.lease_expires_at = owner, self.now + lease_s
                claimed.append(ClaimedJournal(jid, row.receipt_code, row.transaction))
        return claimed

    async def renew_leases(self, owner: str, journal_ids: list[int], lease_s: float) -> None:
        self.check_up()
        for jid in journal_ids:
            row = self.journals.get(jid)
            if row is not None and row.lease_owner == owner and row.status == PROCESSING:
                row.lease_expires_at = self.now + lease_s

    async def journal_of_key(self, scope: str, key: str) -> ExistingJournal | None:
        self.check_up()
        found = self.by_key.get((scope, key))
        return None if found is None else self.journals[found].existing()

    async def journal_status(self, receipt_code: str) -> JournalStatus | None:
        self.check_up()
        if receipt_code not in self.by_code:
            return None
        row = self.journal(receipt_code)
        return JournalStatus(receipt_code, row.status, row.error, row.updated_at)

    # ---- NamedJournalReader and ExpiredHolds (server/adapters/postgres/holds.py) -------

    async def named_journal(self, receipt_code: str) -> NamedJournal | None:
        self.check_up()
        return self.journal(receipt_code).named() if receipt_code in self.by_code else None

    async def expired_holds(self, limit: int) -> list[NamedJournal]:
        """Pending holds whose deadline passed on the store clock, oldest deadline first."""
        self.check_up()
        due = sorted((r for r in self.journals.values() if r.status == HELD
                      and r.hold_expires_at is not None and r.hold_expires_at <= self.now),
                     key=lambda r: (r.hold_expires_at, r.id))
        return [r.named() for r in due[:limit]]

    # ---- AccountReader (straight from the "database": always fresh) -------------------

    async def get_accounts(self, account_ids: list[str], *, fresh: bool = False
                           ) -> dict[str, AccountSnapshot]:
        self.check_up()
        return self.snapshots(account_ids)

    # ---- the commit -------------------------------------------------------------------

    def _commit(self, staged: _Staged) -> None:
        codes = {r.receipt_code for r in staged.new} | {
            self.journals[j].receipt_code for j in staged.finished}
        if codes & self.reject:
            raise Rejected("the database refused this transaction's data")
        for row in staged.new:
            assert row.receipt_code not in self.by_code, f"receipt code {row.receipt_code} twice"
        for account_id, balance in staged.balances.items():
            account = self.accounts[account_id]
            held = staged.held.get(account_id, account.held)
            if held < 0 or (account.overdraft_limit is not None
                            and balance - held < -account.overdraft_limit):
                raise Rejected("the database refused this transaction (a constraint)")
        if self.lose_acks:
            self.lose_acks -= 1
            if not self.lost_commits_land:
                raise CommitUnknown("the commit was not acknowledged", session=self.commits)
            self._apply(staged)
            raise CommitUnknown("the commit was not acknowledged", session=self.commits)
        self._apply(staged)

    def _apply(self, staged: _Staged) -> None:
        for row in staged.new:
            self.journals[row.id] = row
            self.by_code[row.receipt_code] = row.id
            if row.scope is not None and row.key is not None:
                self.by_key[(row.scope, row.key)] = row.id
        for jid, (status, error, entries) in staged.finished.items():
            row = self.journals[jid]
            row.status, row.error, row.entries = status, error, entries
            row.lease_owner = row.lease_expires_at = None
        for jid, (status, reversed_) in staged.targets.items():
            row = self.journals[jid]
            row.status, row.reversed = status, reversed_
        for account_id, balance in staged.balances.items():
            old = self.accounts[account_id]
            self.accounts[account_id] = AccountSnapshot(
                old.id, old.currency, old.status, balance, old.overdraft_limit, old.contact,
                staged.held.get(account_id, old.held))
        self.commits += 1
