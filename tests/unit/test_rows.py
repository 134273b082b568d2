"""server/adapters/postgres/rows.py: parameters numbered in the order the text names them,
rows transposed into columns in that order, and declarations that cannot disagree."""

from __future__ import annotations

import re
from typing import NamedTuple

import pytest

from server.adapters.postgres.journal_sql import FINISH_AND_POST, INSERT_AND_POST, INSERT_PENDING
from server.adapters.postgres.rows import Rows, Statement, columns


class Pair(NamedTuple):
    id: int
    name: str | None


PAIRS = Rows(Pair, id="bigint", name="text")


def test_parameters_are_numbered_in_text_order_and_args_follow() -> None:
    stmt = Statement(lambda p: f"SELECT * FROM {p.rows('pairs', PAIRS)} "
                               f"WHERE id < {p.value('limit', 'int')}")
    assert stmt.sql == ("SELECT * FROM unnest($1::bigint[], $2::text[]) AS u(id, name) "
                        "WHERE id < $3::int")
    assert stmt.args(limit=7, pairs=[Pair(1, "a"), Pair(2, None)]) == [[1, 2], ["a", None], 7]
    assert stmt.args(limit=7, pairs=[]) == [[], [], 7]


def test_columnar_rows_pass_through() -> None:
    stmt = Statement(lambda p: f"SELECT * FROM {p.rows('pairs', PAIRS, columnar=True)}")
    assert stmt.args(pairs=([1, 2], ["a", "b"])) == [[1, 2], ["a", "b"]]


def test_declarations_that_disagree_are_refused() -> None:
    with pytest.raises(TypeError):
        Rows(Pair, id="bigint")  # a field without a type
    stmt = Statement(lambda p: f"SELECT {p.value('a', 'int')}")
    with pytest.raises(TypeError):
        stmt.args(b=1)  # an argument the statement does not take
    with pytest.raises(ValueError):
        Statement(lambda p: f"SELECT {p.value('a', 'int')}, {p.value('a', 'int')}")
    with pytest.raises(ValueError):
        columns([(1, "a"), (2,)], 2)  # rows of unequal width


@pytest.mark.parametrize("stmt", [INSERT_PENDING, INSERT_AND_POST, FINISH_AND_POST])
def test_the_journal_statements_number_every_parameter_once(stmt: Statement) -> None:
    """$1..$n each appear, none is skipped (a skipped number is a parameter the call
    would pass that the text never reads)."""
    numbers = {int(n) for n in re.findall(r"\$(\d+)", stmt.sql)}
    assert numbers == set(range(1, max(numbers) + 1))
