-- kassa:no-transaction
-- metadata[<key>]=<value> filters of GET /v1/transactions and GET /v1/accounts (exact
-- match on a string value): `metadata @> '{"<key>": "<value>"}'`, which a GIN index with
-- jsonb_path_ops answers (one hashed entry per path to a value, the smallest GIN opclass).
-- Partial on `metadata <> '{}'`: most journals carry no metadata, and for them the index
-- costs one predicate check per insert and no entry, no WAL. The queries repeat the
-- predicate (server/adapters/postgres/listing.py) so the planner can prove it may use the
-- index. Updates that leave metadata alone stay HOT-eligible. Built CONCURRENTLY, outside a
-- transaction (migration_steps.py): writes go on meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS journals_metadata ON journals USING gin (metadata jsonb_path_ops)
    WHERE metadata <> '{}'::jsonb;
CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_metadata ON accounts USING gin (metadata jsonb_path_ops)
    WHERE metadata <> '{}'::jsonb;
