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
from core.ledger.status import FAILED, PROCESSING
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
        self._logged(done)

    async def mark_failed(self, journal_id: int, error: ErrorBody) -> bool:
        finished = await super().mark_failed(journal_id, error)
        if finished:
            self._logged([Finish(journal_id, FAILED, (), self._clock())])
        return finished

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
