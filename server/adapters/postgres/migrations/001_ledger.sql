-- The system of record: accounts, journals (one per transaction request), ledger entries.

CREATE TABLE accounts (
    id              text PRIMARY KEY,
    currency        text NOT NULL,
    balance         bigint NOT NULL DEFAULT 0,
    -- NULL means unlimited (the @world:<CUR> system accounts).
    overdraft_limit bigint CHECK (overdraft_limit IS NULL OR overdraft_limit >= 0),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'locked', 'closed')),
    contact         jsonb,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    version         bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (overdraft_limit IS NULL OR balance >= -overdraft_limit)
);

CREATE TABLE journals (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_ref      text NOT NULL,
    type              text NOT NULL CHECK (type IN ('transfer', 'deposit', 'withdrawal')),
    status            text NOT NULL CHECK (status IN ('processing', 'completed', 'failed')),
    currency          text NOT NULL,
    description       text,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- The normalised legs: [[source, destination, amount], ...].
    payload           jsonb NOT NULL,
    idempotency_scope text,
    idempotency_key   text,
    request_hash      text,
    -- 'async' (answered 202) or 'sync' (?wait=true), to replay the original answer.
    mode              text NOT NULL DEFAULT 'async',
    -- (microseconds from arrival to the accept commit: 2^31 of them are 35 minutes)
    -- squawk-ignore prefer-bigint-over-int
    accept_time_us    integer,
    error_code        text,
    error_message     text,
    lease_owner       text,
    lease_expires_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz,
    CONSTRAINT journals_external_ref_key UNIQUE (external_ref),
    CONSTRAINT journals_idempotency_key UNIQUE (idempotency_scope, idempotency_key)
);

-- The recovery sweeper looks only at unfinished journals.
CREATE INDEX journals_unfinished ON journals (lease_expires_at) WHERE status = 'processing';

CREATE TABLE ledgers (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    journal_id    bigint NOT NULL REFERENCES journals (id),
    account_id    text NOT NULL REFERENCES accounts (id),
    direction     text NOT NULL CHECK (direction IN ('debit', 'credit')),
    amount        bigint NOT NULL CHECK (amount > 0),
    balance_after bigint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Per-account newest-first paging (cursor = ledger id).
CREATE INDEX ledgers_account_newest ON ledgers (account_id, id DESC);
CREATE INDEX ledgers_journal ON ledgers (journal_id);

-- Transactional outbox: written in the same transaction that finishes a journal.
CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    journal_id   bigint NOT NULL UNIQUE REFERENCES journals (id),
    receipt_code text NOT NULL,
    payload      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;
