-- Webhook deliveries without their event's bytes (issue 20, 2; follows 014).
--
-- Each delivery row carried its event's JSON (about 700 bytes), and every attempt's
-- UPDATE wrote the whole row again: measured, 2.7 KB of WAL per event with one endpoint.
-- The event is built from its journal (immutable once finished) when it is sent, exactly
-- as the Kafka relay builds it, so the row keeps only the delivery's state; a new delivery
-- is sent first from the relay's memory, claimed in the INSERT that creates it.
ALTER TABLE webhook_deliveries DROP COLUMN payload;
