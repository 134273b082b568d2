-- Holds (two-phase transfers), captures, voids and reversals.
--
-- A hold is a transfer or withdrawal that reserves instead of posting: its journal ends
-- `held` and each source's `held` grows by its part; a capture or void (journals of their
-- own, `target` naming the hold) ends it `completed` or `voided` and releases the
-- reservation. A reversal names the journal it reverses in `target`; the original's
-- `reversed` adds up its completed reversals, under the original's row lock, so
-- concurrent partial reversals can never exceed it.

ALTER TABLE accounts
    ADD COLUMN held bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    -- What is held stays reserved: debits and new holds are checked against
    -- `available = balance - held` down to -overdraft_limit.
    ADD CONSTRAINT accounts_available_floor
        CHECK (overdraft_limit IS NULL OR balance - held >= -overdraft_limit);

ALTER TABLE journals DROP CONSTRAINT journals_type_check;
ALTER TABLE journals ADD CONSTRAINT journals_type_check
    CHECK (type IN ('transfer', 'deposit', 'withdrawal', 'capture', 'void', 'reversal'));
ALTER TABLE journals DROP CONSTRAINT journals_status_check;
ALTER TABLE journals ADD CONSTRAINT journals_status_check
    CHECK (status IN ('processing', 'completed', 'failed', 'held', 'voided'));

ALTER TABLE journals
    -- Set at accept on a hold: when the server voids it if nothing captured or voided it.
    ADD COLUMN hold_expires_at timestamptz,
    -- The receipt code a capture or void names (the hold) or a reversal (the original).
    ADD COLUMN target text,
    -- The sum of this journal's completed reversals (at most its amount).
    ADD COLUMN reversed bigint NOT NULL DEFAULT 0 CHECK (reversed >= 0);

-- The expiry sweeper reads pending holds by deadline; few rows, a partial index.
CREATE INDEX journals_holds_expiring ON journals (hold_expires_at) WHERE status = 'held';
-- `reversed_by` and `captured_by` of a journal: the journals naming it.
CREATE INDEX journals_target ON journals (target) WHERE target IS NOT NULL;
