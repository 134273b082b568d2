-- kassa:no-transaction
-- The outbox relay deletes rows once Kafka acknowledged them (server/kafka/relay.py)
-- instead of setting published_at and pruning later, so the table holds only the
-- backlog. Nothing reads published_at through an index any more, and without these
-- indexes an update of it (an older relay during a rolling upgrade) is HOT.
-- published_at stays, NULL on every waiting row: drain queries count
-- `WHERE published_at IS NULL`.
-- Statement by statement, outside a transaction (migration_steps.py): the indexes are
-- dropped CONCURRENTLY and the delete holds no lock that inserts wait for.
DROP INDEX CONCURRENTLY IF EXISTS outbox_unpublished;
DROP INDEX CONCURRENTLY IF EXISTS outbox_published_at;

-- Published before this migration, waiting for the prune that no longer runs.
DELETE FROM outbox WHERE published_at IS NOT NULL;

COMMENT ON COLUMN outbox.published_at IS
    'Unused since migration 005 (published rows are deleted); NULL on every row.';
