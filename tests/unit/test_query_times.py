"""Time-valued query parameters (`?at=` of GET /v1/accounts/{id}, `since`/`until` of
GET /v1/transactions): a `+` offset typed as is arrives as a space (a query string decodes
`+` to a space) and is taken as the `+` it was; `%2B` works too. The values go through
Starlette's own query decoding, as in the handlers."""

from __future__ import annotations

import datetime as dt

import pytest
from starlette.requests import Request

from core.ledger.errors import InvalidRequest
from server.http.handlers.listing import check_time

PLUS_ONE = dt.timezone(dt.timedelta(hours=1))


def decoded(raw_query: str, name: str) -> str:
    """The parameter as a handler sees it: `request.query_params[name]`."""
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [],
                       "query_string": raw_query.encode()})
    value: str = request.query_params[name]
    return value


@pytest.mark.parametrize("name", ["at", "since", "until"])
@pytest.mark.parametrize("raw", ["2026-12-07T10:00:00+01:00", "2026-12-07T10:00:00%2B01:00",
                                 "2026-12-07T10:00:00%2b01:00", "2026-12-07T09:00:00Z",
                                 "2026-12-07T04:00:00-05:00"])
def test_a_plus_offset_written_as_is_or_escaped_is_the_same_instant(name: str, raw: str) -> None:
    value = decoded(f"{name}={raw}", name)
    assert check_time(name, value) == dt.datetime(2026, 12, 7, 10, tzinfo=PLUS_ONE)


def test_the_space_is_read_as_plus_with_its_fraction_and_offset() -> None:
    value = decoded("at=2026-12-07T10:00:00.123456789+05:30", "at")
    assert value == "2026-12-07T10:00:00.123456789 05:30"
    instant = check_time("at", value)
    assert instant.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert instant.microsecond == 123456


@pytest.mark.parametrize("value", [
    "2026-12-07T10:00:00  01:00",  # two spaces
    "2026-12-07T10:00:00 Z",
    "2026-12-07 10:00:00 01:00",  # the space stands for `T` only where RFC 3339 has a sign
    "2026-12-07T10:00:00 24:00",
    "2026-12-07T10:00:00 0100",
    " 2026-12-07T10:00:00Z",
    "2026-12-07T10:00:00",
])
def test_other_spaces_and_malformed_times_are_refused(value: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_time("at", value)
    assert "%2B" in refused.value.message  # the refusal tells how to write a `+`
