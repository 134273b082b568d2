"""The pipeline wired as server/process/runtime.py wires it, on the in-memory fakes of
tests/fakes: no server is started (the fixtures of tests/conftest.py that start
PostgreSQL or Redis are used only on request, and no test here requests them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import pytest

from core.kit.batcher import Batcher
from core.ledger.models import Transaction
from core.ledger.validation import normalize_transaction
from core.pipeline.accept import TransactionService
from core.pipeline.effects import PostCommit
from core.pipeline.pool import ProcessorPool
from core.pipeline.ports import PendingJournal
from core.pipeline.submission import Submission
from core.pipeline.tracker import StatusTracker
from tests.fakes import (
    FakeAccountCache,
    FakeIdempotencyCache,
    FakeJournalStore,
    FakeNotifier,
    FakeReceiptSource,
    FakeStatusStore,
    RecordingObserver,
)

OWNER = "node-a"
_codes = count(1)


def transfer(amount: int, source: str = "alice", destination: str = "bob") -> Transaction:
    return normalize_transaction("transfer", "USD", amount=amount, source=source,
                                 destination=destination)


def deposit(amount: int, destination: str = "alice") -> Transaction:
    return normalize_transaction("deposit", "USD", amount=amount, destination=destination)


def pending(tx: Transaction, *, key: str | None = None, request_hash: str = "h1",
            owner: str = OWNER) -> PendingJournal:
    """A new journal as the accept path hands it over (a unique receipt code each time)."""
    return PendingJournal(f"RCP-20261201-{next(_codes):016d}", tx, "scope" if key else None, key,
                          request_hash if key else None, "async", 100, owner)


def submission(tx: Transaction, *, key: str | None = None, request_hash: str | None = None,
               wait: bool = False) -> Submission:
    return Submission(tx, "scope", key, request_hash or (f"hash-{key}" if key else None), wait)


@dataclass
class Pipeline:
    store: FakeJournalStore
    receipts: FakeReceiptSource
    notifier: FakeNotifier
    status_store: FakeStatusStore
    idempotency: FakeIdempotencyCache
    cache: FakeAccountCache
    observer: RecordingObserver
    tracker: StatusTracker
    pool: ProcessorPool
    batcher: Batcher[Any, Any]
    service: TransactionService
    relay_wakes: list[None] = field(default_factory=list)

    async def drain(self) -> None:
        """Finish what is queued (writers and effects) and stop: the pool's own close."""
        await self.pool.close(timeout_s=5)


PipelineFactory = Callable[..., Awaitable[Pipeline]]


@pytest.fixture
async def make_pipeline() -> AsyncIterator[PipelineFactory]:
    """Build a started pipeline; accounts alice, bob (USD, no overdraft) and carol
    (overdraft 50) exist, alice with 100. Keyword arguments go to ProcessorPool;
    `idempotency=False` runs without the idempotency cache (Redis absent)."""
    made: list[Pipeline] = []

    async def build(*, idempotency: bool = True, wait_timeout_s: float = 5.0,
                    start: bool = True, **pool_options: Any) -> Pipeline:
        store = FakeJournalStore(lease_s=30)
        store.add_account("alice", 100, contact={"email": "alice@example.com"})
        store.add_account("bob", 0, contact={"phone": "+15550100"})
        store.add_account("carol", 0, overdraft_limit=50)
        store.add_account("@world:USD", 0, overdraft_limit=None)
        receipts, notifier, observer = FakeReceiptSource(), FakeNotifier(), RecordingObserver()
        status_store, idem, cache = FakeStatusStore(), FakeIdempotencyCache(), FakeAccountCache(store)
        tracker = StatusTracker(status_store, flush_interval_ms=10, redis_ttl_s=60,
                                memory_ttl_s=60)
        wakes: list[None] = []
        options: dict[str, Any] = {"queue_size_max": 100, "writers": 1, "batch_max": 10,
                                   "workers": 1, "attempts_max": 3}
        options.update(pool_options)
        pool = ProcessorPool(store, PostCommit(tracker=tracker,
                                               notifier=notifier,
                                               balances_committed=cache.set_balances,
                                               wake_relay=lambda: wakes.append(None),
                                               observer=observer),
                             observer=observer, **options)
        batcher: Batcher[Any, Any] = Batcher("accept", pool.record, batch_size_max=50,
                                             flush_interval_ms=1)
        service = TransactionService(journals=batcher, receipts=receipts, accounts=cache,
                                     pool=pool, idempotency=idem if idempotency else None,
                                     owner=OWNER, wait_timeout_s=wait_timeout_s,
                                     observer=observer, recorded_keys=store)
        pipeline = Pipeline(store, receipts, notifier, status_store, idem, cache, observer,
                            tracker, pool, batcher, service, wakes)
        batcher.start()
        if start:
            pool.start()
        made.append(pipeline)
        return pipeline

    yield build
    for pipeline in made:
        await pipeline.batcher.close()
        await pipeline.pool.close(timeout_s=0)
