-- Receipt codes come in blocks reserved from the receipt service, and receipts are
-- registered once, with their final status, after the outcome (native/_py.py has the
-- code layout).

-- One number per block: its codes are native.block_codes(number, 0..count-1). A number
-- is never handed out twice, even across a crash (a crash only leaves a gap).
CREATE SEQUENCE receipt_blocks AS bigint MINVALUE 0 START WITH 1;

-- A receipt names its accounts by id; it no longer copies account rows.
ALTER TABLE receipts ADD COLUMN account_ids text[] NOT NULL DEFAULT '{}';
UPDATE receipts SET account_ids = ARRAY(SELECT a ->> 'id' FROM jsonb_array_elements(accounts) AS a)
WHERE accounts <> '[]'::jsonb;
-- (copied into account_ids just above; the receipt service of this release reads only that)
-- squawk-ignore ban-drop-column
ALTER TABLE receipts DROP COLUMN accounts;
