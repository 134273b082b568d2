"""Idempotency-Key handling: Redis as the fast path, the journals' unique (scope, key) as
the authority. A repeat with the same request is answered as the first one was; with a
different request it is refused (422), and while the first is being accepted, 409."""

from __future__ import annotations

import functools
import hashlib
import logging

import msgspec

from core.ledger.errors import IdempotencyInProgress, IdempotencyKeyReused, KassaError, Unavailable
from core.ledger.models import Transaction
from core.pipeline.ports import ExistingJournal, IdempotencyCache, IdempotencyRecord
from core.pipeline.submission import Accepted, Replayed, Submission, Submitted, format_ms

log = logging.getLogger("kassa.accept")

_canonical = msgspec.json.Encoder(order="sorted")


# Fields added to Transaction after keys were first hashed: left out while unset, so a
# plain transaction hashes as it always did (keys are remembered across upgrades).
_LATER_FIELDS = ("hold_expires_in_s", "target")


def request_hash(tx: Transaction) -> str:
    """The same request in any JSON spelling hashes the same: the normalised form, with
    object keys (metadata included) in sorted order."""
    form = msgspec.to_builtins(tx)
    for name in _LATER_FIELDS:
        if form[name] is None:
            del form[name]
    return hashlib.sha256(_canonical.encode(form)).hexdigest()


@functools.lru_cache(maxsize=1024)
def scope_of(api_key: str) -> str:
    """Idempotency keys are scoped to the API key; store a digest, never the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:24]


def submission(tx: Transaction, api_key: str, idempotency_key: str | None, wait: bool
               ) -> Submission:
    """A submission scoped to its caller, hashed only when a key makes repeats matter."""
    return Submission(tx, scope_of(api_key), idempotency_key,
                      request_hash(tx) if idempotency_key else None, wait)


class IdempotencyGate:
    """The Redis side of the flow around one keyed submission; the database's unique key
    decides whenever Redis cannot (down, expired, flushed)."""

    def __init__(self, cache: IdempotencyCache) -> None:
        self._cache = cache

    async def begin(self, sub: Submission) -> tuple[Submitted | None, bool]:
        """(the replay of an earlier request, or None; whether this request owns the key)."""
        assert sub.idempotency_key is not None
        try:
            record = await self._cache.begin(sub.scope, sub.idempotency_key, sub.request_hash or "")
        except Unavailable:
            return None, False  # Redis down: the database constraint still decides
        if record is None:
            return None, True
        if record.request_hash != sub.request_hash:
            raise IdempotencyKeyReused("this Idempotency-Key was used with a different request")
        if record.receipt_code is None:
            raise IdempotencyInProgress("a request with this Idempotency-Key is being accepted",
                                        retry_after_s=1)
        if record.mode == "async" and record.body is not None:  # stored by an earlier version
            return Accepted(record.receipt_code, "", replayed=True, stored_answer=record.body), False
        if record.mode == "async" and record.processing_time is not None:
            return Accepted(record.receipt_code, record.processing_time, replayed=True), False
        return Replayed(record.receipt_code, ""), False

    async def remember(self, sub: Submission, code: str, processing_time: str) -> None:
        assert sub.idempotency_key is not None
        mode = "sync" if sub.wait else "async"
        # An async request's answer is fully given by its code and processing time; a sync
        # one's is the journal, read again on replay.
        record = IdempotencyRecord(sub.request_hash or "", code, mode,
                                   processing_time=processing_time if mode == "async" else None)
        try:
            await self._cache.complete(sub.scope, sub.idempotency_key, record)
        except KassaError as exc:
            log.warning("idempotency record not cached (the database still has it): %s", exc)

    async def abandon(self, sub: Submission) -> None:
        assert sub.idempotency_key is not None
        try:
            await self._cache.abandon(sub.scope, sub.idempotency_key)
        except KassaError as exc:
            log.warning("idempotency marker not cleared (it expires): %s", exc)


def replay_of_journal(sub: Submission, existing: ExistingJournal) -> Accepted | Replayed:
    """The answer to a repeat the database caught (its unique key on scope and key)."""
    if existing.request_hash != sub.request_hash:
        raise IdempotencyKeyReused("this Idempotency-Key was used with a different request")
    processing_time = format_ms((existing.accept_time_us or 0) / 1e6)
    if existing.mode == "async":
        return Accepted(existing.receipt_code, processing_time, replayed=True)
    return Replayed(existing.receipt_code, processing_time)
