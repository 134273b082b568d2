"""Numbered SQL migrations, applied in order under an advisory lock (docs/operations.md,
Upgrades and migrations).

Each file runs in a transaction of its own, or statement by statement when it says so
(migration_steps.py), every statement with `lock_timeout`: a lock not granted in time is
given up, so writes queued behind the migration wait no longer than that, and the step is
retried after a backoff. Each applied file is recorded with the sha256 of its bytes; a
file changed after it was applied stops `kassa migrate` and `kassa serve`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from server.adapters.postgres.migration_steps import Step, concurrent_index_name, is_transactional
from server.adapters.postgres.migration_steps import steps as file_steps

log = logging.getLogger("kassa.migrate")

# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_ID = 0x4B41535341  # "KASSA"


class Migration(NamedTuple):
    version: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file's bytes (UTF-8), as `sha256sum` prints it."""
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def transactional(self) -> bool:
        return is_transactional(self.sql)


def migration_files() -> list[Migration]:
    """The migrations in version order, from the package's migrations folder (read as
    bytes: no newline translation, so the checksum is the file's)."""
    folder = resources.files("server.adapters.postgres") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [Migration(name.removesuffix(".sql"), (folder / name).read_bytes().decode())
            for name in names]


class MigrationRefused(Exception):
    """Migrating, or serving, must not go on: the message is one line saying why."""


@dataclass(frozen=True)
class LockPolicy:
    """How long a statement waits for a lock, and how often a step is tried."""

    timeout_ms: float = 3000.0
    attempts_max: int = 30
    backoff_min_s: float = 0.1
    backoff_max_s: float = 5.0


class DatabaseUnreachable(Exception):
    """No connection to the database: the message is one line naming it (no password)."""


async def connect(dsn: str, timeout_s: float = 60.0) -> asyncpg.Connection:
    """One connection to `dsn`; whatever stops it from being made (refused, unknown host,
    no socket, timeout, authentication, unknown database, a malformed DSN) raises
    DatabaseUnreachable."""
    try:
        return await asyncpg.connect(dsn, timeout=timeout_s)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [""])[0]
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {timeout_s:g}s"
        raise DatabaseUnreachable(f"cannot connect to PostgreSQL at {redacted(dsn)}: "
                                  f"{reason or type(exc).__name__}") from None


def redacted(dsn: str) -> str:
    """`dsn` without its password (in the authority or a `password=` parameter)."""
    try:
        parts = urlsplit(dsn)
        host = parts.netloc.rpartition("@")[2]
        netloc = (f"{parts.username}:***@{host}" if parts.password is not None
                  else parts.netloc)
        query = "&".join("password=***" if item.startswith("password=") else item
                         for item in parts.query.split("&")) if parts.query else ""
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "the configured URL"


CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(), checksum text)")
# Databases migrated before checksums were kept have the table without the column.
ADD_CHECKSUM = "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text"
# to_jsonb: reads the table with or without its checksum column, for --status on a database
# the previous release migrated, which must not be changed.
RECORDED = ("SELECT version, applied_at, to_jsonb(m) ->> 'checksum' AS checksum "
            "FROM schema_migrations m ORDER BY version")
RECORD = "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)"
ADOPT = "UPDATE schema_migrations SET checksum = $2 WHERE version = $1 AND checksum IS NULL"
LOCK_ERRORS = (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError)


# What the migrating session is called in pg_stat_activity (bench/migration_load.py finds
# the writes it blocks by it).
APPLICATION_NAME = "kassa migrate"


async def apply_migrations(dsn: str, *, connect_timeout_s: float = 60.0,
                           policy: LockPolicy | None = None,
                           until: str | None = None) -> list[str]:
    """Apply every migration not yet recorded (up to `until` included, when given);
    returns the versions applied now. Raises DatabaseUnreachable when no connection can be
    made, MigrationRefused when an applied migration was edited or a lock was not granted
    within the policy's attempts."""
    policy = policy or LockPolicy()
    conn = await connect(dsn, connect_timeout_s)
    try:
        await conn.execute(f"SET application_name = '{APPLICATION_NAME}'")
        # Session-level: held across the transactions of the steps. Another migrator
        # (another instance starting) may hold it for minutes while it builds an index.
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(f"SET lock_timeout = '{int(policy.timeout_ms)}ms'")
        applied = []
        pending = await _pending(conn, policy)
        for migration in [m for m in pending if until is None or m.version <= until]:
            await _apply(conn, migration, policy)
            log.info("applied migration %s", migration.version)
            applied.append(migration.version)
        return applied
    finally:
        await conn.close()  # also releases the advisory lock


async def _pending(conn: asyncpg.Connection, policy: LockPolicy) -> list[Migration]:
    """The migrations to apply, after recording the checksums of those applied before
    checksums were kept (the files of this release: docs/operations.md); refuses when an
    applied one differs from its file."""
    for ddl in (CREATE_TABLE, ADD_CHECKSUM):
        await _retrying(policy, "schema_migrations", partial(conn.execute, ddl))
    files = migration_files()
    recorded = {r["version"]: r["checksum"] for r in await conn.fetch(RECORDED)}
    adopted = [m for m in files if m.version in recorded and recorded[m.version] is None]
    await conn.executemany(ADOPT, [(m.version, m.checksum) for m in adopted])
    if adopted:
        log.info("recorded the checksums of %d migrations applied before checksums were kept",
                 len(adopted))
    for m in files:
        if recorded.get(m.version) not in (None, m.checksum):
            raise MigrationRefused(edited_message(m.version))
    return [m for m in files if m.version not in recorded]


def edited_message(version: str) -> str:
    return (f"migration {version} was changed after it was applied (its sha256 differs from "
            f"the one recorded then): restore the file, and put the change in a new migration")


async def _apply(conn: asyncpg.Connection, migration: Migration, policy: LockPolicy) -> None:
    """One migration: a transactional file is recorded in its own transaction; a
    statement-by-statement one once its last step is done (so a crash part way runs it
    again from the start: such files are written to be re-run)."""
    record = (migration.version, migration.checksum)
    if migration.transactional:
        step = file_steps(migration.sql)[0]
        await _retrying(policy, migration.version, lambda: _transaction(conn, step, record))
        return
    for step in file_steps(migration.sql):
        await _retrying(policy, migration.version, partial(_run, conn, step))
    await conn.execute(RECORD, *record)


async def _run(conn: asyncpg.Connection, step: Step) -> None:
    if step.transaction:
        await _transaction(conn, step, None)
        return
    index = concurrent_index_name(step.statements[0])
    if index is not None:
        await _drop_if_invalid(conn, index)
    await conn.execute(step.statements[0])


async def _transaction(conn: asyncpg.Connection, step: Step,
                       record: tuple[str, str] | None) -> None:
    async with conn.transaction():
        for statement in step.statements:
            await conn.execute(statement)
        if record is not None:
            await conn.execute(RECORD, *record)


async def _drop_if_invalid(conn: asyncpg.Connection, index: str) -> None:
    """A CONCURRENTLY build that failed (a lock timeout, a duplicate, a cancel) leaves its
    index INVALID: never used by queries, yet updated by every write, and `IF NOT EXISTS`
    would keep it. Drop it so the statement builds it again."""
    invalid = await conn.fetchval(
        "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = $1 AND pg_table_is_visible(c.oid)", index)
    if invalid:
        log.warning("index %s is INVALID (an earlier build failed): dropping it to build "
                    "it again", index)
        await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{index}"')


async def _retrying(policy: LockPolicy, what: str,
                    attempt: Callable[[], Awaitable[object]]) -> None:
    """Run `attempt`; a lock timeout (or a deadlock) is retried after a full-jitter backoff,
    doubling from backoff_min_s up to backoff_max_s, attempts_max times in all."""
    delay = policy.backoff_min_s
    for number in range(1, policy.attempts_max + 1):
        try:
            await attempt()
            return
        except LOCK_ERRORS as exc:
            if number == policy.attempts_max:
                raise MigrationRefused(
                    f"migration {what}: a lock was not granted within {policy.timeout_ms:g} ms "
                    f"in {number} attempts ({_first_line(exc)}); a long transaction holds one "
                    f"(see pg_locks)") from None
            log.warning("migration %s: %s; retrying (attempt %d of %d)", what,
                        _first_line(exc), number + 1, policy.attempts_max)
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, policy.backoff_max_s)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class State(NamedTuple):
    """One migration as --status shows it."""

    version: str
    state: str  # applied, pending, changed, unrecorded (no checksum yet), unknown (no file)
    applied_at: str


async def migration_status(dsn: str, *, connect_timeout_s: float = 60.0) -> list[State]:
    """Every migration of this release and every one recorded, read without changing
    anything (a database never migrated has every migration pending)."""
    conn = await connect(dsn, connect_timeout_s)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        rows = await conn.fetch(RECORDED) if exists else []
    finally:
        await conn.close()
    recorded = {r["version"]: r for r in rows}
    files = {m.version: m for m in migration_files()}
    return [_state(files.get(v), recorded.get(v)) for v in sorted({*files, *recorded})]


def _state(migration: Migration | None, row: asyncpg.Record | None) -> State:
    if row is None:
        assert migration is not None
        return State(migration.version, "pending", "")
    applied_at = row["applied_at"].isoformat(timespec="seconds")
    if migration is None:
        return State(row["version"], "unknown", applied_at)
    state = ("unrecorded" if row["checksum"] is None
             else "applied" if row["checksum"] == migration.checksum else "changed")
    return State(migration.version, state, applied_at)


def check_schema(states: list[State]) -> None:
    """For a server that does not migrate: refuses (MigrationRefused) a database that lacks
    a migration of this release, or holds one changed since it was applied."""
    changed = [s.version for s in states if s.state == "changed"]
    if changed:
        raise MigrationRefused(edited_message(changed[0]))
    pending = [s.version for s in states if s.state == "pending"]
    if pending:
        raise MigrationRefused(
            f"the database lacks {len(pending)} migrations this release needs "
            f"({', '.join(pending)}) and KASSA_MIGRATE_ON_START=0: run `kassa migrate` first")
