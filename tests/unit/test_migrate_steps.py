"""How a migration file is cut into steps (server/adapters/postgres/migration_steps.py)."""

from __future__ import annotations

import pytest

from server.adapters.postgres.migrate import migration_files
from server.adapters.postgres.migration_steps import (
    Step,
    concurrent_index_name,
    split_statements,
    steps,
)


def test_an_unmarked_file_is_one_transaction_of_its_whole_text() -> None:
    sql = "-- a comment\nCREATE TABLE a (x int);\nCREATE INDEX ON a (x);\n"
    assert steps(sql) == [Step((sql,), transaction=True)]


def test_a_marked_file_runs_statement_by_statement_and_blocks_as_one_transaction() -> None:
    sql = ("-- kassa:no-transaction\n-- why\nCREATE INDEX CONCURRENTLY i ON a (x);\n"
           "BEGIN;\nDROP TRIGGER t ON a;\nCREATE TRIGGER u AFTER INSERT ON a "
           "FOR EACH ROW EXECUTE FUNCTION f();\nCOMMIT;\n"
           "ALTER TABLE a VALIDATE CONSTRAINT c;\n-- trailing comment\n")
    assert steps(sql) == [
        Step(("-- kassa:no-transaction\n-- why\nCREATE INDEX CONCURRENTLY i ON a (x);",), False),
        Step(("DROP TRIGGER t ON a;",
              "CREATE TRIGGER u AFTER INSERT ON a FOR EACH ROW EXECUTE FUNCTION f();"), True),
        Step(("ALTER TABLE a VALIDATE CONSTRAINT c;",), False),
    ]


def test_semicolons_inside_quotes_dollar_bodies_and_comments_do_not_split() -> None:
    sql = ("CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
           "    RETURN NULL;\nEND\n$$;\n"
           "COMMENT ON TABLE a IS 'one; it''s two';\n"
           "-- a comment; with a semicolon\n/* block; comment */ SELECT \"odd;name\" FROM a;\n"
           "DO $body$ BEGIN PERFORM 1; END $body$;")
    assert len(split_statements(sql)) == 4
    assert split_statements(sql)[0].endswith("END\n$$;")


@pytest.mark.parametrize("sql", ["-- kassa:no-transaction\nBEGIN;\nSELECT 1;\n",
                                 "-- kassa:no-transaction\nSELECT 1;\nCOMMIT;\n"])
def test_an_unbalanced_block_is_refused(sql: str) -> None:
    with pytest.raises(ValueError):
        steps(sql)


def test_the_index_a_concurrent_build_makes_is_named() -> None:
    assert concurrent_index_name(
        "-- x\ncreate unique index concurrently if not exists t_k on t (k);") == "t_k"
    assert concurrent_index_name("CREATE INDEX CONCURRENTLY journals_target ON j (t)") == \
        "journals_target"
    assert concurrent_index_name("DROP INDEX CONCURRENTLY IF EXISTS t_k;") is None
    assert concurrent_index_name("CREATE INDEX t_k ON t (k);") is None


def test_every_shipped_file_cuts_into_steps_and_builds_indexes_only_concurrently() -> None:
    """A marked file must never build an index inside a transaction: that would block
    writes to its table for the whole build."""
    for migration in migration_files():
        for step in steps(migration.sql):
            if migration.transactional:
                continue
            for statement in step.statements:
                upper = statement.upper()
                if "CREATE INDEX" in upper or "CREATE UNIQUE INDEX" in upper:
                    assert not step.transaction and concurrent_index_name(statement), statement


def test_checksums_are_the_sha256_of_the_file_bytes() -> None:
    import hashlib
    from pathlib import Path

    folder = Path(__file__).parents[2] / "server/adapters/postgres/migrations"
    for migration in migration_files():
        data = (folder / f"{migration.version}.sql").read_bytes()
        assert migration.checksum == hashlib.sha256(data).hexdigest()
