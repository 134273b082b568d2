-- Node ids for receipt codes made in-process (no receipt service): each process leases
-- one from here and renews it, so two live processes never share one, on any host.
CREATE TABLE node_leases (
    -- (0..1023, checked)
    -- squawk-ignore prefer-bigint-over-int
    node_id    integer PRIMARY KEY CHECK (node_id BETWEEN 0 AND 1023),
    owner      text NOT NULL,
    expires_at timestamptz NOT NULL
);
