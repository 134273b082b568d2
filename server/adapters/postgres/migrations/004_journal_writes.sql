-- kassa:no-transaction
-- Cheaper journal writes (docs/performance.md, throughput redesign).

-- Statement by statement, outside a transaction (migration_steps.py): nothing blocks the
-- journals' writes longer than a catalog change. Every statement can run again.

-- Most requests carry no Idempotency-Key: a partial unique index skips their rows instead
-- of indexing (NULL, NULL) for every journal. It is built CONCURRENTLY under a name of its
-- own, then takes the constraint's name (the code names it) in one transaction; the
-- constraint keeps the keys unique until then.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS journals_idempotency_partial
    ON journals (idempotency_scope, idempotency_key) WHERE idempotency_key IS NOT NULL;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_constraint WHERE conname = 'journals_idempotency_key') THEN
        ALTER TABLE journals DROP CONSTRAINT journals_idempotency_key;
        ALTER INDEX journals_idempotency_partial RENAME TO journals_idempotency_key;
    END IF;
END
$$;
-- Only left by a second run of this file after the rename (a duplicate).
DROP INDEX CONCURRENTLY IF EXISTS journals_idempotency_partial;

-- Balance updates touch no indexed column: leave room on each page so they stay HOT.
-- (setting it again is a no-op)
-- squawk-ignore prefer-robust-stmts
ALTER TABLE accounts SET (fillfactor = 80);
