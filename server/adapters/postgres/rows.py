"""Typed rows to SQL: a statement's parameters declared once, by name, numbered for it.

A batch statement takes its rows as one array per column (`unnest($1::bigint[], ...)`), so
its text names dozens of positional parameters. Written by hand, `$27` and `cols[:11]`
must agree with the call site's argument order; here both come from one declaration:

    JOURNALS = Rows(JournalRow, id="bigint", external_ref="text", ...)
    INSERT = Statement(lambda p: f"INSERT INTO t SELECT * FROM {p.rows('journals', JOURNALS)}"
                                 f" WHERE created_at < {p.value('at', 'timestamptz')}")
    await conn.execute(INSERT.sql, *INSERT.args(journals=[JournalRow(...), ...], at=now))

The text is built once, at import (asyncpg caches the prepared statement by its text); a
call only transposes its rows into columns, in the order the text numbered them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple


class Rows:
    """The columns of one kind of row: a NamedTuple type and each field's PostgreSQL type."""

    def __init__(self, row: type[NamedTuple], **pg_types: str) -> None:
        fields = tuple(row._fields)
        if fields != tuple(pg_types):
            raise TypeError(f"{row.__name__}: types given for {tuple(pg_types)}, fields are {fields}")
        self.row = row
        self.names = fields
        self.pg_types = tuple(pg_types.values())


@dataclass(frozen=True)
class _Slot:
    name: str
    rows: Rows | None  # None: one scalar parameter
    columnar: bool = False  # given as columns already (one sequence per field)


class Params:
    """Numbers the parameters of one statement in the order its text names them."""

    def __init__(self) -> None:
        self.slots: list[_Slot] = []
        self._count = 0

    def _next(self, pg_type: str) -> str:
        self._count += 1
        return f"${self._count}::{pg_type}"

    def rows(self, name: str, rows: Rows, *, alias: str = "u", columnar: bool = False) -> str:
        """`unnest($n::t[], ...) AS alias(field, ...)` for a list of rows passed as `name`
        (`columnar`: passed as one sequence per field instead)."""
        self.slots.append(_Slot(name, rows, columnar))
        arrays = ", ".join(self._next(f"{t}[]") for t in rows.pg_types)
        return f"unnest({arrays}) AS {alias}({', '.join(rows.names)})"

    def value(self, name: str, pg_type: str) -> str:
        """One parameter, passed as `name`."""
        self.slots.append(_Slot(name, None))
        return self._next(pg_type)


class Statement:
    """SQL text composed with a Params, and the arguments of one call."""

    def __init__(self, compose: Callable[[Params], str]) -> None:
        params = Params()
        self.sql = compose(params)
        self._slots = tuple(params.slots)
        names = [s.name for s in self._slots]
        # A name used twice would be numbered twice: pass it once, reference it by number.
        if len(set(names)) != len(names):
            raise ValueError(f"parameter names repeat: {names}")

    def args(self, **values: Any) -> list[Any]:
        if set(values) != {s.name for s in self._slots}:
            raise TypeError(f"arguments {sorted(values)}, statement takes "
                            f"{sorted(s.name for s in self._slots)}")
        out: list[Any] = []
        for slot in self._slots:
            value = values[slot.name]
            if slot.rows is None:
                out.append(value)
            elif slot.columnar:
                assert len(value) == len(slot.rows.names), slot.name
                out.extend(list(column) for column in value)
            else:
                out.extend(columns(value, len(slot.rows.names)))
        return out


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows transposed into one list per column (`width` empty lists for no rows)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]
