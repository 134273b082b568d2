"""Numbered SQL migrations, applied in one transaction under an advisory lock."""

from __future__ import annotations

import logging
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger("kassa.migrate")

# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_ID = 0x4B41535341  # "KASSA"


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) pairs in version order, from the package's migrations folder."""
    folder = resources.files("server.adapters.postgres") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), (folder / name).read_text()) for name in names]


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


async def apply_migrations(dsn: str, *, connect_timeout_s: float = 60.0) -> list[str]:
    """Apply every migration not yet recorded; returns the versions applied now. Raises
    DatabaseUnreachable when no connection can be made."""
    conn = await connect(dsn, connect_timeout_s)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            applied = []
            for version, sql in migration_files():
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                applied.append(version)
        for version in applied:
            log.info("applied migration %s", version)
        return applied
    finally:
        await conn.close()
