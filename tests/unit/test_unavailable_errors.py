"""One classification of "the database cannot serve this now" (issue 18, D1): PostgreSQL's
class 53 errors (out of resources) are converted at the adapter boundary like the
connection-class ones, to Unavailable, which the HTTP layer answers 503 `unavailable` with
Retry-After; during COMMIT they leave the outcome open (CommitUnknown, then the check).
A worker whose startup fails only for such an error retries instead of exiting with
gunicorn's WORKER_BOOT_ERROR."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from core.ledger.errors import CommitUnknown, KassaError, Rejected, TransientConflict, Unavailable
from server.adapters.postgres import lost_commit
from server.adapters.postgres.pool import UNAVAILABLE, converted_errors, unavailable
from server.http.errors import error_response
from server.http.hot import error_answer
from server.process.gunicorn_app import dependency_down

CLASS_53 = [
    (asyncpg.InsufficientResourcesError, "53000"),
    (asyncpg.DiskFullError, "53100"),
    (asyncpg.OutOfMemoryError, "53200"),
    (asyncpg.TooManyConnectionsError, "53300"),
    (asyncpg.ConfigurationLimitExceededError, "53400"),
]
CONNECTION_CLASS = [
    ConnectionRefusedError(111, "Connection refused 10.0.0.7:5432"),
    TimeoutError(),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.InterfaceError("cannot perform operation: connection is closed"),
    # what a statement on a session the server ended while idle may raise instead
    asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
]
DRIVER_TEXT = 'could not extend file "base/16384/16385": No space left on device'


def test_the_class_53_exceptions_carry_their_sqlstate() -> None:
    for cls, sqlstate in CLASS_53:
        assert cls.sqlstate == sqlstate
        assert issubclass(cls, UNAVAILABLE)


@pytest.mark.parametrize(("cls", "sqlstate"), CLASS_53)
async def test_class_53_is_unavailable_with_retry_after(cls: type[Exception], sqlstate: str) -> None:
    with pytest.raises(Unavailable) as raised:
        async with converted_errors():
            raise cls(DRIVER_TEXT)
    exc = raised.value
    assert exc.code == "unavailable" and exc.retriable and exc.retry_after_s == 1
    assert "No space" not in exc.message and "base/" not in exc.message  # no driver text
    assert isinstance(exc.__cause__, cls)


@pytest.mark.parametrize("error", CONNECTION_CLASS, ids=lambda e: type(e).__name__)
async def test_connection_class_errors_stay_unavailable(error: Exception) -> None:
    with pytest.raises(Unavailable) as raised:
        async with converted_errors():
            raise error
    assert raised.value.message == "the database is unavailable"
    assert "10.0.0.7" not in raised.value.message


async def test_other_database_errors_are_not_unavailable() -> None:
    with pytest.raises(TransientConflict):
        async with converted_errors():
            raise asyncpg.DeadlockDetectedError("deadlock detected")
    for error in (asyncpg.UniqueViolationError("dup"), asyncpg.NumericValueOutOfRangeError("x"),
                  asyncpg.UndefinedTableError("no table"), ValueError("a bug")):
        with pytest.raises(type(error)):
            async with converted_errors():
                raise error
        assert unavailable(error) is None


def test_unavailable_is_its_own_conversion() -> None:
    down = Unavailable("the receipt service is unavailable", retry_after_s=2)
    assert unavailable(down) is down


@pytest.mark.parametrize(("cls", "sqlstate"), CLASS_53)
def test_the_answer_is_503_unavailable_with_retry_after(cls: type[Exception], sqlstate: str) -> None:
    down = unavailable(cls(DRIVER_TEXT))
    assert down is not None
    hot = error_answer(down)
    assert hot.status == 503
    assert (b"retry-after", b"1") in hot.headers
    assert b'"code":"unavailable"' in hot.body and b"No space" not in hot.body
    response = error_response(down.code, down.message, retry_after_s=down.retry_after_s)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert b'"code":"unavailable"' in response.body


# lost_commit.transaction: class 53 before COMMIT is a failed statement (Unavailable); during
# COMMIT (a failed WAL write is a PANIC after which the commit may be on disk) the outcome
# is open: CommitUnknown, so the check looks the journals up.

class _Transaction:
    def __init__(self, on_commit: BaseException | None) -> None:
        self._on_commit = on_commit

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: object, exc: object, tb: object) -> None:
        if kind is None and self._on_commit is not None:
            raise self._on_commit


class _Connection:
    def __init__(self, on_commit: BaseException | None) -> None:
        self._on_commit = on_commit

    def get_server_pid(self) -> int:
        return 4242

    def transaction(self) -> _Transaction:
        return _Transaction(self._on_commit)


class _Pool:
    def __init__(self, on_commit: BaseException | None = None) -> None:
        self._on_commit = on_commit

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[_Connection]:
        yield _Connection(self._on_commit)


@pytest.mark.parametrize(("cls", "sqlstate"), CLASS_53)
async def test_class_53_in_a_statement_is_unavailable(cls: type[Exception], sqlstate: str) -> None:
    with pytest.raises(Unavailable):
        async with lost_commit.transaction(_Pool()):  # type: ignore[arg-type]
            raise cls(DRIVER_TEXT)


@pytest.mark.parametrize(("cls", "sqlstate"), CLASS_53)
async def test_class_53_at_commit_leaves_the_outcome_open(cls: type[Exception], sqlstate: str) -> None:
    with pytest.raises(CommitUnknown) as raised:
        async with lost_commit.transaction(_Pool(on_commit=cls(DRIVER_TEXT))):  # type: ignore[arg-type]
            pass
    assert raised.value.session == 4242


async def test_refused_data_is_still_rejected() -> None:
    with pytest.raises(Rejected):
        async with lost_commit.transaction(_Pool()):  # type: ignore[arg-type]
            raise asyncpg.NumericValueOutOfRangeError("out of range")


# A worker's startup: retried only when a dependency is down for now.

def test_startup_failures_for_a_dependency_down_are_retried() -> None:
    for cls, _ in CLASS_53:
        assert dependency_down(cls(DRIVER_TEXT))
    for error in CONNECTION_CLASS:
        assert dependency_down(error)
    assert dependency_down(Unavailable("the database is unavailable"))
    wrapped = RuntimeError("startup")
    wrapped.__cause__ = asyncpg.TooManyConnectionsError("sorry, too many clients already")
    assert dependency_down(wrapped)


def test_other_startup_failures_still_stop_the_server() -> None:
    assert not dependency_down(None)
    assert not dependency_down(ValueError("a bug"))
    assert not dependency_down(asyncpg.InvalidPasswordError("password authentication failed"))
    assert not dependency_down(KassaError("KASSA_NODE_ID=3 is held by another live process"))
