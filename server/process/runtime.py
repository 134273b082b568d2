"""The composition root: builds one worker process's pipeline from settings and tears it
down in reverse order of dependence. Nothing else constructs adapters.

The HTTP layer gets only `Runtime.api` (server/http/api.py): the use cases, never a
database or Redis client. The rest of Runtime is lifecycle: what `stop` must close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio as aioredis

from core.kit.batcher import Batcher
from core.kit.breaker import CLOSED, CircuitBreaker
from core.kit.code_cipher import CodeCipher
from core.kit.rate_limit import Quota
from core.pipeline.accept import TransactionService
from core.pipeline.accounts import AccountService
from core.pipeline.effects import PostCommit
from core.pipeline.expiry import HoldExpiry
from core.pipeline.health import CodeSupply, HealthCheck
from core.pipeline.links import LinkedRequests
from core.pipeline.listing import Listing
from core.pipeline.pool import ProcessorPool
from core.pipeline.ports import ReceiptSource
from core.pipeline.queries import StatusQuery
from core.pipeline.recovery import RecoverySweeper
from core.pipeline.tracker import StatusTracker
from core.pipeline.transaction_metadata import TransactionMetadata
from core.pipeline.transaction_query import TransactionQuery
from core.pipeline.webhooks import Webhooks
from server.adapters.grpc.clients import NotificationClient, ReceiptClient, breaker_states
from server.adapters.grpc.receipt_client import ReceiptRegistrar
from server.adapters.grpc.security import GrpcSecurity
from server.adapters.kafka.relay import OutboxRelay
from server.adapters.local_receipts import LocalReceiptSource
from server.adapters.postgres.accounts import PgAccountStore
from server.adapters.postgres.holds import PgHolds
from server.adapters.postgres.journals import PgJournalStore
from server.adapters.postgres.listing import PgListings
from server.adapters.postgres.monitoring import PgMonitoring
from server.adapters.postgres.nodes import keep_node_id, lease_node_id, release_node_ids
from server.adapters.postgres.pool import RESOURCE_ALARM, create_pool
from server.adapters.postgres.receipt_key import receipt_code_secret
from server.adapters.postgres.webhooks import PgWebhooks
from server.adapters.prometheus import HTTP_METRICS, PrometheusObserver, render
from server.adapters.redis.account_cache import RedisAccountCache
from server.adapters.redis.client import create_client, new_breaker
from server.adapters.redis.health import RedisPing
from server.adapters.redis.idempotency import RedisIdempotencyCache
from server.adapters.redis.rate_limit import RedisRateLimiter, rate_limiter
from server.adapters.redis.status import RedisStatusStore
from server.http.api import Api
from server.http.auth import ApiKeys
from server.process.key_reload import KeyFileWatch
from server.process.settings import Settings, parse_api_keys
from server.tracing import setup as tracing
from server.tracing import spans

log = logging.getLogger("kassa.runtime")
# After the database refused a statement for lack of resources (a full disk), /readyz says
# so for this long; then it is ready again until the next refusal, so a freed disk is
# found by the next writes the load balancer sends.
REFUSING_FOR_S = 5.0


NODE_LEASE_S = 30.0


@dataclass
class Runtime:
    settings: Settings
    keys: ApiKeys
    db: asyncpg.Pool
    redis: aioredis.Redis | None
    accounts: PgAccountStore
    journals: PgJournalStore
    service: TransactionService
    status: StatusQuery
    pool: ProcessorPool
    tracker: StatusTracker
    journal_batcher: Batcher  # type: ignore[type-arg]
    receipts: ReceiptSource
    owner: str
    notifier: NotificationClient | None = None
    relay: OutboxRelay | None = None
    receipt_registrar: ReceiptRegistrar | None = None
    account_cache: RedisAccountCache | None = None
    limiter: RedisRateLimiter | None = None
    redis_breaker: CircuitBreaker | None = None
    background: list[asyncio.Task[None]] = field(default_factory=list)
    stopping: bool = False
    api: Api = field(init=False)  # what the HTTP layer gets (build_api)

    def dependency_states(self) -> dict[str, str]:
        """Circuit breaker states of remote dependencies, for /readyz."""
        clients = [c for c in (self.receipts, self.notifier)
                   if isinstance(c, ReceiptClient | NotificationClient)]
        states = breaker_states(*clients)
        if self.redis_breaker is not None:
            states["redis_breaker"] = self.redis_breaker.state
        return states

    def receipt_codes(self) -> CodeSupply:
        """The codes this worker holds from the receipt service, for /readyz."""
        assert isinstance(self.receipts, ReceiptClient)
        breaker, codes = self.receipts.breaker, self.receipts.codes
        return CodeSupply(codes.available, source_failing=(
            codes.failing or breaker.state != CLOSED or breaker.failures > 0))

    async def stop(self) -> None:
        """Stop accepting, finish in-flight work, flush batches, close pools (seed order)."""
        self.stopping = True
        s = self.settings
        await self.pool.close(s.shutdown_timeout_s)
        await self.journal_batcher.close()
        for task in self.background:
            task.cancel()
        for task in self.background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.journals.release_leases(self.owner)
        with contextlib.suppress(Exception):
            await release_node_ids(self.db, self.owner)
        if isinstance(self.receipts, ReceiptClient):
            await self.receipts.close()
        if self.notifier is not None:
            await self.notifier.close()
        if self.relay is not None:
            await self.relay.close()
        if self.receipt_registrar is not None:
            await self.receipt_registrar.close()
        await self.tracker.flush()
        if self.account_cache is not None:
            await self.account_cache.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.close()
        tracing.shutdown()  # export the spans still buffered


def rate_limit(limiter: RedisRateLimiter | None) -> Callable[[str], Awaitable[Quota | None]]:
    """Per-key rate limit when KASSA_RATE_LIMIT is set (429 with Retry-After), and what is
    left of the key's quota (None when unset)."""
    async def limit(api_key: str) -> Quota | None:
        return await limiter.check(api_key) if limiter is not None else None

    return limit


def build_api(runtime: Runtime) -> Api:
    """The use cases over this runtime's adapters, for the HTTP layer."""
    monitoring = PgMonitoring(runtime.db)
    return Api(
        transactions=runtime.service,
        accounts=AccountService(runtime.accounts, runtime.account_cache),
        queries=TransactionQuery(runtime.accounts, runtime.status),
        transaction_metadata=TransactionMetadata(
            runtime.accounts, TransactionQuery(runtime.accounts, runtime.status)),
        listing=Listing(PgListings(runtime.db), runtime.status),
        links=LinkedRequests(PgHolds(runtime.db)),
        health=HealthCheck(database=monitoring,
                           redis=(RedisPing(runtime.redis, runtime.redis_breaker)
                                  if runtime.redis is not None else None),
                           has_room=lambda: runtime.pool.has_room,
                           dependency_states=runtime.dependency_states,
                           stopping=lambda: runtime.stopping,
                           # Writes need codes: with a receipt service, its write breaker
                           # open or its codes gone while it is unreachable is not ready.
                           receipt_codes=(runtime.receipt_codes
                                          if isinstance(runtime.receipts, ReceiptClient) else None),
                           required=(("receipt_service",)
                                     if isinstance(runtime.receipts, ReceiptClient) else ()),
                           database_refusing=lambda: RESOURCE_ALARM.recent(REFUSING_FOR_S)),
        keys=runtime.keys, limit=rate_limit(runtime.limiter),
        metrics=None if runtime.settings.metrics_port else render,  # else the master's
        metrics_token=runtime.settings.metrics_token,
        body_size_max=runtime.settings.body_size_max, record_request=HTTP_METRICS.record,
        webhooks=Webhooks(PgWebhooks(runtime.db),
                          endpoints_max=runtime.settings.webhook_endpoints_max,
                          window_s=runtime.settings.webhook_retry_window_s))


def receipt_source(settings: Settings, node_id: int, cipher: CodeCipher) -> ReceiptSource:
    """The receipt service over gRPC when configured, else codes made in this process."""
    if not settings.receipt_service_addr:
        return LocalReceiptSource(node_id, cipher)
    client = ReceiptClient(
        settings.receipt_service_addr, cipher=cipher, block_size=settings.receipt_block_size,
        batch_size_max=settings.receipt_batch_size,
        flush_interval_ms=settings.receipt_flush_interval_ms,
        timeout_ms=settings.receipt_timeout_ms, pending_max=settings.receipt_pending_max,
        retry_max_ms=settings.receipt_retry_max_ms,
        breaker_failures_max=settings.breaker_failures_max,
        breaker_reset_ms=settings.breaker_reset_s * 1000,
        security=GrpcSecurity.from_settings(settings))
    client.start()
    return client


def notification_client(settings: Settings) -> NotificationClient | None:
    if not settings.notification_service_addr:
        return None
    client = NotificationClient(
        settings.notification_service_addr, batch_size_max=settings.notification_batch_size,
        flush_interval_ms=settings.notification_flush_interval_ms,
        pending_max=max(settings.processor_queue_size, settings.notification_batch_size),
        breaker_failures_max=settings.breaker_failures_max,
        breaker_reset_ms=settings.breaker_reset_s * 1000,
        security=GrpcSecurity.from_settings(settings))
    client.start()
    return client


async def build_runtime(settings: Settings) -> Runtime:
    assert settings.database_url, "kassa serve sets KASSA_DATABASE_URL for its workers"
    owner = f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"
    tracing.configure()  # after the fork: OTEL_* decide (server/tracing/setup.py)
    pipeline_spans = spans.pipeline_spans()
    observer = PrometheusObserver()
    db = await create_pool(settings.database_url, max_size=settings.db_pool_max,
                           min_size=min(settings.db_pool_min, settings.db_pool_max))
    redis = create_client(settings.redis_url) if settings.redis_url else None
    # One breaker for the Redis calls of requests and the tracker (the rate limiter keeps
    # its own): a stalled Redis costs a few socket timeouts, then nothing.
    redis_breaker = (new_breaker(settings.breaker_failures_max, settings.redis_breaker_reset_ms)
                     if redis is not None else None)
    journals = PgJournalStore(db, lease_s=settings.lease_s)
    account_cache = (RedisAccountCache(redis, journals, size=settings.account_cache_size,
                                       ttl_ms=settings.account_cache_ttl_ms)
                     if redis is not None else None)
    status_store = RedisStatusStore(redis, breaker=redis_breaker) if redis is not None else None
    tracker = StatusTracker(status_store, flush_interval_ms=settings.status_update_interval_ms,
                            redis_ttl_s=settings.status_ttl_s,
                            memory_ttl_s=settings.status_memory_ttl_s,
                            entries_max=settings.status_memory_max)
    node_id = -1
    if not settings.receipt_service_addr:  # codes made here carry a leased node id
        node_id = await lease_node_id(db, owner, NODE_LEASE_S,
                                      settings.node_id if settings.node_id >= 0 else None)
    receipts = receipt_source(settings, node_id, CodeCipher(await receipt_code_secret(db)))
    notifier = notification_client(settings)
    # The relay publishes the events and registers the receipts of the journals it reads
    # (its leader only); the webhooks are sent by a process of their own (`kassa
    # webhook-sender`, started by `kassa serve`), off the serving workers.
    registrar = ReceiptRegistrar.from_settings(settings)
    # Without Kafka and a receipt service (in-process tests) there is nothing to relay.
    relay = OutboxRelay(settings.database_url, settings.kafka_bootstrap_servers,
                        settings.kafka_topic, batch_size_max=settings.relay_batch_max,
                        poll_interval_ms=settings.relay_poll_interval_ms,
                        linger_ms=settings.relay_linger_ms,
                        standby_interval_ms=settings.relay_standby_interval_ms,
                        step_down_after_s=settings.relay_step_down_after_s,
                        register_receipts=registrar.register if registrar else None,
                        ) if settings.kafka_bootstrap_servers or registrar else None
    single = settings.executor == "single"
    pool = ProcessorPool(
        journals, PostCommit(tracker=tracker, notifier=notifier,
                             balances_committed=account_cache.set_balances if account_cache else None,
                             wake_relay=relay.wake if relay else None, observer=observer),
        queue_size_max=settings.processor_queue_size,
        writers=max(settings.executor_writers, 8) if single else settings.executor_writers,
        batch_max=1 if single else settings.executor_batch_max,
        workers=settings.processor_workers, attempts_max=settings.execute_attempts_max,
        apply_at_accept=settings.accept_mode == "apply" and not single, observer=observer,
        effect_queue_max=settings.effect_queue_max,
        commit_check_timeout_s=settings.commit_check_timeout_ms / 1000,
        spans=pipeline_spans,
    )
    journal_batcher: Batcher = Batcher(  # type: ignore[type-arg]
        "accept", spans.traced_sink("kassa.group_commit", pool.record),
        batch_size_max=settings.accept_batch_max,
        flush_interval_ms=settings.accept_flush_interval_ms,
        in_flight_max=settings.accept_in_flight_max,
        pending_max=settings.processor_queue_size, on_flush=observer.accept_flushed)
    service = TransactionService(
        journals=journal_batcher, receipts=receipts, accounts=account_cache or journals,
        pool=pool,
        idempotency=(RedisIdempotencyCache(redis, ttl_s=settings.idempotency_ttl_s,
                                           breaker=redis_breaker) if redis else None),
        owner=owner, wait_timeout_s=settings.transaction_timeout_s, observer=observer,
        spans=pipeline_spans, recorded_keys=journals)
    runtime = Runtime(
        settings=settings, keys=ApiKeys(parse_api_keys(settings.api_keys or "")), db=db,
        redis=redis, accounts=PgAccountStore(db), journals=journals, service=service,
        status=StatusQuery(tracker, status_store, receipts, journals), pool=pool,
        tracker=tracker, journal_batcher=journal_batcher, receipts=receipts, owner=owner,
        notifier=notifier, relay=relay, receipt_registrar=registrar,
        account_cache=account_cache,
        limiter=rate_limiter(redis, settings), redis_breaker=redis_breaker)
    runtime.api = build_api(runtime)
    journal_batcher.start()
    pool.start()
    if relay is not None:
        await relay.start()
    if account_cache is not None:
        await account_cache.start()
    sweeper = RecoverySweeper(journals, pool, owner=owner, lease_s=settings.lease_s,
                              interval_s=settings.sweep_interval_s)
    runtime.background += [asyncio.create_task(tracker.run(), name="tracker"),
                           asyncio.create_task(sweeper.run(), name="sweeper"),
                           asyncio.create_task(HoldExpiry(
                               PgHolds(db), service,
                               interval_s=settings.hold_expiry_interval_s).run(),
                               name="hold-expiry"),
                           asyncio.create_task(observer.run_gauges(
                               PgMonitoring(db).backlog, tracker), name="gauges")]
    if settings.api_keys_file:
        watch = KeyFileWatch(settings.api_keys_file, runtime.keys.replace, runtime.keys.keys)
        runtime.background.append(asyncio.create_task(
            watch.run(settings.api_keys_poll_interval_ms / 1000), name="api-keys"))
    if isinstance(receipts, LocalReceiptSource):
        runtime.background.append(asyncio.create_task(keep_node_id(
            db, node_id, owner, NODE_LEASE_S, lambda n: setattr(receipts, "node_id", n)),
            name="node-lease"))
    return runtime
