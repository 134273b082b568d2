-- Event webhooks (issue 20, 2; docs/api.md "Webhooks").
--
-- An endpoint is a URL, an event filter (NULL: every event) and its Standard Webhooks
-- secret. A third relay sink, 'webhooks', turns the journals past its cursor into one
-- delivery row per matching endpoint, in the transaction that moves its cursor, so each
-- (event, endpoint) gets exactly one row. The relay's leader then sends the due rows
-- (server/adapters/webhooks/) and records each attempt's outcome on the row.
CREATE TABLE webhook_endpoints (
    id         text PRIMARY KEY,
    url        text NOT NULL,
    events     text[],
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     text NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    journal_id      bigint NOT NULL,
    receipt_code    text NOT NULL,
    event           text NOT NULL,
    payload         bytea NOT NULL,  -- the event's JSON, the same bytes on every attempt
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'succeeded', 'failed')),
    -- (attempts within a day's retry window; an HTTP status below)
    -- squawk-ignore prefer-bigint-over-int
    attempts        integer NOT NULL DEFAULT 0,
    -- When the next attempt is due; while one is in flight, the end of its claim (a
    -- sender that died mid-attempt leaves the row due again then).
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- Retries stop (status failed) at the first failure this long after the first try.
    retry_until     timestamptz,
    last_attempt_at timestamptz,
    -- squawk-ignore prefer-bigint-over-int
    last_status     integer,     -- the receiver's HTTP status, NULL when none came back
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- The sender's read: the pending rows by due time.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
-- The listing: an endpoint's deliveries, newest first (also the cascade's lookup).
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);

-- The new sink starts where Kafka stands: events published before this release are not
-- sent to endpoints that did not exist then.
INSERT INTO journal_cursors (sink, xid, journal_id)
SELECT 'webhooks', xid, journal_id FROM journal_cursors WHERE sink = 'kafka';
