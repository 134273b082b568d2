-- Tables owned by the gRPC receipt and notification services.

CREATE TABLE receipts (
    code         text PRIMARY KEY,
    type         text NOT NULL,
    currency     text NOT NULL,
    amount       bigint NOT NULL,
    -- Account info fetched from the accounts table when the receipt is created.
    accounts     jsonb NOT NULL DEFAULT '[]'::jsonb,
    status       text NOT NULL DEFAULT 'processing',
    error_code   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notification_dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    receipt_code text NOT NULL,
    channel      text NOT NULL,
    recipient    text NOT NULL,
    payload      jsonb NOT NULL,
    -- (a handful of delivery attempts)
    -- squawk-ignore prefer-bigint-over-int
    attempts     integer NOT NULL,
    last_error   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
