"""The ports core talks through; server/ implements them against the real servers."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

import msgspec

from core.ledger.decide import BatchDecision
from core.ledger.linked import Target
from core.ledger.models import AccountSnapshot, Entry, ErrorBody, Transaction


class ReceiptRecord(msgspec.Struct, frozen=True):
    """A receipt as the receipt service records it, once its transaction's outcome is known."""

    code: str
    type: str
    currency: str
    amount: int
    account_ids: list[str]
    status: str
    error_code: str | None


class ReceiptStatus(msgspec.Struct, frozen=True):
    code: str
    status: str
    error_code: str | None
    updated_at: str


class ReceiptSource(Protocol):
    """Receipt codes and receipt records (docs/design.md: codes before the accept, records after the outcome)."""

    async def next_codes(self, count: int) -> list[str]:
        """`count` fresh receipt codes (1 for a request, up to 1,000 for a whole batch).

        Codes come from a stock held in this process: while it has `count` codes this
        returns them without awaiting anything. Only when it ran dry does it wait for a
        refill, bounded by a timeout, and it raises core.ledger.errors.Unavailable when the
        source is down, slow or its breaker is open. Codes never repeat, across processes
        and hosts; a code handed out but never used is a gap.
        """
        ...

    def register(self, receipts: list[ReceiptRecord]) -> None:
        """Record receipts with their final status later, in batches; never blocks or
        raises (best effort: retried while the source is down, dropped when its queue
        is full)."""
        ...

    async def get_receipt(self, code: str) -> ReceiptStatus | None:
        """The source's view of a receipt's status, or None if unknown or unreachable."""
        ...


class Notification(msgspec.Struct, frozen=True):
    receipt_code: str
    channel: str  # "email" | "sms" | "push" | "log"
    recipient: str
    subject: str
    body: str
    traceparent: str | None = None  # its request's (tracing on): the send's span links it


class Notifier(Protocol):
    def notify(self, notification: Notification) -> None:
        """Queue one notification; best effort, never blocks or raises."""
        ...


# ---- PostgreSQL: the system of record -------------------------------------------------

class PendingJournal(msgspec.Struct, frozen=True):
    """A request to record durably before it is answered 202 (or waited on)."""

    receipt_code: str
    transaction: Transaction
    idempotency_scope: str | None
    idempotency_key: str | None
    request_hash: str | None
    mode: str  # "async" | "sync"
    accept_time_us: int
    lease_owner: str
    # The submitting request's X-Request-Id, carried to its outcome's log line when it is
    # applied in the accept commit (by the accept batcher, which serves no request). Not stored.
    request_id: str = "-"
    # The request's W3C traceparent while tracing is on: stored with the journal (the
    # relay's Kafka header), linked by the group commit. None when tracing is off.
    traceparent: str | None = None


class ExistingJournal(msgspec.Struct, frozen=True):
    """The journal already recorded under an idempotency key."""

    journal_id: int
    receipt_code: str
    request_hash: str | None
    mode: str
    status: str
    accept_time_us: int | None


class JournalStatus(msgspec.Struct, frozen=True):
    receipt_code: str
    status: str
    error: ErrorBody | None
    updated_at: str


class ClaimedJournal(msgspec.Struct, frozen=True):
    journal_id: int
    receipt_code: str
    transaction: Transaction


class RecordedJournal(msgspec.Struct, frozen=True):
    """A journal as recorded, read back after its commit's acknowledgement was lost."""

    journal_id: int
    receipt_code: str
    status: str
    error: ErrorBody | None
    entries: list[Entry]


class LedgerUnit(Protocol):
    """One database transaction of the executor; commits when its context exits cleanly."""

    async def lock_unfinished(self, journal_ids: list[int]) -> set[int]:
        """Lock the journals (id order) and return those still unfinished."""
        ...

    async def lock_accounts(self, account_ids: list[str]) -> dict[str, AccountSnapshot]:
        """Lock the accounts that exist, in id order (`SELECT … FOR UPDATE`)."""
        ...

    async def lock_targets(self, receipt_codes: list[str]) -> dict[str, Target]:
        """Lock the journals named by captures, voids and reversals (after the accounts)."""
        ...

    async def update_targets(self, targets: list[Target]) -> None:
        """Write the named journals' new status and reversed sum."""
        ...

    async def write(self, decision: BatchDecision) -> None:
        """Post the decision and finish its journals (recorded earlier as pending)."""
        ...

    async def existing(self, journals: list[PendingJournal]
                       ) -> dict[tuple[str, str], ExistingJournal]:
        """The journals already recorded under these journals' idempotency keys."""
        ...

    async def lock_for_new(self, account_ids: list[str], count: int
                           ) -> tuple[dict[str, AccountSnapshot], list[int]]:
        """As lock_accounts, and ids for `count` new journals, in one round trip."""
        ...

    async def insert_finished(self, journals: list[PendingJournal], ids: list[int],
                              decision: BatchDecision) -> None:
        """Record journals already decided, then post the decision, in this transaction.

        Raises core.ledger.errors.TransientConflict when an idempotency key was taken meanwhile
        by another transaction: the caller retries and finds it.
        """
        ...


class JournalStore(Protocol):
    """Every method raises core.ledger.errors.Unavailable when the database is unreachable.

    `insert_pending` and `unit` (on exit) commit: they raise Rejected when the database
    refuses some journal's data (the whole group is rolled back: split it to find the
    item), and CommitUnknown when the connection failed after COMMIT was sent (then
    `recorded` tells whether it landed).
    """

    async def insert_pending(self, journals: list[PendingJournal]) -> list[int | ExistingJournal]:
        """Record journals in one commit; per item its id or the journal its key already names."""
        ...

    def unit(self) -> AbstractAsyncContextManager[LedgerUnit]:
        ...

    async def recorded(self, receipt_codes: list[str], session: object | None
                       ) -> dict[str, RecordedJournal]:
        """The journals recorded under these codes, after first fencing `session` (the
        CommitUnknown's) so that its transaction is decided; on a fresh connection."""
        ...

    async def mark_failed(self, journal_id: int, error: ErrorBody) -> bool:
        """Finish an unfinished journal as failed with nothing posted; False if final."""
        ...

    async def claim_expired(self, owner: str, lease_s: float, limit: int,
                            held: list[int]) -> list[ClaimedJournal]:
        """Take over unfinished journals whose lease expired (`FOR UPDATE SKIP LOCKED`),
        except `held`: those this process has queued or running."""
        ...

    async def renew_leases(self, owner: str, journal_ids: list[int], lease_s: float) -> None:
        """Extend this owner's leases on journals it still holds, in one statement."""
        ...

    async def journal_status(self, receipt_code: str) -> JournalStatus | None:
        ...



class RecordedKeys(Protocol):
    async def journal_of_key(self, scope: str, key: str) -> ExistingJournal | None:
        """The journal recorded under this idempotency key, if any (raises Unavailable
        when the database is unreachable)."""
        ...


# ---- Redis: shared fast state ---------------------------------------------------------

class StatusStore(Protocol):
    async def write_statuses(self, records: list[JournalStatus], ttl_s: int) -> None:
        """Write many statuses at once; a status never replaces a later one."""
        ...

    async def read_status(self, receipt_code: str) -> JournalStatus | None:
        ...


class IdempotencyRecord(msgspec.Struct, frozen=True):
    request_hash: str
    receipt_code: str | None = None  # None while the first request is being accepted
    mode: str = "async"
    body: bytes | None = None  # an earlier version's stored answer: opaque, replayed as is
    processing_time: str | None = None  # an async request's, for its replayed answer


class IdempotencyCache(Protocol):
    async def begin(self, scope: str, key: str, request_hash: str) -> IdempotencyRecord | None:
        """Mark the key in flight; None if we own it now, else the record found."""
        ...

    async def complete(self, scope: str, key: str, record: IdempotencyRecord) -> None:
        ...

    async def abandon(self, scope: str, key: str) -> None:
        ...



class AccountReader(Protocol):
    async def get_accounts(self, account_ids: list[str], *, fresh: bool = False
                           ) -> dict[str, AccountSnapshot]:
        """A possibly stale view for pre-validation (the executor rechecks under lock);
        `fresh`: as the database has it now (read again before refusing on funds)."""
        ...
