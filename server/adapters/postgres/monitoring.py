"""What health checks and gauges ask of the database (core/pipeline/read_ports.py: Ping,
BacklogReader): cheap statements on the shared pool."""

from __future__ import annotations

import asyncpg

from core.pipeline.read_ports import Backlog


class PgMonitoring:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    async def backlog(self) -> Backlog:
        row = await self._pool.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS age "
            "FROM journals WHERE status = 'processing'")
        return Backlog(row["n"], float(row["age"] or 0))
