"""Webhook endpoints and deliveries (migration 014): the WebhookStore port of
core/pipeline/webhooks.py on the pool, and the relay's SQL on its dedicated connection
(the 'webhooks' sink that creates deliveries, and the sender's claims and outcomes)."""

from __future__ import annotations

import datetime as dt

import asyncpg

from core.pipeline.webhooks import CreatedEndpoint, DeliveryView, EndpointsFull, EndpointView
from server.adapters.postgres.outbox import ADVANCE_SQL, EVENT_COLUMNS, OutboxSession
from server.adapters.postgres.pool import converted_errors, iso

MESSAGE_ID_PREFIX = "msg_"

# One statement: the count check and the insert see the same snapshot; two registrations
# at once may both pass it, which only bends a soft limit by one.
CREATE_SQL = """
INSERT INTO webhook_endpoints (id, url, events, secret)
SELECT $1, $2, $3, $4 WHERE (SELECT count(*) FROM webhook_endpoints) < $5
RETURNING created_at
"""
ENDPOINT_COLUMNS = "id, url, events, created_at"
DELIVERY_COLUMNS = """id, endpoint_id, receipt_code, event, status, attempts, next_attempt_at,
last_attempt_at, last_status, last_error, created_at"""
DELIVERIES_SQL = f"""
SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
WHERE endpoint_id = $1 AND ($2::text IS NULL OR status = $2) AND id < $3
ORDER BY id DESC LIMIT $4
"""
REDELIVER_SQL = f"""
UPDATE webhook_deliveries
SET status = 'pending', next_attempt_at = now(), retry_until = now() + $3 * interval '1 second'
WHERE endpoint_id = $1 AND id = $2
RETURNING {DELIVERY_COLUMNS}
"""


class PgWebhooks:
    def __init__(self, db: asyncpg.Pool) -> None:
        self._db = db

    async def create(self, endpoint_id: str, url: str, events: list[str] | None,
                     secret: str, endpoints_max: int) -> CreatedEndpoint:
        async with converted_errors():
            created = await self._db.fetchval(CREATE_SQL, endpoint_id, url, events, secret,
                                              endpoints_max)
        if created is None:
            raise EndpointsFull(f"at most {endpoints_max} webhooks can be registered "
                                 "(KASSA_WEBHOOK_ENDPOINTS_MAX)")
        return CreatedEndpoint(endpoint_id, url, events, secret, _iso(created))

    async def endpoints(self) -> list[EndpointView]:
        async with converted_errors():
            rows = await self._db.fetch(
                f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id")
        return [_endpoint(r) for r in rows]

    async def endpoint(self, endpoint_id: str) -> EndpointView | None:
        async with converted_errors():
            row = await self._db.fetchrow(
                f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1", endpoint_id)
        return _endpoint(row) if row is not None else None

    async def delete(self, endpoint_id: str) -> bool:
        async with converted_errors():
            gone = await self._db.fetchval(
                "DELETE FROM webhook_endpoints WHERE id = $1 RETURNING 1", endpoint_id)
        return gone is not None

    async def deliveries(self, endpoint_id: str, status: str | None, limit: int,
                         before: int | None) -> list[DeliveryView]:
        async with converted_errors():
            rows = await self._db.fetch(DELIVERIES_SQL, endpoint_id, status,
                                        before or 2**63 - 1, limit)
        return [_delivery(r) for r in rows]

    async def redeliver(self, endpoint_id: str, delivery_id: int,
                        window_s: float) -> DeliveryView | None:
        async with converted_errors():
            row = await self._db.fetchrow(REDELIVER_SQL, endpoint_id, delivery_id, window_s)
        return _delivery(row) if row is not None else None


def _iso(when: dt.datetime) -> str:
    text = iso(when)
    assert text is not None
    return text


def _endpoint(row: asyncpg.Record) -> EndpointView:
    return EndpointView(row["id"], row["url"], row["events"], _iso(row["created_at"]))


def _delivery(row: asyncpg.Record) -> DeliveryView:
    return DeliveryView(
        id=row["id"], webhook_id=row["endpoint_id"],
        message_id=MESSAGE_ID_PREFIX + row["receipt_code"], event=row["event"],
        receipt_code=row["receipt_code"], status=row["status"], attempts=row["attempts"],
        next_attempt_at=iso(row["next_attempt_at"]) if row["status"] == "pending" else None,
        last_attempt_at=iso(row["last_attempt_at"]), last_status=row["last_status"],
        last_error=row["last_error"], created_at=_iso(row["created_at"]))


# The relay's side, on its dedicated connection (server/adapters/webhooks/)

ENDPOINTS_SQL = "SELECT id, url, events, secret FROM webhook_endpoints"
# One row per (journal, matching endpoint), written once with its first attempt's outcome
# (the sink sends first: webhooks/sink.py): succeeded, failed, or pending with its next
# attempt's time; an attempt still in flight is written claimed (due again after its lease)
# and its outcome recorded later; one not started (the sender full) is written due now.
# An endpoint deleted meanwhile gets no row.
WRITE_SQL = """
INSERT INTO webhook_deliveries (endpoint_id, journal_id, receipt_code, event, status, attempts,
                                retry_until, last_attempt_at, next_attempt_at, last_status,
                                last_error)
SELECT d.endpoint_id, d.journal_id, d.receipt_code, d.event, d.status, d.attempts,
       now() + $10 * interval '1 second', CASE WHEN d.attempts > 0 THEN now() END,
       now() + d.due_in_s * interval '1 second', d.http_status, d.error
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::int[],
            $7::float8[], $8::int[], $9::text[])
     AS d(endpoint_id, journal_id, receipt_code, event, status, attempts, due_in_s,
          http_status, error)
WHERE EXISTS (SELECT FROM webhook_endpoints e WHERE e.id = d.endpoint_id)
RETURNING id, endpoint_id, journal_id
"""
# Claimed rows are due again after the lease: a sender that dies mid-attempt leaves them
# to the next one (at least once). SKIP LOCKED would let several senders share the table.
CLAIM_SQL = """
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE status = 'pending' AND next_attempt_at <= clock_timestamp()
    ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
UPDATE webhook_deliveries d
SET next_attempt_at = clock_timestamp() + $2 * interval '1 second', attempts = d.attempts + 1,
    last_attempt_at = clock_timestamp()
FROM due, webhook_endpoints e
WHERE d.id = due.id AND e.id = d.endpoint_id
RETURNING d.id, d.journal_id, d.receipt_code, d.attempts, e.url, e.secret,
          extract(epoch FROM coalesce(d.retry_until, d.created_at) - clock_timestamp())::float8
              AS window_left_s
"""
# The journals of claimed retries, read as the relay reads them (outbox.DUE_SQL) to build
# their events again.
JOURNALS_SQL = EVENT_COLUMNS + """
FROM journals j LEFT JOIN journals t ON t.external_ref = j.target
WHERE j.id = ANY ($1::bigint[])
"""
# `retry_in_s` NULL with ok false: dead-lettered.
RECORD_SQL = """
UPDATE webhook_deliveries d
SET status = CASE WHEN r.ok THEN 'succeeded' WHEN r.retry_in_s IS NULL THEN 'failed'
                  ELSE 'pending' END,
    next_attempt_at = CASE WHEN r.retry_in_s IS NULL THEN d.next_attempt_at
                           ELSE clock_timestamp() + r.retry_in_s * interval '1 second' END,
    last_status = r.http_status, last_error = r.error
FROM unnest($1::bigint[], $2::bool[], $3::float8[], $4::int[], $5::text[])
     AS r(id, ok, retry_in_s, http_status, error)
WHERE d.id = r.id AND d.status = 'pending'
"""
# Retention: ended deliveries older than the retention, among the `$2` oldest ids (ids
# follow time: the walk stays at the table's old end, through its primary key, and never
# reads the whole table when nothing is old enough).
PRUNE_SQL = """
DELETE FROM webhook_deliveries
WHERE id < (SELECT min(id) FROM webhook_deliveries) + $2 AND status <> 'pending'
  AND created_at < now() - $1 * interval '1 second'
"""
OLDEST_PENDING_SQL = """
SELECT extract(epoch FROM clock_timestamp() - min(created_at))::float8
FROM webhook_deliveries WHERE status = 'pending'
"""


async def endpoints(session: OutboxSession) -> list[asyncpg.Record]:
    """Every endpoint: id, url, events (None: every one), secret."""
    async with session.statement() as conn:
        rows: list[asyncpg.Record] = await conn.fetch(ENDPOINTS_SQL)
    return rows


# A new delivery: endpoint id, journal id, receipt code, event, status, attempts made,
# seconds until it is due (a retry's wait, an attempt in flight's lease), the receiver's
# HTTP status and the error of its attempt.
FirstRow = tuple[str, int, str, str, str, int, float, int | None, str | None]


async def write_first(session: OutboxSession, sink: str, to: tuple[int, int],
                      rows: list[FirstRow], window_s: float) -> tuple[dt.datetime, list[asyncpg.Record]]:
    """Write the deliveries of `rows` with their first attempts' outcomes and move `sink`'s
    cursor to `to`, in one transaction: each delivery is written once. Returns the
    database's clock and the new (id, endpoint_id, journal_id) rows."""
    written: list[asyncpg.Record] = []
    async with session.statement() as conn, conn.transaction():
        if rows:
            written = await conn.fetch(WRITE_SQL, *map(list, zip(*rows, strict=True)),
                                       window_s)
        now: dt.datetime | None = await conn.fetchval(ADVANCE_SQL, sink, str(to[0]), to[1])
    if now is None:
        raise LookupError(f"no cursor for sink {sink!r} (migration 014 creates it)")
    return now, written


async def claim(session: OutboxSession, limit: int, lease_s: float
                ) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """Up to `limit` due deliveries, claimed for `lease_s`, and their journals."""
    async with session.statement() as conn:
        rows: list[asyncpg.Record] = await conn.fetch(CLAIM_SQL, limit, lease_s)
        journals: list[asyncpg.Record] = (
            await conn.fetch(JOURNALS_SQL, list({r["journal_id"] for r in rows}))
            if rows else [])
    return rows, journals


async def record(session: OutboxSession,
                 outcomes: tuple[list[int], list[bool], list[float | None], list[int | None],
                                 list[str | None]]) -> None:
    async with session.statement() as conn:
        await conn.execute(RECORD_SQL, *outcomes)


async def prune(session: OutboxSession, retention_s: float, window: int) -> int:
    """Delete ended deliveries older than `retention_s` among the `window` oldest ids;
    returns how many."""
    async with session.statement() as conn:
        status: str = await conn.execute(PRUNE_SQL, retention_s, window)
    return int(status.rsplit(" ", 1)[1])


async def oldest_pending_age(session: OutboxSession) -> float:
    async with session.statement() as conn:
        age = await conn.fetchval(OLDEST_PENDING_SQL)
    return max(0.0, float(age or 0.0))
