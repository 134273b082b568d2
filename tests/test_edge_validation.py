"""The edge of the HTTP contract (docs/api.md, Errors), on the real app over HTTP: media types,
path and query values that cannot name anything, body strings and nesting, X-Request-Id,
the system accounts' status, 503 messages, and the admin key file's mode."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import stat
from pathlib import Path

import httpx
import pytest

from server.process.logs import FORMAT, RequestIdFilter
from tests.test_http_api import make_accounts, snapshot

pytestmark = pytest.mark.timeout(120)

DEPOSIT = b'{"type": "deposit", "currency": "USD", "destination": "bob", "amount": 1}'
BODY_ROUTES = [
    ("POST", "/v1/transactions", DEPOSIT),
    ("POST", "/v1/transactions?wait=true", DEPOSIT),
    ("POST", "/v1/transactions/batch", b'{"transactions": [' + DEPOSIT + b"]}"),
    ("POST", "/v1/accounts", b'{"id": "carol", "currency": "USD"}'),
    ("PATCH", "/v1/accounts/bob", b'{"status": "locked"}'),
]


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


class Untouched:
    """Fails the test if any dependency-backed runtime call is made."""

    def __init__(self, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        runtime = client.runtime  # type: ignore[attr-defined]
        for owner, name in ((runtime.api, "limit"), (runtime.accounts, "get"),
                            (runtime.accounts, "entries"), (runtime.accounts, "transaction"),
                            (runtime.accounts, "update"), (runtime.accounts, "edit_metadata"),
                            (runtime.status, "status")):
            monkeypatch.setattr(owner, name, self._recorder(name))

    def _recorder(self, name: str):  # type: ignore[no-untyped-def]
        async def record(*args: object, **kwargs: object) -> None:
            self.calls.append(name)
            raise AssertionError(f"{name} was called")

        return record


# 1. Media types ---------------------------------------------------------------------------

async def test_bodies_that_are_not_json_get_415_and_change_nothing(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("bob", 10, 0))
    before = await snapshot(pg_dsn)
    for content_type in ("text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x", "application/xml", "json",
                         "application/jsonx", "text/json"):
        for method, path, body in BODY_ROUTES:
            r = await app_client.request(method, path, content=body,
                                         headers={"Content-Type": content_type})
            assert_error(r, 415, "unsupported_media_type")
    assert await snapshot(pg_dsn) == before


async def test_json_media_types_and_no_content_type_are_accepted(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("bob", 10, 0))
    for content_type in ("application/json; charset=utf-8", "Application/JSON",
                         "application/merchant+json", None):
        headers = {} if content_type is None else {"Content-Type": content_type}
        request = app_client.build_request("POST", "/v1/transactions", content=DEPOSIT,
                                           headers=headers)
        if content_type is None:  # httpx sends raw content without one
            assert "content-type" not in request.headers
        r = await app_client.send(request)
        assert r.status_code == 202, (content_type, r.text)
    r = await app_client.post("/v1/accounts", content=b'{"id": "carol", "currency": "USD"}',
                              headers={"Content-Type": "application/json;charset=UTF-8"})
    assert r.status_code == 201, r.text
    r = await app_client.patch("/v1/accounts/carol", content=b'{"status": "locked"}',
                               headers={"Content-Type": "application/vnd.kassa+json"})
    assert r.status_code == 200, r.text


# 2. Path and query values -----------------------------------------------------------------

BAD_RECEIPTS = ["%00", "x", "RCP-2026010-0000000000000000", "rcp-20260101-0000000000000000",
                "RCP-20260101-000000000000000I", "RCP-20260101-000000000000000u",
                "RCP-20260101-00000000000000000", "RCP-٢٠٢٦٠١٠١-0000000000000000",
                "RCP-20260101-0000000000000000%0A", "RCP-20260101-0000000000000000%00"]
BAD_ACCOUNTS = ["%00", "a%20b", "a" * 65, "%C3%A9", "a%0A", "a.b"]


async def test_unusable_path_values_get_400_without_touching_anything(  # type: ignore[no-untyped-def]
        app_client, pg_dsn, monkeypatch) -> None:
    await make_accounts(app_client, ("bob", 10, 0))
    before = await snapshot(pg_dsn)
    untouched = Untouched(app_client, monkeypatch)
    for code in BAD_RECEIPTS:
        for path in (f"/v1/transactions/{code}", f"/v1/transactions/{code}/status"):
            assert_error(await app_client.get(path), 400, "invalid_request")
    for account in BAD_ACCOUNTS:
        assert_error(await app_client.get(f"/v1/accounts/{account}"), 400, "invalid_request")
        assert_error(await app_client.get(f"/v1/accounts/{account}/entries"), 400, "invalid_request")
        assert_error(await app_client.patch(f"/v1/accounts/{account}", json={"status": "locked"}),
                     400, "invalid_request")
    assert untouched.calls == []
    monkeypatch.undo()
    assert await snapshot(pg_dsn) == before


async def test_unusable_limits_and_cursors_get_400_without_touching_anything(  # type: ignore[no-untyped-def]
        app_client, pg_dsn, monkeypatch) -> None:
    await make_accounts(app_client, ("bob", 10, 0))
    untouched = Untouched(app_client, monkeypatch)
    above_int64 = base64.urlsafe_b64encode(b"l99999999999999999999").decode().rstrip("=")
    for query in ("limit=%C2%B2", "limit=0", "limit=1001", "limit=-1", "limit=1.5", "limit=%205",
                  "limit=%D9%A3", "limit=", "limit=99999999999999999999",
                  f"cursor={above_int64}", "cursor=%%%", "cursor=bDA", "cursor=eDE",
                  "cursor=" + base64.urlsafe_b64encode("l١".encode()).decode().rstrip("=")):
        r = await app_client.get(f"/v1/accounts/bob/entries?{query}")
        assert_error(r, 400, "invalid_request")
    assert untouched.calls == []
    monkeypatch.undo()
    r = await app_client.get("/v1/accounts/bob/entries?limit=1000&cursor=")
    assert r.status_code == 200, r.text
    cursor = base64.urlsafe_b64encode(b"l9223372036854775807").decode().rstrip("=")
    r = await app_client.get(f"/v1/accounts/bob/entries?cursor={cursor}")
    assert r.status_code == 200 and len(r.json()["entries"]) == 1, r.text


async def test_well_formed_names_that_do_not_exist_are_404(app_client) -> None:  # type: ignore[no-untyped-def]
    for path in ("/v1/accounts/nobody", "/v1/accounts/nobody/entries",
                 "/v1/accounts/@world:XYZ", "/v1/transactions/RCP-20260101-0000000000000000",
                 "/v1/transactions/RCP-20260101-0000000000000000/status"):
        assert_error(await app_client.get(path), 404, "not_found")
    assert_error(await app_client.patch("/v1/accounts/nobody", json={"status": "locked"}),
                 404, "not_found")


# 3. Body strings and nesting --------------------------------------------------------------

def deposit(**extra: object) -> dict[str, object]:
    return {"type": "deposit", "currency": "USD", "destination": "bob", "amount": 1, **extra}


NUL_TRANSACTIONS: list[dict[str, object]] = [
    deposit(description="a\u0000b"),
    deposit(metadata={"k\u0000": 1}),
    deposit(metadata={"k": "v\u0000"}),
    deposit(metadata={"k": [{"deep": ["x", "\u0000"]}]}),
    deposit(destination="bob\u0000"),
    {"type": "transfer", "currency": "USD", "legs": [
        {"source": "bob", "destination": "al\u0000ice", "amount": 1}]},
]
BAD_UTF8 = [
    b'{"type": "deposit", "currency": "USD", "destination": "bob", "amount": 1, "description": "\xff"}',
    b'{"type": "deposit", "currency": "USD", "destination": "bob", "amount": 1, "metadata": {"\xc3": 1}}',
    b'{"type": "deposit", "currency": "USD", "destination": "bob", "amount": 1, "metadata": {"k": ["\xed\xa0\x80"]}}',
    b'{"type": "deposit", "currency": "USD", "destination": "bob", "amount": 1, "metadata": {"k": "\\ud800"}}',
]


def nested(levels: int) -> bytes:
    """A deposit whose JSON is `levels` deep: the body 1, metadata 2, then lists."""
    lists = levels - 2
    return (b'{"type": "deposit", "currency": "USD", "destination": "bob", "amount": 1, '
            b'"metadata": {"k": ' + b"[" * lists + b"]" * lists + b"}}")


async def test_nul_bad_utf8_and_deep_bodies_get_400_and_change_nothing(  # type: ignore[no-untyped-def]
        app_client, pg_dsn, monkeypatch) -> None:
    await make_accounts(app_client, ("bob", 10, 0), ("alice", 0, 0))
    before = await snapshot(pg_dsn)
    runtime = app_client.runtime
    service_calls: list[str] = []

    def refuse(name: str):  # type: ignore[no-untyped-def]
        async def call(*args: object, **kwargs: object) -> None:
            service_calls.append(name)
            raise AssertionError(name)
        return call

    monkeypatch.setattr(runtime.service, "submit", refuse("submit"))
    monkeypatch.setattr(runtime.accounts, "create", refuse("create"))
    bodies = [httpx.Request("POST", "/", json=tx).content for tx in NUL_TRANSACTIONS]
    bodies += [*BAD_UTF8, nested(33), nested(100), nested(100_000)]
    for body in bodies:
        for path in ("/v1/transactions", "/v1/transactions?wait=true"):
            r = await app_client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert_error(r, 400, "invalid_request")
    for account in ({"id": "carol", "currency": "USD", "contact": {"email": "c\u0000@x"}},
                    {"id": "carol", "currency": "USD", "metadata": {"a": {"b\u0000": None}}},
                    {"id": "ca\u0000rol", "currency": "USD"}):
        assert_error(await app_client.post("/v1/accounts", json=account), 400, "invalid_request")
    deep_account = b'{"currency": "USD", "metadata": {"k": ' + b"[" * 31 + b"]" * 31 + b"}}"
    r = await app_client.post("/v1/accounts", content=deep_account)
    assert_error(r, 400, "invalid_request")
    deep_batch = b'{"transactions": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_error(await app_client.post("/v1/transactions/batch", content=deep_batch),
                 400, "invalid_request")
    assert service_calls == []
    monkeypatch.undo()
    assert await snapshot(pg_dsn) == before


async def test_nesting_up_to_32_levels_is_accepted(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("bob", 10, 0))
    r = await app_client.post("/v1/transactions?wait=true", content=nested(32))
    assert r.status_code == 201, r.text
    r = await app_client.post("/v1/accounts", content=b'{"currency": "USD", "metadata": {"k": '
                              + b"[" * 30 + b"]" * 30 + b"}}")
    assert r.status_code == 201, r.text
    # In a batch an item sits at level 3, its metadata at 4: lists may go 28 deep, not 29.
    items = [DEPOSIT[:-1] + b', "metadata": {"k": ' + b"[" * depth + b"]" * depth + b"}}"
             for depth in (28, 29)]
    r = await app_client.post("/v1/transactions/batch?wait=true",
                              content=b'{"transactions": [' + b", ".join(items) + b"]}")
    assert r.status_code == 201, r.text
    first, second = r.json()["results"]
    assert first.get("status") == "completed", first
    assert second["error"]["code"] == "invalid_request", second


async def test_bad_batch_items_are_refused_alone(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("bob", 10, 0))
    items = [deposit(idempotency_key="k\u0000"), deposit(description="\u0000"), deposit()]
    r = await app_client.post("/v1/transactions/batch?wait=true", json={"transactions": items})
    assert r.status_code == 201, r.text
    results = r.json()["results"]
    assert [x.get("error", {}).get("code") for x in results[:2]] == ["invalid_request"] * 2
    assert results[2]["status"] == "completed", results


async def test_a_nul_does_not_fail_other_clients(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("bob", 10, 0))
    good = [app_client.post("/v1/transactions?wait=true", json=deposit()) for _ in range(20)]
    bad = [app_client.post("/v1/transactions?wait=true", json=deposit(description="\u0000"))
           for _ in range(5)]
    answers = await asyncio.gather(*good, *bad)
    assert [r.status_code for r in answers] == [201] * 20 + [400] * 5
    r = await app_client.get("/v1/accounts/bob")
    assert r.json()["balance"] == 30


# 4. X-Request-Id --------------------------------------------------------------------------

HEX_ID = re.compile(r"[0-9a-f]{32}")


async def test_every_response_carries_a_request_id(app_client) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("bob", 10, 0))
    requests = [("POST", "/v1/transactions", DEPOSIT), ("POST", "/v1/transactions/batch", b"{}"),
                ("GET", "/v1/transactions", None), ("GET", "/v1/accounts/bob", None),
                ("GET", "/v1/accounts/%00", None), ("GET", "/nowhere", None),
                ("DELETE", "/v1/accounts/bob", None), ("GET", "/healthz", None),
                ("GET", "/readyz", None), ("GET", "/metrics", None),
                ("POST", "/v1/accounts", b"{}"), ("PATCH", "/v1/accounts/@world:USD", b"{}")]
    for method, path, body in requests:
        r = await app_client.request(method, path, content=body)
        assert HEX_ID.fullmatch(r.headers["x-request-id"]), (path, r.headers)
        mine = "req-" + "x" * 124
        r = await app_client.request(method, path, content=body, headers={"X-Request-Id": mine})
        assert r.headers.get_list("x-request-id") == [mine], (path, r.headers)
        for bad in ("", "a b", "x" * 129, "caf\xe9", "tab\there"):
            r = await app_client.request(method, path, content=body,
                                         headers=[("X-Request-Id", bad.encode("latin-1"))])
            assert HEX_ID.fullmatch(r.headers["x-request-id"]), (path, bad, r.headers)
    r = await app_client.post("/v1/transactions", content=b"{", headers={"Authorization": ""})
    assert r.status_code == 401 and HEX_ID.fullmatch(r.headers["x-request-id"])
    ids = {(await app_client.get("/healthz")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


async def test_log_lines_name_the_request(app_client, caplog) -> None:  # type: ignore[no-untyped-def]
    assert "%(request_id)s" in FORMAT
    await make_accounts(app_client, ("bob", 10, 0))
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.INFO)
    r = await app_client.post("/v1/transactions", content=DEPOSIT,
                              headers={"X-Request-Id": "trace-me-1"})
    assert r.status_code == 202 and r.headers["x-request-id"] == "trace-me-1"
    receipt = r.json()["receipt_code"]
    mine = [rec for rec in caplog.records if receipt in rec.getMessage()]
    assert mine and all(rec.request_id in ("trace-me-1", "-") for rec in mine)  # type: ignore[attr-defined]
    named = [rec for rec in mine if rec.request_id == "trace-me-1"]  # type: ignore[attr-defined]
    assert named, [rec.getMessage() for rec in mine]
    assert "[trace-me-1]" in logging.Formatter(FORMAT).format(named[0])


# 5. System accounts -----------------------------------------------------------------------

async def test_world_accounts_cannot_be_patched(app_client, pg_dsn, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("bob", 10, 0))
    before = await snapshot(pg_dsn)
    untouched = Untouched(app_client, monkeypatch)
    for account in ("@world:USD", "@world:EUR"):
        for status in ("locked", "closed", "active"):
            r = await app_client.patch(f"/v1/accounts/{account}", json={"status": status})
            assert_error(r, 422, "invalid_request")
    assert untouched.calls == []
    monkeypatch.undo()
    assert await snapshot(pg_dsn) == before
    assert (await app_client.get("/v1/accounts/@world:USD")).json()["status"] == "active"


# 6. 503 messages --------------------------------------------------------------------------

# The database's 503s are checked for driver, host and port text in
# tests/test_database_down.py, with the database really stopped.


async def test_redis_errors_become_generic_messages() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from core.ledger.errors import Unavailable
    from server.adapters.redis.client import converted_errors

    with pytest.raises(Unavailable) as caught:
        async with converted_errors("rate limit"):
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    assert "127.0.0.1" not in caught.value.message and "6379" not in caught.value.message


# 7. The admin key file --------------------------------------------------------------------

def test_admin_key_file_is_owner_only_from_creation(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from server.process.cli import admin_key

    # With a permissive umask and no chmod, only the mode given at creation counts.
    monkeypatch.setattr(Path, "chmod", lambda *args, **kwargs: None)
    monkeypatch.setattr(os, "chmod", lambda *args, **kwargs: None)
    old = os.umask(0)
    try:
        key = admin_key(tmp_path)
    finally:
        os.umask(old)
    path = tmp_path / "admin_api_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert admin_key(tmp_path) == key
