-- The secret of the receipt code permutation (core/kit/code_cipher.py): codes are counters
-- (receipt_blocks, or time and sequence) sent through a bijection keyed by this, so codes
-- issued one after the other are not neighbours. One row, made here once, read by every
-- process at start: all of them must use the same secret, or two could make the same code.
-- 32 bytes from PostgreSQL's strong random source (gen_random_uuid: 122 random bits each).
-- Never change it on a live ledger: codes already issued stay unique, but new ones could
-- equal them.
CREATE TABLE receipt_code_key (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    secret     bytea NOT NULL CHECK (length(secret) >= 16),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO receipt_code_key (secret)
VALUES (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
