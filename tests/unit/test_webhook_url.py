"""What a webhook endpoint URL may be: the schema of POST /v1/webhooks (URL_PATTERN, the
Struct that decodes the body) and check_url (core/pipeline/webhooks.py) agree on every
edge case, and the sender's client (server/adapters/webhooks/transport.py) can use every
URL they allow."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.ledger.errors import InvalidRequest
from core.pipeline.webhooks import URL_LENGTH_MAX, URL_PATTERN, check_url
from server.adapters.webhooks.transport import Transport
from server.http.handlers.common import decode
from server.http.handlers.webhooks import webhook_in

ACCEPTED = [
    "https://a.example", "http://a.example/", "HTTPS://A.EXAMPLE/Hook", "https://a.example.",
    "http://localhost:8080/hooks/kassa?token=a%20b&x=1#frag", "http://127.0.0.1:1/",
    "http://10.0.0.1:65535", "https://my_service.internal/x", "http://[::1]:8443/h",
    "http://[2001:db8::1]", "http://[::ffff:192.0.2.1]/", "http://[1:2:3:4:5:6:7:8]",
    "https://a.example/p?q#f", "https://a.example?x=1", "https://a.example#f",
    "https://a.example/%E2%82%AC", "https://xn--bcher-kva.example/", "http://a-b.c-d.example",
    "https://" + "a" * 63 + ".example:443/",
]
REFUSED = [
    "", "a.example", "ftp://a.example", "https:/a.example", "https://", "https:///x",
    "https://?x", "https://#f", "https://@a.example", "https://user:pw@a.example",
    "https://a.example:0", "https://a.example:65536", "https://a.example:", "https://a.example:x",
    "https://a..example", "https://.a.example", "https://-a.example", "https://a-.example",
    "https://" + "a" * 64 + ".example", "https://a example", "https://a.example/a b",
    "https://a.example/\t", "https://a.example\n", "https://a.example/\n",
    "https://a.example/\x7f", "https://a.example/\u00a0", "https://a.example/\u2028",
    "https://bücher.example/", "https://a.example/€", "https://[::1", "https://[:::1]",
    "https://[1:2:3:4:5:6:7:8:9]", "https://[g::1]", "https://[::1]x", " https://a.example",
    "https://a.example/" + "x" * URL_LENGTH_MAX,
]


def _handler_takes(url: str) -> bool:
    """What POST /v1/webhooks does with the body: decode (the schema's pattern) and check."""
    try:
        check_url(decode(webhook_in, b'{"url": %s}' % _json(url)).url)
    except InvalidRequest as exc:
        assert exc.param in ("url", None) or "url" in str(exc)
        return False
    return True


def _json(text: str) -> bytes:
    import msgspec  # noqa: PLC0415

    return msgspec.json.encode(text)


@pytest.mark.parametrize("url", ACCEPTED)
def test_urls_a_user_would_give_are_taken(url: str) -> None:
    assert _handler_takes(url)
    assert re.search(URL_PATTERN, url)  # the document's pattern
    Transport()._target(url)  # noqa: SLF001 - the sender can use it


@pytest.mark.parametrize("url", REFUSED)
def test_urls_without_a_host_or_with_blanks_are_refused_by_both(url: str) -> None:
    assert not _handler_takes(url)
    # The pattern as a JSON Schema validator reads it (ECMA: `$` only at the very end).
    assert not (re.fullmatch(URL_PATTERN[1:-1], url) and len(url) <= URL_LENGTH_MAX)


@settings(max_examples=500, deadline=None)
@given(st.from_regex(URL_PATTERN, fullmatch=True).filter(lambda u: len(u) <= URL_LENGTH_MAX))
def test_every_url_the_schema_allows_is_taken_and_usable(url: str) -> None:
    assert _handler_takes(url)
    Transport()._target(url)  # noqa: SLF001



def test_a_refused_url_is_said_in_words() -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_url("https://a.example\n")
    assert refused.value.param == "url" and refused.value.message.startswith("url must be")


def test_a_registration_over_the_limit_is_a_422_not_a_400() -> None:
    from core.pipeline.webhooks import EndpointsFull  # noqa: PLC0415
    from server.http.errors import exception_parts  # noqa: PLC0415

    status, body, _ = exception_parts(EndpointsFull("at most 1 webhooks can be registered"))
    assert status == 422 and body["error"]["code"] == "invalid_request"
