-- kassa:no-transaction
-- Listings (docs/api.md "Listing"): GET /v1/transactions with filters, GET /v1/accounts,
-- GET /v1/accounts/{id}?at=. Every page is a keyset scan of at most about `limit` index
-- entries (docs/performance.md "Listing plans"), at 10 million journals as at 100.
--
-- The write path pays as little as possible: the journal and ledger write statements are
-- untouched; common filter values (status completed, type transfer) get no index of their
-- own and are served by the primary key scanned backwards (about limit / share rows);
-- rare values get PARTIAL indexes, which cost a write only for the rows they hold.
--
-- Statement by statement, outside a transaction (migration_steps.py), so that on a ledger
-- already holding millions of journals nothing blocks its writes for longer than a catalog
-- change: the indexes are built CONCURRENTLY, and the backfill runs after the trigger is in
-- place, holding no lock that writes wait for. Every statement can run again (a failure
-- part way runs the file again from its start).

-- One row per (account, journal) for ?account=: a journal names its accounts only inside
-- its `payload` ([[source, destination, amount], ...]), which no index can page by id.
CREATE TABLE IF NOT EXISTS journal_accounts (
    account_id text NOT NULL,
    journal_id bigint NOT NULL,
    PRIMARY KEY (account_id, journal_id)
);

-- Filled by a statement-level trigger over the transition table: one INSERT ... SELECT per
-- journal-writing statement (the accept path and the executor write whole batches in one
-- statement), not one trigger call per row, and no change to the ledger's own SQL. Rows
-- that ON CONFLICT DO NOTHING skipped are not in `added`. Payloads never change after the
-- insert, so there is no UPDATE trigger. No foreign key: journals are never deleted, and
-- a foreign key would cost one lookup per row.
CREATE OR REPLACE FUNCTION journal_accounts_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO journal_accounts (account_id, journal_id)
    SELECT DISTINCT acc.id, a.id
    FROM added a
    CROSS JOIN LATERAL jsonb_array_elements(a.payload) AS leg
    CROSS JOIN LATERAL (VALUES (leg ->> 0), (leg ->> 1)) AS acc(id)
    WHERE acc.id IS NOT NULL;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER journal_accounts_add AFTER INSERT ON journals
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT
    EXECUTE FUNCTION journal_accounts_add();

-- Backfill the journals written before this migration (same rule as the trigger), by id
-- ranges of 50,000, each committed on its own: no transaction runs for the whole backfill
-- (a long one holds back vacuum, and the relay's reads: docs/operations.md). The trigger
-- took its lock after every journal insert then running had ended, so every journal up to
-- the highest id read here was written before it or went through it, and every later one
-- went through it; a journal in both (or a second run of this file) conflicts, and is
-- skipped. COMMIT inside DO: this file runs outside a transaction.
DO $$
DECLARE
    last_id CONSTANT bigint := (SELECT coalesce(max(id), 0) FROM journals);
    low bigint := 0;
BEGIN
    WHILE low < last_id LOOP
        INSERT INTO journal_accounts (account_id, journal_id)
        SELECT DISTINCT acc.id, j.id
        FROM journals j
        CROSS JOIN LATERAL jsonb_array_elements(j.payload) AS leg
        CROSS JOIN LATERAL (VALUES (leg ->> 0), (leg ->> 1)) AS acc(id)
        WHERE j.id > low AND j.id <= low + 50000 AND acc.id IS NOT NULL
        ON CONFLICT DO NOTHING;
        COMMIT;
        low := low + 50000;
    END LOOP;
END
$$;

-- ?status=: `completed` is nearly every journal, so the primary key scanned backwards
-- with a filter finds a page in about `limit` rows. The other statuses are rare: each gets
-- a partial index on id, which the planner picks when the status is a literal in the query
-- (the adapter inlines it from a fixed list). Journal status updates are already not HOT
-- (journals_unfinished has status in its predicate), so these add no new kind of write:
-- an entry only for a row that has that status.
CREATE INDEX CONCURRENTLY IF NOT EXISTS journals_processing_id ON journals (id) WHERE status = 'processing';
CREATE INDEX CONCURRENTLY IF NOT EXISTS journals_failed_id ON journals (id) WHERE status = 'failed';
CREATE INDEX CONCURRENTLY IF NOT EXISTS journals_held_id ON journals (id) WHERE status = 'held';
CREATE INDEX CONCURRENTLY IF NOT EXISTS journals_voided_id ON journals (id) WHERE status = 'voided';

-- ?type=: transfers are the common case (primary key with a filter); every other type
-- gets its partial index. The type CHECK does not know capture, void and reversal yet
-- (migration 008 does); an index predicate may name values no row has.
CREATE INDEX CONCURRENTLY IF NOT EXISTS journals_deposit_id ON journals (id) WHERE type = 'deposit';
CREATE INDEX CONCURRENTLY IF NOT EXISTS journals_withdrawal_id ON journals (id) WHERE type = 'withdrawal';
CREATE INDEX CONCURRENTLY IF NOT EXISTS journals_capture_id ON journals (id) WHERE type = 'capture';
CREATE INDEX CONCURRENTLY IF NOT EXISTS journals_void_id ON journals (id) WHERE type = 'void';
CREATE INDEX CONCURRENTLY IF NOT EXISTS journals_reversal_id ON journals (id) WHERE type = 'reversal';

-- ?since= / ?until=: pages are ordered by id, but the window is on created_at. Both grow
-- together, except that a journal's created_at is read inside the transaction that takes
-- its id, so the two orders differ by at most a transaction's duration. The adapter turns
-- the window into an id range with one probe of this index per bound, widened by a slack
-- (LISTING_SLACK in server/adapters/postgres/listing.py), then scans the primary key
-- backwards inside that range, keeping the exact created_at test as a filter: a page deep
-- in the past starts at its window instead of scanning every newer journal. This is the
-- one index that every journal write pays for (an insert, and one per non-HOT update).
CREATE INDEX CONCURRENTLY IF NOT EXISTS journals_created_at ON journals (created_at);

-- ?at= on an account: the newest entry created at or before the instant, one descent.
-- Ledgers are insert-only, so this is one more index entry per posting.
CREATE INDEX CONCURRENTLY IF NOT EXISTS ledgers_account_created ON ledgers (account_id, created_at DESC, id DESC);

-- GET /v1/accounts?currency=&status=: by id. A currency's accounts in id order; balance
-- updates touch neither column and stay HOT. Locked and closed accounts are rare: partial
-- indexes; `active` is served by the primary key (or this index) with a filter.
CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_currency_id ON accounts (currency, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_locked_id ON accounts (id) WHERE status = 'locked';
CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_closed_id ON accounts (id) WHERE status = 'closed';
