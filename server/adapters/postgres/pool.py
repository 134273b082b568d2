"""asyncpg pools and the conversion of driver errors into core's typed errors."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg

from core.kit.rate_limit import Throttle
from core.ledger.errors import TransientConflict, Unavailable

log = logging.getLogger("kassa.postgres")
T = TypeVar("T")

# While the database is down, each component of a process says so in one warning line at
# most this often, without a traceback; the first failure is logged at once.
OUTAGE_LOG_INTERVAL_S = 5.0


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


# The one classification of "the database cannot serve this now": the error says nothing
# about the request, nothing was changed, and the same request may succeed later.
#  - The connection is gone or cannot be made (class 08, OSError, a timeout, the driver's
#    InterfaceError) or the server is restarting or shutting down (class 57).
#    A session the server ended while it sat idle in the pool (a shutdown, a terminated
#    backend) may instead fail its next statement with the driver's InternalClientError
#    ("cannot switch to state 12; another operation (2) is in progress": asyncpg issue 1069;
#    SQLAlchemy counts it as a disconnect too): the protocol state of a dead session.
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError,
    asyncpg.InterfaceError, asyncpg.InternalClientError)
#  - The server is out of resources (class 53: 53000 insufficient_resources, 53100 disk_full,
#    53200 out_of_memory, 53300 too_many_connections, 53400 configuration_limit_exceeded).
#    The statement failed and its transaction is rolled back.
OUT_OF_RESOURCES: tuple[type[BaseException], ...] = (asyncpg.InsufficientResourcesError,)
UNAVAILABLE: tuple[type[BaseException], ...] = (*CONNECTION_LOST, *OUT_OF_RESOURCES)


#  - The session had already ended when this process used it: the server closed it while
#    it sat idle in the pool (a restart, a terminated backend) and the goodbye was still
#    unread when the connection was handed out (the event loop was busy meanwhile). asyncpg
#    replaces a pooled connection it knows is closed; this one it learns about from the
#    next statement, which fails with one of these.
SESSION_ENDED: tuple[type[BaseException], ...] = (
    asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, asyncpg.InternalClientError,
    ConnectionError)


async def _session_ended(pool: asyncpg.Pool) -> None:
    """One pooled session was found ended: the others idle beside it may be too (the same
    restart ended them all). Expired, each is replaced at its next acquire instead of
    failing its next statement; a connection in use is closed when it is released."""
    log.info("a pooled database session had ended; replacing the pool's connections")
    await pool.expire_connections()


@contextlib.asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on a pooled connection whose BEGIN the server answered. A session
    found ended at BEGIN did nothing: BEGIN is retried once on a fresh connection. A
    failure after BEGIN is the caller's (the statements may have reached the server)."""
    for retry in (True, False):
        async with contextlib.AsyncExitStack() as stack:
            conn = await stack.enter_async_context(pool.acquire())
            try:
                await stack.enter_async_context(conn.transaction())
            except SESSION_ENDED:
                if not retry:
                    raise
                await _session_ended(pool)
                continue
            yield conn
            return


async def read(pool: asyncpg.Pool, run: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """`run` (reads only: it changes nothing) on a pooled connection; run again once on a
    fresh connection when its session is found ended. A connection that cannot be made is
    not retried: the database is down."""
    for retry in (True, False):
        async with pool.acquire() as conn:
            try:
                return await run(conn)
            except SESSION_ENDED:
                if not retry:
                    raise
        await _session_ended(pool)
    raise AssertionError("unreachable: the second attempt returns or raises")


class PoolReconnectLog(logging.Filter):
    """asyncpg's pool reconnects in the background to keep `min_size` connections and logs
    every failed attempt with its traceback (`Failed to restore the pool connection floor;
    retrying`, from 1 s apart up to 60 s, per pool). A connection loss is an outage, not a
    defect: such a record loses its traceback, carries the error instead and passes at
    most once per OUTAGE_LOG_INTERVAL_S for the process. Any other error keeps its
    traceback."""

    def __init__(self, interval_s: float = OUTAGE_LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttle = Throttle(interval_s, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not isinstance(exc, UNAVAILABLE):
            return True
        if not self._throttle.ready():
            return False
        record.msg, record.args = "database unavailable: %s: %r", (record.getMessage(), exc)
        record.exc_info, record.exc_text = None, None
        return True


def quiet_pool_reconnects(logger: logging.Logger | None = None) -> None:
    """Install PoolReconnectLog on asyncpg's pool logger, once. Done on import: every
    process with a pool (the workers, the receipt and notification services) imports this
    module."""
    logger = logger or logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, PoolReconnectLog) for f in logger.filters):
        logger.addFilter(PoolReconnectLog())


quiet_pool_reconnects()


class ResourceAlarm:
    """When this process's last statement was refused for lack of resources (class 53), and
    why. A full disk still answers `SELECT 1`, so /readyz asks this as well: it reports the
    database as refusing for a short while after each refusal, then probes again by itself."""

    _NAMES = {"53100": "disk_full", "53200": "out_of_memory", "53300": "too_many_connections"}

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._at: float | None = None
        self._sqlstate = ""

    def record(self, sqlstate: str) -> None:
        self._at, self._sqlstate = self._clock(), sqlstate

    def recent(self, within_s: float) -> str | None:
        """`disk_full`, `out_of_memory`, `too_many_connections` or `out_of_resources` when a
        statement was refused within the last `within_s` seconds, else None."""
        if self._at is None or self._clock() - self._at >= within_s:
            return None
        return self._NAMES.get(self._sqlstate, "out_of_resources")


# One per process: every pool of a process talks to the same database.
RESOURCE_ALARM = ResourceAlarm()
# Requests and background tasks all convert a lost connection: one line per interval.
_UNAVAILABLE_WARNING = Throttle(OUTAGE_LOG_INTERVAL_S)
_OUT_OF_RESOURCES_WARNING = Throttle(OUTAGE_LOG_INTERVAL_S)  # a full disk refuses every write


def unavailable(exc: BaseException) -> Unavailable | None:
    """The Unavailable (503 `unavailable`, Retry-After) a driver error means, or None when
    it means something else (refused data, a conflict, a defect). An Unavailable raised
    further down is itself."""
    if isinstance(exc, Unavailable):
        return exc
    if isinstance(exc, OUT_OF_RESOURCES):
        # The sqlstate and the server's text go to the log, never to a client.
        sqlstate = str(getattr(exc, "sqlstate", "53000"))
        RESOURCE_ALARM.record(sqlstate)
        if _OUT_OF_RESOURCES_WARNING.ready():
            log.warning("database out of resources (%s): %r", sqlstate, exc)
        return Unavailable("the database is out of resources", retry_after_s=1)
    if isinstance(exc, CONNECTION_LOST):
        # The message may reach a client: the driver's text (host, port) goes to the log,
        # at most once per OUTAGE_LOG_INTERVAL_S (every request fails the same way).
        if _UNAVAILABLE_WARNING.ready():
            log.warning("database unavailable: %r", exc)
        return Unavailable("the database is unavailable", retry_after_s=1)
    return None


@contextlib.asynccontextmanager
async def converted_errors() -> AsyncIterator[None]:
    """Convert lower-layer errors once, at the adapter boundary."""
    try:
        yield
    except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
        raise TransientConflict(str(exc)) from exc
    except UNAVAILABLE as exc:
        down = unavailable(exc)
        assert down is not None, "UNAVAILABLE is what unavailable() converts"
        raise down from exc


def iso(ts: dt.datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
