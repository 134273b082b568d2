"""The journal store's SQL: the accept path (pending journals, idempotency keys), the
apply path (locks, and the statements that finish and post a decided batch), lease claims
for recovery, and the reads after a lost commit."""

from __future__ import annotations

from typing import Any, NamedTuple

from server.adapters.postgres.rows import Params, Rows, Statement

# The rows the batch statements take (server/adapters/postgres/rows.py numbers them).


class RequestRow(NamedTuple):
    """What a journal records of its request, pending or finished."""

    external_ref: str
    type: str
    currency: str
    description: str | None
    metadata: str  # JSON text
    payload: str  # JSON text: the legs
    idempotency_scope: str | None
    idempotency_key: str | None
    request_hash: str | None
    mode: str
    accept_time_us: int | None
    target: str | None
    traceparent: str | None  # W3C, of the accepting request while tracing is on


REQUEST = dict(external_ref="text", type="text", currency="text", description="text",
               metadata="text", payload="text", idempotency_scope="text", idempotency_key="text",
               request_hash="text", mode="text", accept_time_us="int", target="text",
               traceparent="text")


def _columns(name: str, *parts: type[Any] | list[tuple[str, Any]]) -> Any:
    """A NamedTuple of the fields of `parts` in order (row types, or (name, type) pairs):
    one statement's unnest columns, declared once by the rows they join."""
    fields: list[tuple[str, Any]] = []
    for part in parts:
        fields += part if isinstance(part, list) else list(part.__annotations__.items())
    return NamedTuple(name, fields)  # type: ignore[misc]


# RequestRow then the hold's seconds to expiry (pending journals only).
PendingColumns = _columns("PendingColumns", RequestRow, [("hold_expires_in_s", "int | None")])


class OutcomeRow(NamedTuple):
    """How a journal ended."""

    id: int
    status: str
    error_code: str | None
    error_message: str | None
    error_param: str | None


OUTCOME = dict(id="bigint", status="text", error_code="text", error_message="text",
               error_param="text")


# OutcomeRow then RequestRow: a journal recorded already finished.
FinishedColumns = _columns("FinishedColumns", OutcomeRow, RequestRow)


class BalanceRow(NamedTuple):
    id: str
    balance: int
    held: int | None  # None: unchanged


class EntryColumns(NamedTuple):
    """Ledger entries as columns, as native.post_batch returns them."""

    journal_id: list[int]
    account_id: list[str]
    direction: list[int]  # native.DEBIT / native.CREDIT
    amount: list[int]
    balance_after: list[int]


class TargetRow(NamedTuple):
    id: int
    status: str
    reversed: int


PENDING = Rows(PendingColumns, **REQUEST, hold_expires_in_s="int")
FINISHED = Rows(FinishedColumns, **OUTCOME, **REQUEST)
OUTCOMES = Rows(OutcomeRow, **OUTCOME)
BALANCES = Rows(BalanceRow, id="text", balance="bigint", held="bigint")
ENTRIES = Rows(EntryColumns, journal_id="bigint", account_id="text", direction="int",
               amount="bigint", balance_after="bigint")
TARGETS = Rows(TargetRow, id="bigint", status="text", reversed="bigint")

# The accept path

INSERT_PENDING = Statement(lambda p: f"""
INSERT INTO journals (external_ref, type, status, currency, description, metadata, payload,
                      idempotency_scope, idempotency_key, request_hash, mode, accept_time_us,
                      lease_owner, lease_expires_at, target, hold_expires_at, traceparent)
SELECT external_ref, type, 'processing', currency, description, metadata::jsonb,
       payload::jsonb, idempotency_scope, idempotency_key, request_hash, mode, accept_time_us,
       {p.value("lease_owner", "text")},
       now() + make_interval(secs => {p.value("lease_s", "float8")}), target,
       now() + make_interval(secs => hold_expires_in_s), traceparent
FROM {p.rows("journals", PENDING)}
ON CONFLICT (idempotency_scope, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, external_ref
""")

EXISTING_BY_KEY = """
SELECT id, external_ref, request_hash, mode, status, accept_time_us, idempotency_scope,
       idempotency_key
FROM journals
WHERE (idempotency_scope, idempotency_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
  AND idempotency_key IS NOT NULL  -- lets the planner use the partial unique index
"""

# The apply path: the executor's unit of work

LOCK_UNFINISHED = """
SELECT id FROM journals WHERE id = ANY($1::bigint[]) AND status = 'processing'
ORDER BY id FOR UPDATE
"""

LOCK_ACCOUNTS = """
SELECT id, currency, status, balance, overdraft_limit, contact, held FROM accounts
WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
"""


def _posting(p: Params) -> str:
    """The CTEs that post a decided batch (balances and holds, ledger entries): one
    statement writes a whole batch. Balance and `held` change in one UPDATE so the
    available-balance check never sees one without the other. No event is written: the
    statement that finishes a journal sets its `event_xid` (migration 010), and the relay
    reads the journal itself."""
    return f"""
balances AS (
    UPDATE accounts a SET balance = u.balance, held = coalesce(u.held, a.held),
           version = a.version + 1, updated_at = now()
    FROM {p.rows("balances", BALANCES)}
    WHERE a.id = u.id
), entries AS (
    INSERT INTO ledgers (journal_id, account_id, direction, amount, balance_after)
    SELECT journal_id, account_id, CASE WHEN direction = 0 THEN 'debit' ELSE 'credit' END,
           amount, balance_after
    FROM {p.rows("entries", ENTRIES, columnar=True)}
)"""


# Journals recorded earlier as pending: finished and posted in one statement. Every
# statement that finishes a journal marks its event due (`event_xid`, the relay's feed);
# UPDATE_TARGETS does not: a hold that a capture or void ends gets no event of its own.
FINISH_AND_POST = Statement(lambda p: f"""
WITH finished AS (
    UPDATE journals j SET status = u.status, error_code = u.error_code,
           error_message = u.error_message, error_param = u.error_param,
           completed_at = now(), lease_owner = NULL, lease_expires_at = NULL,
           event_xid = pg_current_xact_id()
    FROM {p.rows("outcomes", OUTCOMES)}
    WHERE j.id = u.id
), {_posting(p).lstrip()}
SELECT 1
""")

# The accounts of new journals locked (id order) and ids for the journals, in one round trip.
LOCK_FOR_NEW = """
WITH locked AS (
    SELECT id, currency, status, balance, overdraft_limit, contact, held FROM accounts
    WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
)
SELECT id, currency, status, balance, overdraft_limit, contact, held, NULL::bigint AS journal_id
FROM locked
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, nextval(pg_get_serial_sequence('journals', 'id'))
FROM generate_series(1, $2)
"""

# New journals decided in the same transaction: written once, already finished, and
# posted, in one statement. Both times are the decision's, so that an answer built from
# the outcome in memory reads exactly as the journal does later. A key recorded meanwhile
# by another transaction violates journals_idempotency_key, and the whole statement fails:
# the caller retries.
INSERT_AND_POST = Statement(lambda p: f"""
WITH recorded AS (
    INSERT INTO journals (id, status, error_code, error_message, error_param, external_ref,
                          type, currency, description, metadata, payload, idempotency_scope,
                          idempotency_key, request_hash, mode, accept_time_us, target,
                          created_at, completed_at, event_xid, traceparent)
    OVERRIDING SYSTEM VALUE
    SELECT id, status, error_code, error_message, error_param, external_ref, type, currency,
           description, metadata::jsonb, payload::jsonb, idempotency_scope, idempotency_key,
           request_hash, mode, accept_time_us, target, t.at, t.at, pg_current_xact_id(),
           traceparent
    FROM {p.rows("journals", FINISHED)},
         (SELECT {p.value("finished_at", "text")}::timestamptz AS at) t
), {_posting(p).lstrip()}
SELECT 1
""")

# Leases: the recovery sweeper claims journals whose owner stopped renewing

CLAIM_EXPIRED = """
UPDATE journals j SET lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2)
FROM (SELECT id FROM journals WHERE status = 'processing' AND lease_expires_at < now()
      AND NOT id = ANY($4::bigint[])
      ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) AS c
WHERE j.id = c.id
RETURNING j.id, j.external_ref, j.type, j.currency, j.description, j.metadata, j.payload,
          j.target, j.hold_expires_at IS NOT NULL AS is_hold
"""

# The journals named by a batch's captures, voids and reversals, locked after the accounts
# (every writer locks accounts first, then these, in id order: no deadlock).
LOCK_TARGETS = """
SELECT id, external_ref, type, status, payload, hold_expires_at IS NOT NULL AS is_hold,
       reversed, currency
FROM journals WHERE external_ref = ANY($1::text[]) ORDER BY id FOR UPDATE
"""

# A capture or void ends its hold; a reversal adds to its original's `reversed`.
UPDATE_TARGETS = Statement(lambda p: f"""
UPDATE journals j SET status = u.status, reversed = u.reversed
FROM {p.rows("targets", TARGETS)} WHERE j.id = u.id
""")

# Pending holds past their deadline, oldest first, for the expiry sweeper.
EXPIRED_HOLDS = """
SELECT external_ref, type, status, currency, payload, true AS is_hold, reversed FROM journals
WHERE status = 'held' AND hold_expires_at <= now() ORDER BY hold_expires_at LIMIT $1
"""

NAMED_JOURNAL = """
SELECT external_ref, type, status, currency, payload, hold_expires_at IS NOT NULL AS is_hold,
       reversed
FROM journals WHERE external_ref = $1
"""

# Rows a writer has locked are being executed (no renewal needed): skipped, never waited
# for. Waiting on them in arbitrary order while writers lock in id order deadlocked.
RENEW_LEASES = """
UPDATE journals j SET lease_expires_at = now() + make_interval(secs => $3)
FROM (SELECT id FROM journals WHERE id = ANY($2::bigint[]) AND lease_owner = $1
      AND status = 'processing' ORDER BY id FOR UPDATE SKIP LOCKED) AS r
WHERE j.id = r.id
"""

# On shutdown: any process's sweeper may take the owner's unfinished journals at once.
RELEASE_LEASES = """
UPDATE journals SET lease_expires_at = now() WHERE lease_owner = $1 AND status = 'processing'
"""

# After a lost commit: end the session whose commit was lost, wait until it is gone, read

TERMINATE_SESSION = "SELECT pg_terminate_backend($1)"
SESSION_ALIVE = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1"

# The journals under these receipt codes, with their ledger entries (after a lost ack).
RECORDED = """
SELECT j.id, j.external_ref, j.status, j.error_code, j.error_message, j.error_param,
       coalesce((SELECT json_agg(json_build_array(l.account_id, l.direction, l.amount,
                                                  l.balance_after) ORDER BY l.id)
                 FROM ledgers l WHERE l.journal_id = j.id), '[]')::text AS entries
FROM journals j WHERE j.external_ref = ANY($1::text[])
"""

# Single journals and reads

# A journal the database refused to post (isolated from its batch): failed, nothing moved.
MARK_FAILED = """
UPDATE journals SET status = 'failed', error_code = $2, error_message = $3,
       completed_at = now(), lease_owner = NULL, lease_expires_at = NULL,
       event_xid = pg_current_xact_id()
WHERE id = $1 AND status = 'processing'
"""

JOURNAL_STATUS = """
SELECT status, error_code, error_message, error_param, coalesce(completed_at, created_at) AS at
FROM journals WHERE external_ref = $1
"""

GET_ACCOUNTS = """
SELECT id, currency, status, balance, overdraft_limit, contact, held FROM accounts
WHERE id = ANY($1::text[])
"""

