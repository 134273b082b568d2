-- kassa:no-transaction
-- The journal row is the outbox (issue 19; docs/design.md "Events").
--
-- Until now every finished journal also wrote an outbox row (its event's bytes), which the
-- relay read, published and deleted: a heap row, two index entries, a foreign-key check, a
-- read, a delete and vacuum per transfer. Instead the statement that finishes a journal
-- (journal_sql.py: FINISH_AND_POST, INSERT_AND_POST, MARK_FAILED) marks it with its own
-- transaction id, and the relay reads the journals themselves, past a cursor per sink
-- (Kafka, and the receipt service), building each event from the row and its entries.
--
-- Why a transaction id and not the journal id: ids are drawn before the commit, so
-- journals commit out of id order, and a reader that moved past id N may later see a
-- journal with a smaller id. Every transaction whose id is below the xmin of a snapshot
-- has ended, so the relay reads only `event_xid < pg_snapshot_xmin(pg_current_snapshot())`
-- in (event_xid, id) order: nothing can appear behind its cursor later.
--
-- A hold that a capture or void ends gets no mark of its own (UPDATE_TARGETS): each
-- journal has exactly one event, about the write that finished it.

-- Statement by statement outside a transaction (migration_steps.py), so that the relay's
-- index is built CONCURRENTLY; everything before it is one transaction of catalog changes
-- and of updates to the few unfinished and backlog journals (found through indexes), which
-- must land together with the trigger that turns an older process's outbox rows into marks.
BEGIN;
-- Journals finished before this migration were published (or are in the backlog, below):
-- they read as '1' (lower than any transaction id; a constant default is stored once in
-- the catalog, not written into every row), and the cursors start past every '1'.
ALTER TABLE journals ADD COLUMN IF NOT EXISTS event_xid xid8 DEFAULT '1';
-- (no process writes event_xid yet: the default only stood for the rows already there)
-- squawk-ignore ban-drop-default
ALTER TABLE journals ALTER COLUMN event_xid DROP DEFAULT;
-- Unfinished journals get their mark when they finish (journals_processing_id, 007).
UPDATE journals SET event_xid = NULL WHERE status = 'processing';
-- The backlog: journals whose outbox row was not published yet get the id of this
-- migration's transaction, past the cursors, so the new relay publishes them (again, if an
-- old relay was publishing them meanwhile: at least once). Their receipts are registered
-- again too, which changes nothing.
-- (by primary key probes: a join could scan every journal while holding the lock above)
UPDATE journals SET event_xid = pg_current_xact_id()
WHERE id = ANY (ARRAY(SELECT journal_id FROM outbox));
DELETE FROM outbox;

-- One row per sink: the last journal it delivered. Only the relay holding the relay lock
-- (server/adapters/postgres/outbox.py) moves them, after the sink acknowledged.
CREATE TABLE IF NOT EXISTS journal_cursors (
    sink       text PRIMARY KEY,
    xid        xid8 NOT NULL,
    journal_id bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO journal_cursors (sink, xid, journal_id)
VALUES ('kafka', '1', 9223372036854775807), ('receipts', '1', 9223372036854775807)
ON CONFLICT (sink) DO NOTHING;

-- The outbox table stays, empty, for one release: a process of the previous version still
-- running during a rolling upgrade finishes journals with an INSERT INTO outbox in the
-- same statement. Its rows become marks here, at the end of that statement, so its events
-- are published by the new relay too; an old relay finds nothing to publish. A later
-- migration drops the table once no such process can run.
CREATE OR REPLACE FUNCTION outbox_rows_to_marks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE journals j SET event_xid = pg_current_xact_id()
    FROM written w WHERE j.id = w.journal_id;
    DELETE FROM outbox o USING written w WHERE o.id = w.id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER outbox_rows_to_marks AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_rows_to_marks();

COMMENT ON TABLE outbox IS
    'Unused since migration 010 (journals.event_xid is the outbox); rows an older process '
    'inserts become marks at once (trigger outbox_rows_to_marks).';
COMMIT;

-- The relay's read: (event_xid, id) past its cursor, in that order.
CREATE INDEX CONCURRENTLY IF NOT EXISTS journals_event ON journals (event_xid, id)
    WHERE event_xid IS NOT NULL;
