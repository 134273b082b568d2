"""The journal store's SQL: the accept path (pending journals, idempotency keys), the
apply path (locks, and the statements that finish and post a decided batch), lease claims
for recovery, and the reads after a lost commit."""

from __future__ import annotations

# The accept path

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

# The apply path: the executor's unit of work

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

# Leases: the recovery sweeper claims journals whose owner stopped renewing

CLAIM_EXPIRED = """
UPDATE journals j SET lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2)
FROM (SELECT id FROM journals WHERE status = 'processing' AND lease_expires_at < now()
      AND NOT id = ANY($4::bigint[])
      ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) AS c
WHERE j.id = c.id
RETURNING j.id, j.external_ref, j.type, j.currency, j.description, j.metadata, j.payload
"""

RENEW_LEASES = """
UPDATE journals SET lease_expires_at = now() + make_interval(secs => $3)
WHERE id = ANY($2::bigint[]) AND lease_owner = $1 AND status = 'processing'
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
SELECT j.id, j.external_ref, j.status, j.error_code, j.error_message,
       coalesce((SELECT json_agg(json_build_array(l.account_id, l.direction, l.amount,
                                                  l.balance_after) ORDER BY l.id)
                 FROM ledgers l WHERE l.journal_id = j.id), '[]')::text AS entries
FROM journals j WHERE j.external_ref = ANY($1::text[])
"""

# Single journals and reads

# A journal the database refused to post (isolated from its batch): failed, nothing moved.
MARK_FAILED = """
UPDATE journals SET status = 'failed', error_code = $2, error_message = $3,
       completed_at = now(), lease_owner = NULL, lease_expires_at = NULL
WHERE id = $1 AND status = 'processing'
"""

JOURNAL_STATUS = """
SELECT status, error_code, error_message, coalesce(completed_at, created_at) AS at
FROM journals WHERE external_ref = $1
"""

GET_ACCOUNTS = """
SELECT id, currency, status, balance, overdraft_limit, contact FROM accounts
WHERE id = ANY($1::text[])
"""
