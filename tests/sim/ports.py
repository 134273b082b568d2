"""The ports as one simulated process sees them: each awaited method is an await point
where tests/sim/faults.py may inject a fault, before the shared fakes are called.

A dead process's calls raise Killed (its tasks are being cancelled; any cleanup it tries,
`finally` blocks included, reaches nothing outside it), and its synchronous calls (a
receipt registration, a relay wake-up) do nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from core.ledger.decide import BatchDecision
from core.ledger.errors import Unavailable
from core.ledger.linked import Target
from core.ledger.models import AccountSnapshot, ErrorBody
from core.pipeline.links import NamedJournal
from core.pipeline.ports import (
    ClaimedJournal,
    ExistingJournal,
    IdempotencyRecord,
    JournalStatus,
    PendingJournal,
    RecordedJournal,
)
from tests.fakes.journals import FakeLedgerUnit
from tests.fakes.services import FakeIdempotencyCache, FakeStatusStore
from tests.sim.faults import (
    CRASH_AFTER,
    CRASH_BEFORE,
    LOST_ACK_LANDED,
    LOST_ACK_NOT_LANDED,
    SLOW,
    Killed,
)
from tests.sim.store import SimStore

if TYPE_CHECKING:
    from tests.sim.world import Process

T = TypeVar("T")


class Points:
    """The await points of one process."""

    def __init__(self, process: Process) -> None:
        self._process = process
        self._faults = process.world.faults
        self._store = process.world.store

    async def before(self, point: str, *, commit: bool = False) -> str | None:
        """Run the fault chosen for this point's entry; returns it for after()."""
        process = self._process
        if process.dead:
            raise Killed(point)
        fault = self._faults.choose(point, commit=commit)
        if fault is None:
            return None
        self._faults.count(fault, point)
        self._faults.log(f"{self._store.now:10.4f} {process.name:>6} {point}: {fault}")
        if fault == CRASH_BEFORE:
            process.world.kill(process, point)
            raise Killed(point)
        if fault == SLOW:
            await asyncio.sleep(self._faults.delay_s())
            if process.dead:
                raise Killed(point)
        if fault in (LOST_ACK_LANDED, LOST_ACK_NOT_LANDED):
            self._store.lose_acks = 1
            self._store.lost_commits_land = fault == LOST_ACK_LANDED
        return fault

    def after(self, point: str, fault: str | None) -> None:
        self._store.lose_acks = 0
        if fault == CRASH_AFTER:
            self._process.world.kill(self._process, point)
            raise Killed(point)

    async def call(self, point: str, run: Callable[[], Awaitable[T]], *,
                   commit: bool = False) -> T:
        fault = await self.before(point, commit=commit)
        try:
            result = await run()
        finally:
            self._store.lose_acks = 0
        self.after(point, fault)
        return result


class StoreView:
    """JournalStore, AccountReader, ExpiredHolds and NamedJournalReader of one process."""

    def __init__(self, points: Points, store: SimStore) -> None:
        self._p = points
        self._s = store

    async def insert_pending(self, journals: list[PendingJournal]) -> list[int | ExistingJournal]:
        return await self._p.call("db.insert_pending", lambda: self._s.insert_pending(journals),
                                  commit=True)

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[UnitView]:
        await self._p.before("db.unit.begin")
        fault: str | None = None
        try:
            async with self._s.unit() as unit:
                yield UnitView(self._p, unit)
                fault = await self._p.before("db.unit.commit", commit=True)
        finally:
            self._s.lose_acks = 0
        self._p.after("db.unit.commit", fault)

    async def recorded(self, receipt_codes: list[str], session: object | None
                       ) -> dict[str, RecordedJournal]:
        return await self._p.call("db.recorded", lambda: self._s.recorded(receipt_codes, session))

    async def mark_failed(self, journal_id: int, error: ErrorBody) -> bool:
        return await self._p.call("db.mark_failed", lambda: self._s.mark_failed(journal_id, error))

    async def claim_expired(self, owner: str, lease_s: float, limit: int,
                            held: list[int]) -> list[ClaimedJournal]:
        return await self._p.call("db.claim_expired",
                                  lambda: self._s.claim_expired(owner, lease_s, limit, held))

    async def renew_leases(self, owner: str, journal_ids: list[int], lease_s: float) -> None:
        await self._p.call("db.renew_leases",
                           lambda: self._s.renew_leases(owner, journal_ids, lease_s))

    async def journal_status(self, receipt_code: str) -> JournalStatus | None:
        return await self._p.call("db.journal_status", lambda: self._s.journal_status(receipt_code))

    async def journal_of_key(self, scope: str, key: str) -> ExistingJournal | None:
        return await self._p.call("db.journal_of_key", lambda: self._s.journal_of_key(scope, key))

    async def named_journal(self, receipt_code: str) -> NamedJournal | None:
        return await self._p.call("db.named_journal", lambda: self._s.named_journal(receipt_code))

    async def expired_holds(self, limit: int) -> list[NamedJournal]:
        return await self._p.call("db.expired_holds", lambda: self._s.expired_holds(limit))

    async def get_accounts(self, account_ids: list[str], *, fresh: bool = False
                           ) -> dict[str, AccountSnapshot]:
        return await self._p.call("db.get_accounts",
                                  lambda: self._s.get_accounts(account_ids, fresh=fresh))


class UnitView:
    """One LedgerUnit: every statement of it an await point."""

    def __init__(self, points: Points, unit: FakeLedgerUnit) -> None:
        self._p = points
        self._u = unit

    async def lock_unfinished(self, journal_ids: list[int]) -> set[int]:
        return await self._p.call("db.unit.lock_unfinished",
                                  lambda: self._u.lock_unfinished(journal_ids))

    async def lock_accounts(self, account_ids: list[str]) -> dict[str, AccountSnapshot]:
        return await self._p.call("db.unit.lock_accounts",
                                  lambda: self._u.lock_accounts(account_ids))

    async def lock_targets(self, receipt_codes: list[str]) -> dict[str, Target]:
        return await self._p.call("db.unit.lock_targets",
                                  lambda: self._u.lock_targets(receipt_codes))

    async def update_targets(self, targets: list[Target]) -> None:
        await self._p.call("db.unit.update_targets", lambda: self._u.update_targets(targets))

    async def write(self, decision: BatchDecision) -> None:
        await self._p.call("db.unit.write", lambda: self._u.write(decision))

    async def existing(self, journals: list[PendingJournal]) -> dict[tuple[str, str], ExistingJournal]:
        return await self._p.call("db.unit.existing", lambda: self._u.existing(journals))

    async def lock_for_new(self, account_ids: list[str], count: int
                           ) -> tuple[dict[str, AccountSnapshot], list[int]]:
        return await self._p.call("db.unit.lock_for_new",
                                  lambda: self._u.lock_for_new(account_ids, count))

    async def insert_finished(self, journals: list[PendingJournal], ids: list[int],
                              decision: BatchDecision) -> None:
        await self._p.call("db.unit.insert_finished",
                           lambda: self._u.insert_finished(journals, ids, decision))


class IdempotencyView:
    def __init__(self, points: Points, cache: FakeIdempotencyCache) -> None:
        self._p = points
        self._c = cache

    async def begin(self, scope: str, key: str, request_hash: str) -> IdempotencyRecord | None:
        return await self._p.call("redis.idem.begin", lambda: self._c.begin(scope, key, request_hash))

    async def complete(self, scope: str, key: str, record: IdempotencyRecord) -> None:
        await self._p.call("redis.idem.complete", lambda: self._c.complete(scope, key, record))

    async def abandon(self, scope: str, key: str) -> None:
        await self._p.call("redis.idem.abandon", lambda: self._c.abandon(scope, key))


class StatusView:
    def __init__(self, points: Points, statuses: FakeStatusStore) -> None:
        self._p = points
        self._s = statuses

    async def write_statuses(self, records: list[JournalStatus], ttl_s: int) -> None:
        await self._p.call("redis.statuses.write", lambda: self._s.write_statuses(records, ttl_s))

    async def read_status(self, receipt_code: str) -> JournalStatus | None:
        return await self._p.call("redis.statuses.read", lambda: self._s.read_status(receipt_code))


class ReceiptView:
    """ReceiptSource: codes from the shared service (they never repeat across processes)."""

    def __init__(self, points: Points, source: Any, process: Process) -> None:
        self._p = points
        self._r = source
        self._process = process

    async def next_codes(self, count: int) -> list[str]:
        codes: list[str] = await self._p.call("receipts.next_codes",
                                              lambda: self._r.next_codes(count))
        return codes

    def register(self, receipts: list[Any]) -> None:
        if not self._process.dead:
            self._r.register(receipts)

    async def get_receipt(self, code: str) -> Any:
        return await self._p.call("receipts.get", lambda: self._r.get_receipt(code))


def unavailable_if(down: bool, what: str) -> None:
    if down:
        raise Unavailable(f"{what} is unavailable", retry_after_s=1)
