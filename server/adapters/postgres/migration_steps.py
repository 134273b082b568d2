"""How one migration file is run: as one transaction, or statement by statement.

A file whose first line is NO_TRANSACTION_MARKER runs outside a transaction, which
`CREATE INDEX CONCURRENTLY`, `DROP INDEX CONCURRENTLY` and a `VALIDATE CONSTRAINT` that
should not keep the catalog change's lock need: each statement commits on its own, except
an explicit `BEGIN; ... COMMIT;` block, which runs as one transaction (changes that must
land together, such as a trigger replaced by another). Every other file is one transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NO_TRANSACTION_MARKER = "-- kassa:no-transaction"

_CONCURRENT_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)


@dataclass(frozen=True)
class Step:
    """Statements run together: in one transaction, or (one statement) on its own."""

    statements: tuple[str, ...]
    transaction: bool


def is_transactional(sql: str) -> bool:
    return sql.split("\n", 1)[0].strip() != NO_TRANSACTION_MARKER


def steps(sql: str) -> list[Step]:
    """The file's steps in order: the whole file as one transaction, or (marked) one step
    per statement, a BEGIN ... COMMIT block being one transactional step."""
    if is_transactional(sql):
        return [Step((sql,), transaction=True)]
    result: list[Step] = []
    block: list[str] | None = None
    for statement in split_statements(sql):
        keyword = _first_word(statement)
        if keyword in ("BEGIN", "START"):
            block = []
        elif keyword in ("COMMIT", "END"):
            if block is None:
                raise ValueError("COMMIT without BEGIN in a no-transaction migration")
            result.append(Step(tuple(block), transaction=True))
            block = None
        elif block is not None:
            block.append(statement)
        else:
            result.append(Step((statement,), transaction=False))
    if block is not None:
        raise ValueError("BEGIN without COMMIT in a no-transaction migration")
    return result


def concurrent_index_name(statement: str) -> str | None:
    """The index a `CREATE INDEX CONCURRENTLY` statement builds (None for other statements):
    a failed build leaves it INVALID, to be dropped before the statement runs again."""
    match = _CONCURRENT_INDEX.search(_without_comments(statement))
    return match.group("name") if match else None


def _first_word(statement: str) -> str:
    words = _without_comments(statement).split(None, 1)
    return words[0].upper().rstrip(";") if words else ""


def _without_comments(statement: str) -> str:
    return "\n".join(line for line in statement.splitlines()
                     if not line.lstrip().startswith("--"))


def split_statements(sql: str) -> list[str]:
    """The statements of `sql`, split at the semicolons outside quotes, dollar-quoted
    bodies and comments; fragments holding only comments are dropped."""
    statements, start, i = [], 0, 0
    while i < len(sql):
        end = _skip_quoted(sql, i)
        if end > i:
            i = end
            continue
        if sql[i] == ";":
            statements.append(sql[start:i + 1])
            start = i + 1
        i += 1
    statements.append(sql[start:])
    return [s.strip() for s in statements if _without_comments(s).strip(" \t\n;")]


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def _skip_quoted(sql: str, i: int) -> int:
    """Where the quoted string, identifier, dollar-quoted body or comment starting at `i`
    ends (`i` itself when none starts there)."""
    if sql.startswith("--", i):
        end = sql.find("\n", i)
        return len(sql) if end < 0 else end + 1
    if sql.startswith("/*", i):
        end = sql.find("*/", i + 2)
        return len(sql) if end < 0 else end + 2
    if sql[i] in "'\"":
        end = i + 1
        while True:
            end = sql.find(sql[i], end)
            if end < 0:
                return len(sql)
            if sql.startswith(sql[i] * 2, end):  # a doubled quote is one quote character
                end += 2
                continue
            return end + 1
    tag = _DOLLAR_TAG.match(sql, i) if sql[i] == "$" else None
    if tag:
        end = sql.find(tag.group(), tag.end())
        return len(sql) if end < 0 else end + len(tag.group())
    return i
