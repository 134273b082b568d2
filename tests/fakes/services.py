"""In-memory fakes of the other ports: receipt source, notifier, status store, idempotency
cache, account view (a stale cache in front of the store), and an observer that records.

Each keeps what it was given for the test to read, and enforces what its port promises:
receipt codes never repeat, a status never replaces a later one, an idempotency key is
owned by one request at a time. `down = True` makes the I/O methods raise Unavailable,
as the real adapters do when their server is unreachable.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

from core.ledger.errors import Unavailable
from core.ledger.models import AccountSnapshot
from core.ledger.status import RANK
from core.pipeline.ports import (
    AccountReader,
    IdempotencyRecord,
    JournalStatus,
    Notification,
    ReceiptRecord,
    ReceiptStatus,
)

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def crockford(n: int, width: int = 16) -> str:
    digits = []
    for _ in range(width):
        n, d = divmod(n, 32)
        digits.append(CROCKFORD[d])
    return "".join(reversed(digits))


class FakeReceiptSource:
    def __init__(self, *, day: str = "20261202") -> None:
        self._day = day
        self._numbers = itertools.count(1)
        self.issued: set[str] = set()
        self.registered: list[ReceiptRecord] = []
        self.receipts: dict[str, ReceiptStatus] = {}
        self.down = False

    async def next_codes(self, count: int) -> list[str]:
        if self.down:
            raise Unavailable("the receipt service is unavailable", retry_after_s=1)
        codes = [f"RCP-{self._day}-{crockford(next(self._numbers))}" for _ in range(count)]
        assert self.issued.isdisjoint(codes), "receipt codes repeated"
        self.issued.update(codes)
        return codes

    def register(self, receipts: list[ReceiptRecord]) -> None:
        self.registered += receipts  # never raises, even while down (best effort)
        for r in receipts:
            # The service keeps the furthest status of each code: a batch delivered again
            # (the relay died before moving its cursor) never takes a receipt backwards.
            known = self.receipts.get(r.code)
            if known is None or RANK[known.status] <= RANK[r.status]:
                self.receipts[r.code] = ReceiptStatus(r.code, r.status, r.error_code,
                                                      "2026-12-02T00:00:01.000000Z")

    async def get_receipt(self, code: str) -> ReceiptStatus | None:
        if self.down:
            return None  # unreachable: None, as the port says
        return self.receipts.get(code)


class FakeNotifier:
    def __init__(self) -> None:
        self.sent: list[Notification] = []

    def notify(self, notification: Notification) -> None:
        self.sent.append(notification)


class FakeStatusStore:
    def __init__(self) -> None:
        self.records: dict[str, JournalStatus] = {}
        self.ttls: list[int] = []
        self.writes = 0
        self.reads = 0
        self.down = False

    async def write_statuses(self, records: list[JournalStatus], ttl_s: int) -> None:
        if self.down:
            raise Unavailable("redis is unavailable")
        self.writes += 1
        self.ttls.append(ttl_s)
        for record in records:
            current = self.records.get(record.receipt_code)
            if current is None or RANK[current.status] < RANK[record.status]:
                self.records[record.receipt_code] = record

    async def read_status(self, receipt_code: str) -> JournalStatus | None:
        if self.down:
            raise Unavailable("redis is unavailable")
        self.reads += 1
        return self.records.get(receipt_code)


class FakeIdempotencyCache:
    """With a `clock`, an in-flight marker (no receipt code yet) lapses `marker_ttl_s`
    after `begin`, as the real one's expiry does (a process that died mid-accept leaves it)."""

    def __init__(self, *, clock: Callable[[], float] | None = None,
                 marker_ttl_s: float = 10.0) -> None:
        self.records: dict[tuple[str, str], IdempotencyRecord] = {}
        self.abandoned: list[tuple[str, str]] = []
        self.down = False
        self._clock = clock
        self._marker_ttl_s = marker_ttl_s
        self._marked_at: dict[tuple[str, str], float] = {}

    def _check(self) -> None:
        if self.down:
            raise Unavailable("redis is unavailable")

    async def begin(self, scope: str, key: str, request_hash: str) -> IdempotencyRecord | None:
        self._check()
        found = self.records.get((scope, key))
        if found is not None and not self._lapsed((scope, key), found):
            return found
        self.records[(scope, key)] = IdempotencyRecord(request_hash)  # in flight: no code yet
        if self._clock is not None:
            self._marked_at[(scope, key)] = self._clock()
        return None

    def _lapsed(self, key: tuple[str, str], record: IdempotencyRecord) -> bool:
        if self._clock is None or record.receipt_code is not None:
            return False
        return self._clock() - self._marked_at.get(key, self._clock()) >= self._marker_ttl_s

    async def complete(self, scope: str, key: str, record: IdempotencyRecord) -> None:
        self._check()
        assert record.receipt_code is not None, "a completed record names its receipt"
        self.records[(scope, key)] = record

    async def abandon(self, scope: str, key: str) -> None:
        self._check()
        self.records.pop((scope, key), None)
        self.abandoned.append((scope, key))


class FakeAccountCache:
    """AccountReader: a possibly stale copy of `source`'s accounts, loaded on first read;
    `fresh=True` reads the source. `set_balances` is PostCommit's balances_committed hook."""

    def __init__(self, source: AccountReader) -> None:
        self._source = source
        self.cached: dict[str, AccountSnapshot] = {}
        self.fresh_reads = 0

    async def get_accounts(self, account_ids: list[str], *, fresh: bool = False
                           ) -> dict[str, AccountSnapshot]:
        if fresh:
            self.fresh_reads += 1
            return await self._source.get_accounts(account_ids, fresh=True)
        missing = [a for a in account_ids if a not in self.cached]
        if missing:
            self.cached |= await self._source.get_accounts(missing)
        return {a: self.cached[a] for a in account_ids if a in self.cached}

    def set_balances(self, balances: Mapping[str, int]) -> None:
        for account_id, balance in balances.items():
            old = self.cached.get(account_id)
            if old is not None:
                self.cached[account_id] = AccountSnapshot(old.id, old.currency, old.status,
                                                          balance, old.overdraft_limit, old.contact,
                                                          old.held)

    def stale(self, account: AccountSnapshot) -> None:
        """Make the cache hold `account` as it is (e.g. an old balance)."""
        self.cached[account.id] = account


class RecordingObserver:
    def __init__(self) -> None:
        self.accepted_n = 0
        self.refusals: list[str] = []
        self.finished_counts: dict[tuple[str, str], int] = {}
        self.batches: list[int] = []
        self.queue_reports: list[tuple[int, int, int, int]] = []

    def accepted(self, kind: str, seconds: float, count: int = 1) -> None:
        self.accepted_n += count

    def refused(self, code: str) -> None:
        self.refusals.append(code)

    def finished(self, counts: dict[tuple[str, str], int], accept_to_final_s: list[float]
                 ) -> None:
        for key, n in counts.items():
            self.finished_counts[key] = self.finished_counts.get(key, 0) + n

    def batch_executed(self, size: int, seconds: float) -> None:
        self.batches.append(size)

    def queue_changed(self, queued: int, capacity: int, busy_writers: int, writers: int) -> None:
        self.queue_reports.append((queued, capacity, busy_writers, writers))
