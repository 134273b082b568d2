"""The simulated database: tests/fakes' FakeJournalStore on the loop's virtual clock, with
what the simulator and its checks need besides: the commit log (every journal finished,
in commit order, with the status and entries that commit gave it, and every account
status change between them), the relay's cursors and advisory lock, and a broker.

The fake's rules hold as they are (all-or-nothing commits, unique keys, forward-only
statuses, lease clock); `on_commit` lets the model replay each commit as it happens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.ledger.errors import Unavailable
from core.ledger.models import AccountSnapshot, Entry, ErrorBody
from core.ledger.status import FAILED, HELD, PROCESSING
from core.pipeline.links import NamedJournal
from core.pipeline.ports import ClaimedJournal
from tests.fakes.journals import FakeJournalStore, _Staged


@dataclass(frozen=True)
class Finish:
    """One journal finished by a commit, as that commit left it."""

    journal_id: int
    status: str
    entries: tuple[Entry, ...]
    at: float


@dataclass(frozen=True)
class StatusChange:
    account_id: str
    status: str


LogEntry = Finish | StatusChange


@dataclass
class Broker:
    """Kafka as the relay sees it: what was published (duplicates included)."""

    published: list[str] = field(default_factory=list)
    down: bool = False

    def publish(self, codes: list[str]) -> None:
        if self.down:
            raise Unavailable("the broker is unreachable")
        self.published += codes


class SimStore(FakeJournalStore):
    def __init__(self, clock: Callable[[], float], *, lease_s: float) -> None:
        self._clock = clock
        super().__init__(lease_s=lease_s)
        self.log: list[LogEntry] = []
        self.finished_order: list[int] = []  # the relay's feed: journals by commit order
        self.cursors: dict[str, int] = {"kafka": 0, "receipts": 0}
        self.relay_holder: Any = None  # the process whose session holds the relay lock
        self.on_commit: Callable[[list[LogEntry]], None] | None = None
        # Indexes for the sweepers' reads, which the fake answers by scanning every journal
        # (a run calls them thousands of times).
        self.unfinished: dict[int, None] = {}
        self.recorded_at: dict[int, float] = {}  # journal id → when its insert committed
        self.holding: dict[int, None] = {}

    @property  # type: ignore[override]
    def now(self) -> float:
        return self._clock()

    @now.setter
    def now(self, value: float) -> None:  # the loop's clock rules; tests' moves are ignored
        pass

    def _apply(self, staged: _Staged) -> None:
        at = self._clock()
        done = [Finish(r.id, r.status, tuple(r.entries), at) for r in staged.new
                if r.status != PROCESSING]
        done += [Finish(jid, status, tuple(entries), at)
                 for jid, (status, _error, entries) in staged.finished.items()]
        super()._apply(staged)
        for row in staged.new:
            self.recorded_at[row.id] = at
            if row.status == PROCESSING:
                self.unfinished[row.id] = None
        for jid in [*(f.journal_id for f in done), *staged.targets]:
            self.unfinished.pop(jid, None)
            if self.journals[jid].status == HELD:
                self.holding[jid] = None
            else:
                self.holding.pop(jid, None)
        self._logged(done)

    async def mark_failed(self, journal_id: int, error: ErrorBody) -> bool:
        finished = await super().mark_failed(journal_id, error)
        if finished:
            self.unfinished.pop(journal_id, None)
            self._logged([Finish(journal_id, FAILED, (), self._clock())])
        return finished

    async def claim_expired(self, owner: str, lease_s: float, limit: int,
                            held: list[int]) -> list[ClaimedJournal]:
        """The fake's rule, over the unfinished journals only."""
        self.check_up()
        claimed: list[ClaimedJournal] = []
        ours, now = set(held), self.now
        for jid in sorted(self.unfinished):
            row = self.journals[jid]
            if len(claimed) == limit:
                break
            if (row.lease_expires_at is not None and row.lease_expires_at < now
                    and jid not in ours):
                row.lease_owner, row.lease_expires_at = owner, now + lease_s
                claimed.append(ClaimedJournal(jid, row.receipt_code, row.transaction))
        return claimed

    async def expired_holds(self, limit: int) -> list[NamedJournal]:
        """The fake's rule, over the pending holds only."""
        self.check_up()
        rows = [self.journals[j] for j in self.holding]
        due = sorted((r for r in rows if r.hold_expires_at is not None
                      and r.hold_expires_at <= self.now), key=lambda r: (r.hold_expires_at, r.id))
        return [r.named() for r in due[:limit]]

    async def set_status(self, account_id: str, status: str) -> None:
        """An operator locks or unlocks an account (one statement, its own commit): it
        waits for the row lock, which a unit holds until it commits (the fake's units
        hold one lock for all rows)."""
        async with self._unit_lock:
            self._set_status(account_id, status)

    def _set_status(self, account_id: str, status: str) -> None:
        self.check_up()
        old = self.accounts[account_id]
        self.accounts[account_id] = AccountSnapshot(old.id, old.currency, status, old.balance,
                                                    old.overdraft_limit, old.contact, old.held)
        self.log.append(StatusChange(account_id, status))
        if self.on_commit is not None:
            self.on_commit([self.log[-1]])

    def _logged(self, done: list[LogEntry]) -> None:
        self.log += done
        self.finished_order += [f.journal_id for f in done if isinstance(f, Finish)]
        if self.on_commit is not None and done:
            self.on_commit(done)
