"""asyncpg pools and the conversion of driver errors into core's typed errors."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator

import asyncpg

from core.ledger.errors import TransientConflict, Unavailable

log = logging.getLogger("kassa.postgres")


async def keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool as it is.

    asyncpg's default reset (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL;`) costs a round trip on every release, several per executor batch.
    Pooled connections never carry session state here: statements run in explicit
    transactions, and what needs a session (the relay's advisory lock, LISTEN) uses a
    dedicated connection. asyncpg still rolls back a transaction left open before it
    calls this.
    """


async def create_pool(dsn: str, *, min_size: int, max_size: int) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, reset=keep_session,
        # The hot statements are few and reused: keep them prepared per connection.
        statement_cache_size=256, command_timeout=60,
    )


@contextlib.asynccontextmanager
async def converted_errors() -> AsyncIterator[None]:
    """Convert lower-layer errors once, at the adapter boundary."""
    try:
        yield
    except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
        raise TransientConflict(str(exc)) from exc
    except (OSError, TimeoutError, asyncpg.PostgresConnectionError,
            asyncpg.OperatorInterventionError, asyncpg.InterfaceError) as exc:
        # Unreachable, restarting or shutting down (class 08 and 57 errors), or too slow.
        # The message may reach a client: the driver's text (host, port) goes to the log.
        log.warning("database unavailable: %r", exc)
        raise Unavailable("the database is unavailable", retry_after_s=1) from exc


def iso(ts: dt.datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
