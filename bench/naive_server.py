"""The naive prototype Kassa is measured against (the bench `naive` scenario).

    gunicorn -w 2 -k bench.naive_server.NaiveWorker bench.naive_server:app

`POST /v1/transactions` does, per request: one asyncpg INSERT with its own commit, one
Redis INCR and one aiokafka `send` (acks=all), then answers 202 with a small JSON body. No
ledger, no balances, no batching: what one request costs when the work is done the obvious
way, on the same PostgreSQL, Redis and broker as Kassa. `GET /healthz` answers 200.

The Kafka event is handed over with `await producer.send(...)`, which returns once the
record is queued in the producer, not when the broker acknowledged it (that would be
`send_and_wait`). This is what the reference prototype this bench compares against did (3,400-3,800
req/s), and Kassa's 202 does not wait for the broker either (its outbox publishes after
the answer). The bench checks after each run that the topic holds one record per 2xx
answer, so no event is silently lost from the measurement; delivery failures are counted
in the worker log at shutdown.

Settings (environment): NAIVE_DATABASE_URL, NAIVE_REDIS_URL, NAIVE_KAFKA_BOOTSTRAP,
NAIVE_DB_POOL_MAX (per worker, default 10 as Kassa's KASSA_DB_POOL_MAX). The table and
topic must exist before the workers start (bench/naive.py makes them).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.peer_server import PeerWorker, create_pool, healthz

TABLE = "naive_transfers"
REDIS_KEY = "naive:transfers"
TOPIC = "naive-transfers"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    code        text PRIMARY KEY,
    amount      bigint NOT NULL,
    source      text NOT NULL,
    destination text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
)"""
INSERT = (f"INSERT INTO {TABLE} (code, amount, source, destination, payload) "
          "VALUES ($1, $2, $3, $4, $5::jsonb)")

log = logging.getLogger("bench.naive")


class NaiveWorker(PeerWorker):
    """The peers' worker (bench/peer_server.py): pinned like Kassa's."""


class State:
    pool: asyncpg.Pool
    redis: aioredis.Redis
    producer: AIOKafkaProducer
    undelivered = 0


state = State()


def _count_failure(future: Any) -> None:
    if future.cancelled() or future.exception() is not None:
        state.undelivered += 1


async def create_transfer(request: Request) -> Response:
    body = await request.body()
    try:
        tx = json.loads(body)
        amount, source, destination = int(tx["amount"]), str(tx["source"]), str(tx["destination"])
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": {"code": "validation_error"}}, status_code=422)
    code = "N" + secrets.token_hex(8)
    await state.pool.execute(INSERT, code, amount, source, destination, body.decode())
    await state.redis.incr(REDIS_KEY)
    delivery = await state.producer.send(TOPIC, value=body, key=code.encode())
    delivery.add_done_callback(_count_failure)
    return JSONResponse({"receipt_code": code, "status": "processing"}, status_code=202)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    env = os.environ
    state.pool = await create_pool("NAIVE_DATABASE_URL", "NAIVE_DB_POOL_MAX")
    state.redis = aioredis.Redis.from_url(env["NAIVE_REDIS_URL"])
    state.producer = AIOKafkaProducer(bootstrap_servers=env["NAIVE_KAFKA_BOOTSTRAP"], acks="all")
    await state.producer.start()
    try:
        yield
    finally:
        await state.producer.stop()  # flushes what is still queued
        if state.undelivered:
            log.error("%d Kafka sends failed", state.undelivered)
        await state.redis.aclose()
        await state.pool.close()


app = Starlette(routes=[Route("/v1/transactions", create_transfer, methods=["POST"]),
                        Route("/healthz", healthz)], lifespan=lifespan)
