"""Numbered SQL migrations, applied in one transaction under an advisory lock."""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

log = logging.getLogger("kassa.migrate")

# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_ID = 0x4B41535341  # "KASSA"


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) pairs in version order, from the package's migrations folder."""
    folder = resources.files("server.adapters.postgres") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), (folder / name).read_text()) for name in names]


async def apply_migrations(dsn: str) -> list[str]:
    """Apply every migration not yet recorded; returns the versions applied now."""
    conn = await asyncpg.connect(dsn)
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
