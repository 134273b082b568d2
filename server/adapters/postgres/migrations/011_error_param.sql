-- A failed transaction's error names the account at fault (docs/api.md, Transactions:
-- `error.param`). A nullable column without a default: added without rewriting the table,
-- under a lock held only for the catalog change.
ALTER TABLE journals ADD COLUMN error_param text;
