-- kassa:no-transaction
-- Write each fact once (issue 19; docs/performance.md "Throughput II").
--
-- ?account= listings: a completed journal's accounts are already written once, in its
-- ledger entries. An index on ledgers (account_id, journal_id) lists them, and
-- journal_accounts now keeps only the journals that post nothing when first written
-- (processing, failed, held, voided), which are rare: a completed transfer no longer pays
-- two journal_accounts rows, their index entries, and a statement trigger that parsed its
-- payload. server/adapters/postgres/listing.py merges the two sources in journal id order.
-- Rows written before this migration for completed journals stay: the merge de-duplicates
-- them, and deleting them all would be one long write for nothing.
--
-- Statement by statement outside a transaction (migration_steps.py), so that the index is
-- built CONCURRENTLY; the trigger swap is one transaction of catalog changes (journals
-- written meanwhile get exactly one of the two triggers). Every statement can run again.
BEGIN;
-- (the statement trigger replaced below; nothing else calls its function)
-- squawk-ignore ban-drop-trigger
DROP TRIGGER IF EXISTS journal_accounts_add ON journals;
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS journal_accounts_add();

-- A row trigger with a WHEN clause: for a completed journal the condition is evaluated
-- and nothing else runs (no function call, no queued event).
CREATE OR REPLACE FUNCTION journal_accounts_add_unposted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO journal_accounts (account_id, journal_id)
    SELECT DISTINCT acc.id, NEW.id
    FROM jsonb_array_elements(NEW.payload) AS leg
    CROSS JOIN LATERAL (VALUES (leg ->> 0), (leg ->> 1)) AS acc(id)
    WHERE acc.id IS NOT NULL;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER journal_accounts_add_unposted AFTER INSERT ON journals
    FOR EACH ROW WHEN (NEW.status <> 'completed')
    EXECUTE FUNCTION journal_accounts_add_unposted();
COMMIT;

CREATE INDEX CONCURRENTLY IF NOT EXISTS ledgers_account_journal
    ON ledgers (account_id, journal_id DESC);

-- Ledger entries are written by the same statement as their journal, after the accounts
-- they name were locked and read: a foreign key would re-check, row by row, what that
-- statement already knows (two RI trigger queries per entry, each taking a KEY SHARE lock
-- on a row the transaction already holds FOR UPDATE). Journals and accounts are never
-- deleted. `kassa verify` checks both references (server/adapters/postgres/verify.py).
-- Dropping a foreign key locks both tables: each drop first locks them in the order a
-- write does (accounts, journals, then ledgers), else a write holding journals and waiting
-- for ledgers, and the drop holding ledgers and waiting for journals, deadlock (measured by
-- bench/migration_load.py: a write stalled for deadlock_timeout, then one side aborted).
BEGIN;
LOCK TABLE journals, ledgers IN ACCESS EXCLUSIVE MODE;
-- (a catalog change: no scan)
-- squawk-ignore ban-drop-constraint
ALTER TABLE ledgers DROP CONSTRAINT IF EXISTS ledgers_journal_id_fkey;
COMMIT;
BEGIN;
LOCK TABLE accounts, ledgers IN ACCESS EXCLUSIVE MODE;
-- squawk-ignore ban-drop-constraint
ALTER TABLE ledgers DROP CONSTRAINT IF EXISTS ledgers_account_id_fkey;
COMMIT;
