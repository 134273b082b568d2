-- Tracing (issue 22): the W3C traceparent of the request that accepted a journal, while
-- tracing is on (NULL otherwise). The relay sends it as the Kafka record's `traceparent`
-- header and parents its publish and webhook spans on it, so a trace runs from the HTTP
-- request through the outbox to a consumer. Nullable, no default: adding it rewrites
-- nothing and holds the table's lock for an instant.
ALTER TABLE journals ADD COLUMN traceparent text;
