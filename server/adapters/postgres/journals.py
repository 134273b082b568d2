"""The journal store: durable accept, the executor's unit of work, recovery claims."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
import msgspec

from core.ledger.decide import BatchDecision
from core.ledger.errors import CommitUnknown, Rejected, TransientConflict, Unavailable
from core.ledger.models import AccountSnapshot, Entry, ErrorBody, Leg, Transaction
from core.pipeline.ports import (
    ClaimedJournal,
    ExistingJournal,
    JournalStatus,
    PendingJournal,
    RecordedJournal,
)
from server.adapters.postgres.pool import converted_errors, iso

log = logging.getLogger("kassa.postgres")

# A connection failing in one of these ways after COMMIT was sent leaves the outcome open.
LOST = (OSError, TimeoutError, asyncpg.PostgresConnectionError,
        asyncpg.OperatorInterventionError, asyncpg.InterfaceError)

_json = msgspec.json.Encoder()
_legs = msgspec.json.Decoder(list[tuple[str, str, int]])
_meta = msgspec.json.Decoder(dict)
_contact = msgspec.json.Decoder(dict[str, str] | None)
_entries = msgspec.json.Decoder(list[tuple[str, str, int, int]])

INSERT_PENDING = """
INSERT INTO journals (external_ref, type, status, currency, description, metadata, payload,
                      idempotency_scope, idempotency_key, request_hash, mode, accept_time_us,
                      lease_owner, lease_expires_at)
SELECT r, t, 'processing', c, d, m::jsonb, p::jsonb, s, k, h, mo, us, $12,
       now() + make_interval(secs => $13)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::text[], $11::int[]) AS u(r, t, c, d, m, p, s, k, h, mo, us)
ON CONFLICT (idempotency_scope, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, external_ref
"""

EXISTING_BY_KEY = """
SELECT id, external_ref, request_hash, mode, status, accept_time_us, idempotency_scope,
       idempotency_key
FROM journals
WHERE (idempotency_scope, idempotency_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
  AND idempotency_key IS NOT NULL  -- lets the planner use the partial unique index
"""

LOCK_UNFINISHED = """
SELECT id FROM journals WHERE id = ANY($1::bigint[]) AND status = 'processing'
ORDER BY id FOR UPDATE
"""

LOCK_ACCOUNTS = """
SELECT id, currency, status, balance, overdraft_limit, contact FROM accounts
WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
"""

def _posting(first: int) -> str:
    """The CTEs that post a decided batch (balances, ledger entries, outbox events), with
    their ten parameters numbered from `first`: one statement writes a whole batch."""
    p = [f"${first + k}" for k in range(10)]
    return f"""
balances AS (
    UPDATE accounts a SET balance = u.b, version = a.version + 1, updated_at = now()
    FROM unnest({p[0]}::text[], {p[1]}::bigint[]) AS u(id, b) WHERE a.id = u.id
), entries AS (
    INSERT INTO ledgers (journal_id, account_id, direction, amount, balance_after)
    SELECT j, a, CASE WHEN d = 0 THEN 'debit' ELSE 'credit' END, m, b
    FROM unnest({p[2]}::bigint[], {p[3]}::text[], {p[4]}::int[], {p[5]}::bigint[],
                {p[6]}::bigint[]) AS u(j, a, d, m, b)
), events AS (
    INSERT INTO outbox (journal_id, receipt_code, payload)
    SELECT * FROM unnest({p[7]}::bigint[], {p[8]}::text[], {p[9]}::bytea[])
)"""


# Journals recorded earlier as pending: finished and posted in one statement.
FINISH_AND_POST = f"""
WITH finished AS (
    UPDATE journals j SET status = u.s, error_code = u.ec, error_message = u.em,
           completed_at = now(), lease_owner = NULL, lease_expires_at = NULL
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS u(id, s, ec, em)
    WHERE j.id = u.id
), {_posting(5).lstrip()}
SELECT 1
"""

# The accounts of new journals locked (id order) and ids for the journals, in one round trip.
LOCK_FOR_NEW = """
WITH locked AS (
    SELECT id, currency, status, balance, overdraft_limit, contact FROM accounts
    WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
)
SELECT id, currency, status, balance, overdraft_limit, contact, NULL::bigint AS journal_id
FROM locked
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, nextval(pg_get_serial_sequence('journals', 'id'))
FROM generate_series(1, $2)
"""

# New journals decided in the same transaction: written once, already finished, and
# posted, in one statement. Both times are the decision's, so that an answer built from the
# outcome in memory reads exactly as the journal does later. A key recorded meanwhile by another transaction violates
# journals_idempotency_key, and the whole statement fails: the caller retries.
INSERT_AND_POST = f"""
WITH recorded AS (
    INSERT INTO journals (id, external_ref, type, status, currency, description, metadata,
                          payload, idempotency_scope, idempotency_key, request_hash, mode,
                          accept_time_us, error_code, error_message, created_at, completed_at)
    OVERRIDING SYSTEM VALUE
    SELECT i, r, t, st, c, d, m::jsonb, p::jsonb, s, k, h, mo, us, ec, em,
           $26::text::timestamptz, $26::text::timestamptz
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::int[], $14::text[], $15::text[])
         AS u(i, r, t, st, c, d, m, p, s, k, h, mo, us, ec, em)
), {_posting(16).lstrip()}
SELECT 1
"""

CLAIM_EXPIRED = """
UPDATE journals j SET lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2)
FROM (SELECT id FROM journals WHERE status = 'processing' AND lease_expires_at < now()
      AND NOT id = ANY($4::bigint[])
      ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) AS c
WHERE j.id = c.id
RETURNING j.id, j.external_ref, j.type, j.currency, j.description, j.metadata, j.payload
"""

# The journals under these receipt codes, with their ledger entries (after a lost ack).
RECORDED = """
SELECT j.id, j.external_ref, j.status, j.error_code, j.error_message,
       coalesce((SELECT json_agg(json_build_array(l.account_id, l.direction, l.amount,
                                                  l.balance_after) ORDER BY l.id)
                 FROM ledgers l WHERE l.journal_id = j.id), '[]')::text AS entries
FROM journals j WHERE j.external_ref = ANY($1::text[])
"""

# A journal the database refused to post (isolated from its batch): failed, nothing moved.
MARK_FAILED = """
UPDATE journals SET status = 'failed', error_code = $2, error_message = $3,
       completed_at = now(), lease_owner = NULL, lease_expires_at = NULL
WHERE id = $1 AND status = 'processing'
"""


def pending_columns(journals: list[PendingJournal]) -> list[list[object]]:
    """The journals as columns for unnest: code, type, currency, description, metadata,
    legs, idempotency scope, key and request hash, mode, accept time."""
    cols: list[list[object]] = [[] for _ in range(11)]
    for j in journals:
        tx = j.transaction
        row = (j.receipt_code, tx.type, tx.currency, tx.description,
               _json.encode(tx.metadata).decode(), _json.encode(tx.legs).decode(),
               j.idempotency_scope, j.idempotency_key, j.request_hash, j.mode, j.accept_time_us)
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return cols


async def existing_by_key(conn: asyncpg.Connection, journals: list[PendingJournal]
                          ) -> dict[tuple[str, str], ExistingJournal]:
    rows = await conn.fetch(EXISTING_BY_KEY, [j.idempotency_scope for j in journals],
                            [j.idempotency_key for j in journals])
    return {(r["idempotency_scope"], r["idempotency_key"]): ExistingJournal(
        r["id"], r["external_ref"], r["request_hash"], r["mode"], r["status"],
        r["accept_time_us"]) for r in rows}


@contextlib.asynccontextmanager
async def rejected_data() -> AsyncIterator[None]:
    """Data the database (or the driver, encoding it) refuses: this group cannot commit
    as it is, and retrying will not help. The message names no driver text."""
    try:
        yield
    except (asyncpg.DataError, asyncpg.exceptions._base.DataError) as exc:
        log.warning("the database refused a group's data: %r", exc)
        raise Rejected("the database refused this transaction's data") from exc
    except asyncpg.IntegrityConstraintViolationError as exc:
        log.critical("[BUG] constraint %s violated: %r", exc.constraint_name, exc)
        raise Rejected("the database refused this transaction (a constraint)") from exc


async def wait_gone(conn: asyncpg.Connection, pid: int) -> None:
    """Until the session `pid` has ended (the caller bounds the wait)."""
    gone = False
    while not gone:
        gone = not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)
        await asyncio.sleep(0 if gone else 0.01)


def snapshot(row: asyncpg.Record) -> AccountSnapshot:
    contact = _contact.decode(row["contact"]) if row["contact"] else None
    return AccountSnapshot(row["id"], row["currency"], row["status"], row["balance"],
                           row["overdraft_limit"], contact)


class PgLedgerUnit:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def lock_unfinished(self, journal_ids: list[int]) -> set[int]:
        return {r["id"] for r in await self._conn.fetch(LOCK_UNFINISHED, journal_ids)}

    async def lock_accounts(self, account_ids: list[str]) -> dict[str, AccountSnapshot]:
        return {r["id"]: snapshot(r) for r in await self._conn.fetch(LOCK_ACCOUNTS, account_ids)}

    async def write(self, decision: BatchDecision) -> None:
        outcomes = decision.outcomes
        await self._conn.execute(
            FINISH_AND_POST, [o.journal_id for o in outcomes], [o.status for o in outcomes],
            [o.error.code if o.error else None for o in outcomes],
            [o.error.message if o.error else None for o in outcomes], *posting_args(decision))

    async def existing(self, journals: list[PendingJournal]
                       ) -> dict[tuple[str, str], ExistingJournal]:
        return await existing_by_key(self._conn, journals)

    async def lock_for_new(self, account_ids: list[str], count: int
                           ) -> tuple[dict[str, AccountSnapshot], list[int]]:
        rows = await self._conn.fetch(LOCK_FOR_NEW, account_ids, count)
        accounts = {r["id"]: snapshot(r) for r in rows if r["journal_id"] is None}
        return accounts, [r["journal_id"] for r in rows if r["journal_id"] is not None]

    async def insert_finished(self, journals: list[PendingJournal], ids: list[int],
                              decision: BatchDecision) -> None:
        if not journals:
            return
        cols = pending_columns(journals)
        outcomes = decision.outcomes
        try:
            await self._conn.execute(
                INSERT_AND_POST, ids, cols[0], cols[1], [o.status for o in outcomes], *cols[2:],
                [o.error.code if o.error else None for o in outcomes],
                [o.error.message if o.error else None for o in outcomes], *posting_args(decision),
                outcomes[0].finished_at)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "journals_idempotency_key":
                raise
            raise TransientConflict("an idempotency key was recorded meanwhile") from exc


def posting_args(decision: BatchDecision) -> list[object]:
    """The ten parameters of _posting: balances, ledger columns, outbox events."""
    outcomes = decision.outcomes
    return [list(decision.balances), list(decision.balances.values()), *decision.ledger_columns,
            [o.journal_id for o in outcomes], [o.receipt_code for o in outcomes], decision.events]


class PgJournalStore:
    def __init__(self, pool: asyncpg.Pool, *, lease_s: float) -> None:
        self._pool = pool
        self._lease_s = lease_s

    async def insert_pending(self, journals: list[PendingJournal]) -> list[int | ExistingJournal]:
        cols = pending_columns(journals)
        async with self._transaction() as conn:
            ids = {r["external_ref"]: r["id"] for r in
                   await conn.fetch(INSERT_PENDING, *cols, journals[0].lease_owner, self._lease_s)}
            missing = [j for j in journals if j.receipt_code not in ids]
            existing = await existing_by_key(conn, missing) if missing else {}
        return [ids.get(j.receipt_code) or existing[(j.idempotency_scope, j.idempotency_key)]
                for j in journals]

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[PgLedgerUnit]:
        async with self._transaction() as conn:
            yield PgLedgerUnit(conn)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction on a pooled connection. Data the database refuses raises Rejected
        (after the rollback); the connection failing during COMMIT itself raises
        CommitUnknown, carrying the server pid so the check can fence that session."""
        async with converted_errors(), self._pool.acquire() as conn:
            # Read now: once the connection is lost, asyncpg has already detached it from
            # the pool's handle, and asking it then raises instead of answering.
            session = conn.get_server_pid()
            committing = False
            try:
                async with rejected_data(), conn.transaction():
                    yield conn
                    committing = True
            except LOST as exc:
                if not committing:
                    raise
                raise CommitUnknown("the commit was not acknowledged",
                                    session=session) from exc

    async def recorded(self, receipt_codes: list[str], session: object | None
                       ) -> dict[str, RecordedJournal]:
        """Fence the session whose commit was lost (end it and wait until it is gone, so
        its transaction is decided), then read the journals under these receipt codes."""
        try:
            async with self._pool.acquire() as conn:
                if isinstance(session, int):
                    await conn.execute("SELECT pg_terminate_backend($1)", session)
                    await wait_gone(conn, session)
                rows = await conn.fetch(RECORDED, receipt_codes)
        except (*LOST, asyncpg.PostgresError) as exc:
            log.warning("looking up journals after a lost commit failed: %r", exc)
            raise Unavailable("the database is unavailable") from exc
        return {r["external_ref"]: RecordedJournal(
            r["id"], r["external_ref"], r["status"],
            ErrorBody(r["error_code"], r["error_message"]) if r["error_code"] else None,
            [Entry(*e) for e in _entries.decode(r["entries"])]) for r in rows}

    async def mark_failed(self, journal_id: int, error: ErrorBody) -> bool:
        """Finish a journal the database refused to post as failed; False if already final."""
        async with converted_errors():
            done = await self._pool.execute(MARK_FAILED, journal_id, error.code, error.message)
        return done != "UPDATE 0"

    async def claim_expired(self, owner: str, lease_s: float, limit: int,
                            held: list[int]) -> list[ClaimedJournal]:
        async with converted_errors():
            rows = await self._pool.fetch(CLAIM_EXPIRED, owner, lease_s, limit, held)
        return [ClaimedJournal(r["id"], r["external_ref"], transaction_of(r)) for r in rows]

    async def renew_leases(self, owner: str, journal_ids: list[int], lease_s: float) -> None:
        """Extend this process's leases on journals it still holds (queued or running)."""
        async with converted_errors():
            await self._pool.execute(
                "UPDATE journals SET lease_expires_at = now() + make_interval(secs => $3) "
                "WHERE id = ANY($2::bigint[]) AND lease_owner = $1 AND status = 'processing'",
                owner, journal_ids, lease_s)

    async def release_leases(self, owner: str) -> int:
        """On shutdown: let any process's sweeper take our unfinished journals at once."""
        async with converted_errors():
            done = await self._pool.execute(
                "UPDATE journals SET lease_expires_at = now() WHERE lease_owner = $1 "
                "AND status = 'processing'", owner)
        return int(done.split()[-1])

    async def journal_status(self, receipt_code: str) -> JournalStatus | None:
        async with converted_errors():
            row = await self._pool.fetchrow(
                "SELECT status, error_code, error_message, coalesce(completed_at, created_at) AS at "
                "FROM journals WHERE external_ref = $1", receipt_code)
        if row is None:
            return None
        error = ErrorBody(row["error_code"], row["error_message"]) if row["error_code"] else None
        return JournalStatus(receipt_code, row["status"], error, iso(row["at"]) or "")

    async def get_accounts(self, account_ids: list[str], *, fresh: bool = False
                           ) -> dict[str, AccountSnapshot]:
        """AccountReader straight from the database, so always fresh (the account cache
        wraps this)."""
        async with converted_errors():
            rows = await self._pool.fetch(
                "SELECT id, currency, status, balance, overdraft_limit, contact FROM accounts "
                "WHERE id = ANY($1::text[])", account_ids)
        return {r["id"]: snapshot(r) for r in rows}


def transaction_of(row: asyncpg.Record) -> Transaction:
    legs = tuple(Leg(*leg) for leg in _legs.decode(row["payload"]))
    return Transaction(row["type"], row["currency"], legs, row["description"],
                       _meta.decode(row["metadata"]))
