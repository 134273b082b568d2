"""Issue 20, points 4 and 5, over HTTP: strict query parameters, `param` and `request_id` in
every error body, Allow on 405, WWW-Authenticate on 401, the rate limit headers, and the
requests the OpenAPI document calls valid (integral floats where it says integer, null for
optional fields, cursors). On the real app (real PostgreSQL and Redis, in this process), and
on a real `kassa serve` for what its HTTP protocol answers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from core.kit.rate_limit import quota
from server.http.handlers.common import quota_headers
from server.http.openapi import OPENAPI
from tests.conftest import ADMIN_KEY, READ_KEY, WRITE_KEY, make_settings
from tests.fixtures.kassa_server import KassaProcess, serve_new_database
from tests.fixtures.servers import PostgresServer, RedisServer
from tests.test_http_api import make_accounts
from tests.test_http_limits import refused

pytestmark = pytest.mark.timeout(120)

RATE_POLICY = re.compile(r'"api_key";q=(\d+);w=(\d+)')
RATE_STATE = re.compile(r'"api_key";r=(\d+);t=(\d+)')


def error_of(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    """The error body of `r`, checked: its status, its param, its request id the answer's."""
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["param"] == param, error
    assert error["request_id"] == r.headers["X-Request-Id"], (error, r.headers)
    return error


class Untouchable:
    """A use case that must not be reached: any attribute is a failure."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a dependency was touched: {name}")


# ---------------------------------------------------------------- strict queries (4)

async def test_a_query_parameter_a_route_does_not_define_is_400_naming_it(app_client) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("acc_alice", 100, 0))
    api = app_client.runtime.api
    real = (api.listing, api.accounts, api.queries, api.transactions, api.limit)
    api.listing = api.accounts = api.queries = api.transactions = Untouchable()

    async def no_limit(key: str) -> None:
        raise AssertionError("the rate limit (Redis) was touched")

    api.limit = no_limit
    asked = [("GET", "/v1/accounts/acc_alice/entries?since=2026-01-01T00:00:00Z", "since"),
             ("GET", "/v1/transactions?foo=1", "foo"),
             ("GET", "/v1/accounts?limit=5&colour=red", "colour"),
             ("GET", "/v1/accounts/acc_alice?wait=true", "wait"),
             ("PATCH", "/v1/accounts/acc_alice?x=", "x"),
             ("GET", "/v1/transactions/RCP-20261124-0J5Q8ZK3M1T7XW4C/status?at=1", "at"),
             ("POST", "/v1/transactions?wait=true&dry_run=1", "dry_run"),
             ("POST", "/v1/transactions/batch?foo=bar", "foo"),
             ("POST", "/v1/transactions?foo=", "foo"),  # blank, on the hot path too
             ("POST", "/v1/transactions?wait=true&bar", "bar"),
             ("POST", "/v1/transactions/RCP-20261124-0J5Q8ZK3M1T7XW4C/void?force=1", "force"),
             ("GET", "/v1/transactions?metadata=1", "metadata"),
             ("GET", "/v1/transactions?metadata[]=1", "metadata[]")]
    for method, url, param in asked:
        r = await app_client.request(method, url, json={})
        assert error_of(r, 400, param)["code"] == "invalid_request", (method, url)
    r = await app_client.get("/healthz?verbose=1")
    error_of(r, 400, "verbose")
    api.listing, api.accounts, api.queries, api.transactions, api.limit = real
    # A key is checked first: no key, 401 whatever the query.
    r = await app_client.get("/v1/transactions?foo=1", headers={"Authorization": ""})
    error_of(r, 401)


async def test_the_listings_take_metadata_filters(app_client) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("acc_alice", 100, 0))
    for url in ("/v1/transactions?metadata[order]=42&limit=5",
                "/v1/accounts?metadata[team]=ops&metadata[tier]=gold&currency=USD"):
        r = await app_client.get(url)
        assert r.status_code == 200, (url, r.text)


# ------------------------------------------------------------------ param, request_id (4)

async def test_errors_name_the_field_at_fault(app_client) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    leg = {"source": "alice", "destination": "bob", "amount": 1}
    cases: list[tuple[str, dict[str, Any], str | None]] = [
        ("/v1/transactions", {"type": "transfer", "currency": "USD", "source": "alice",
                              "destination": "bob", "amount": 0}, "amount"),
        ("/v1/transactions", {"type": "transfer", "currency": "USD",
                              "legs": [leg, leg, {**leg, "source": 7}]}, "legs[2].source"),
        ("/v1/transactions", {"type": "transfer", "currency": "USD",
                              "legs": [leg, {**leg, "destination": "alice"}]}, "legs[1].destination"),
        ("/v1/transactions", {"type": "transfer", "currency": "USD", "source": "alice",
                              "amount": 5}, "destination"),
        ("/v1/transactions", {"type": "deposit", "currency": "usd", "destination": "bob",
                              "amount": 5}, "currency"),
        ("/v1/transactions", {"type": "deposit", "currency": "USD", "destination": "bob",
                              "amount": 5, "colour": "red"}, "colour"),
        ("/v1/transactions", {"type": "deposit", "destination": "bob", "amount": 5}, "currency"),
        ("/v1/transactions?wait=maybe", {}, "wait"),
        ("/v1/accounts", {"currency": "USD", "overdraft_limit": -1}, "overdraft_limit"),
        ("/v1/accounts", {"currency": "USD", "contact": {"fax": "1"}}, "contact.fax"),
    ]
    for url, body, param in cases:
        error_of(await app_client.post(url, json=body), 400, param)
    r = await app_client.post("/v1/transactions", content=b"{", headers={
        "Content-Type": "application/json"})
    error_of(r, 400, None)  # malformed: no field to name
    error_of(await app_client.get("/v1/accounts/alice/entries?limit=0"), 400, "limit")
    error_of(await app_client.get("/v1/transactions?cursor=YQ"), 400, "cursor")
    error_of(await app_client.get("/v1/transactions?since=yesterday"), 400, "since")
    r = await app_client.post("/v1/transactions/batch", json={"transactions": [
        {"type": "deposit", "currency": "USD", "destination": "bob", "amount": 1.5}]})
    assert r.status_code == 202, r.text
    assert r.json()["results"][0]["error"]["param"] == "amount"


async def test_every_error_carries_the_answer_s_request_id(app_client) -> None:  # type: ignore[no-untyped-def]
    asked = [("GET", "/v1/nothing", 404), ("TRACE", "/healthz", 405),
             ("PUT", "/v1/transactions", 405), ("GET", "/v1/transactions/batch", 405),
             ("GET", "/v1/accounts/nobody", 404), ("POST", "/v1/transactions", 400)]
    for method, url, status in asked:
        for rid in ("client-id-1", None):
            r = await app_client.request(method, url, content=b"[]", headers={
                "X-Request-Id": rid} if rid else {})
            error = error_of(r, status)
            assert rid is None or error["request_id"] == rid


# ------------------------------------------------------------ Allow, WWW-Authenticate (5)

async def test_a_405_names_the_path_s_methods(app_client) -> None:  # type: ignore[no-untyped-def]
    allowed = {"/healthz": "GET, HEAD", "/metrics": "GET, HEAD", "/readyz": "GET, HEAD",
               "/v1/transactions": "GET, HEAD, POST", "/v1/transactions/batch": "POST",
               "/v1/accounts": "GET, HEAD, POST", "/v1/accounts/bob": "GET, HEAD, PATCH",
               "/v1/transactions/RCP-20261124-0J5Q8ZK3M1T7XW4C/void": "POST"}
    for path, allow in allowed.items():
        for method in ("TRACE", "PUT", "DELETE"):
            r = await app_client.request(method, path)
            error_of(r, 405)
            assert r.headers["Allow"] == allow, (method, path)
    documented = {m.upper() for m in OPENAPI["paths"]["/v1/accounts/{account_id}"]
                  if m != "parameters"}
    assert documented | {"HEAD"} == set(allowed["/v1/accounts/bob"].split(", "))


async def test_a_401_names_the_bearer_scheme(app_client) -> None:  # type: ignore[no-untyped-def]
    for method, url in (("GET", "/v1/accounts"), ("POST", "/v1/transactions"),
                        ("POST", "/v1/transactions/batch"), ("PATCH", "/v1/accounts/bob")):
        for auth in ("", "Bearer nope", "Basic YTpi"):
            r = await app_client.request(method, url, json={}, headers={"Authorization": auth})
            error_of(r, 401)
            assert r.headers["WWW-Authenticate"] == "Bearer"
    r = await app_client.post("/v1/accounts", json={"currency": "USD"},
                              headers={"Authorization": f"Bearer {READ_KEY}"})
    error_of(r, 403)
    assert "WWW-Authenticate" not in r.headers


# --------------------------------------------------------------- rate limit headers (5)

@pytest.fixture
async def limited_client(pg_dsn: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """As app_client, with KASSA_RATE_LIMIT=3/60 (a bucket of 3, one back every 20 s)."""
    from server.process.asgi import create_app
    from server.process.runtime import build_runtime

    app = create_app()
    runtime = await build_runtime(make_settings(pg_dsn, redis_url, rate_limit="3/60"))
    app.state.runtime = runtime
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://kassa") as client:
        yield client
    await runtime.stop()


async def test_keyed_answers_carry_the_rate_limit_headers(limited_client) -> None:  # type: ignore[no-untyped-def]
    key = {"Authorization": f"Bearer {WRITE_KEY}"}
    deposit = {"type": "deposit", "currency": "USD", "destination": "nobody", "amount": 1}
    answers = [await limited_client.get("/v1/accounts", headers=key),
               await limited_client.post("/v1/transactions", json=deposit, headers=key),
               await limited_client.get("/v1/accounts/nobody", headers=key),
               await limited_client.post("/v1/transactions", json=deposit, headers=key)]
    assert [r.status_code for r in answers] == [200, 422, 404, 429]
    left = []
    for r in answers:
        assert RATE_POLICY.fullmatch(r.headers["RateLimit-Policy"]).groups() == ("3", "60")  # type: ignore[union-attr]
        state = RATE_STATE.fullmatch(r.headers["RateLimit"])
        assert state is not None, r.headers
        left.append(int(state.group(1)))
        assert 0 < int(state.group(2)) <= 60
    assert left == [2, 1, 0, 0]
    assert int(answers[-1].headers["Retry-After"]) >= 1
    # Another key has its own bucket; unkeyed answers and refused keys carry none.
    r = await limited_client.get("/v1/accounts", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert RATE_STATE.fullmatch(r.headers["RateLimit"]).group(1) == "2"  # type: ignore[union-attr]
    for r in (await limited_client.get("/healthz"), await limited_client.get("/v1/accounts")):
        assert "RateLimit" not in r.headers and "RateLimit-Policy" not in r.headers


def test_the_quota_of_a_token_bucket() -> None:
    assert quota(1000, 1000.0, 999.5) == quota(1000, 1000.0, 999.5)
    assert quota_headers(quota(1000, 1000.0, 999.5)) == {
        "RateLimit-Policy": '"api_key";q=1000;w=1', "RateLimit": '"api_key";r=999;t=1'}
    assert quota_headers(quota(3, 0.05, 0.0)) == {
        "RateLimit-Policy": '"api_key";q=3;w=60', "RateLimit": '"api_key";r=0;t=60'}
    # Redis down (the limit fails open): the policy only.
    assert quota_headers(quota(3, 0.05, None)) == {"RateLimit-Policy": '"api_key";q=3;w=60'}
    assert quota_headers(None) == {}


# ------------------------------------------- what the OpenAPI document calls valid (5)

async def test_an_integral_float_is_taken_where_an_integer_is(app_client) -> None:  # type: ignore[no-untyped-def]
    r = await app_client.post("/v1/accounts", json={"id": "f1", "currency": "USD",
                                                    "overdraft_limit": 79234.0})
    assert r.status_code == 201 and r.json()["overdraft_limit"] == 79234, r.text
    r = await app_client.post("/v1/transactions?wait=true", json={
        "type": "deposit", "currency": "USD", "destination": "f1", "amount": 1e3,
        "metadata": {"rate": 2.0}})
    assert r.status_code == 201 and r.json()["amount"] == 1000, r.text
    assert r.json()["metadata"] == {"rate": 2.0}  # free-form values stay as sent
    for body, param in (({"currency": "USD", "overdraft_limit": 1.5}, "overdraft_limit"),
                        ({"currency": "USD", "overdraft_limit": "5"}, "overdraft_limit"),
                        ({"currency": 5.0}, "currency")):
        error_of(await app_client.post("/v1/accounts", json=body), 400, param)


async def test_null_is_not_given_for_optional_fields(app_client) -> None:  # type: ignore[no-untyped-def]
    r = await app_client.post("/v1/accounts", json={
        "id": "n1", "currency": "USD", "overdraft_limit": None, "contact": None, "metadata": None})
    assert r.status_code == 201 and r.json()["overdraft_limit"] == 0, r.text
    r = await app_client.post("/v1/transactions?wait=true", json={
        "type": "deposit", "currency": "USD", "destination": "n1", "amount": 5,
        "source": None, "legs": None, "description": None, "metadata": None, "hold": None,
        "hold_expires_in_s": None})
    assert r.status_code == 201, r.text


async def test_the_cursors_a_listing_returns_match_the_documented_pattern(app_client) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("c1", 10, 0), ("c2", 10, 0), ("c_3-x", 0, 0))
    r = await app_client.post("/v1/transactions?wait=true", json={  # c1's second entry
        "type": "deposit", "currency": "USD", "destination": "c1", "amount": 5})
    assert r.status_code == 201, r.text
    patterns = {}
    for path in ("/v1/transactions", "/v1/accounts", "/v1/accounts/{account_id}/entries"):
        params = OPENAPI["paths"][path]["get"]["parameters"]
        patterns[path] = next(p["schema"]["pattern"] for p in params if p["name"] == "cursor")
    for path, url in (("/v1/transactions", "/v1/transactions?limit=1"),
                      ("/v1/accounts", "/v1/accounts?limit=1"),
                      ("/v1/accounts/{account_id}/entries", "/v1/accounts/c1/entries?limit=1")):
        cursor = (await app_client.get(url)).json()["next_cursor"]
        assert cursor and re.fullmatch(patterns[path], cursor), (url, cursor)
        assert (await app_client.get(f"{url}&cursor={cursor}")).status_code == 200


# --------------------------------------------------- the HTTP protocol's refusals (4)

@pytest.fixture(scope="module")
def kassa(pg_server: PostgresServer, redis_server: RedisServer) -> Iterator[KassaProcess]:
    yield from serve_new_database(pg_server, redis_server, workers=1)


def test_a_protocol_refusal_carries_its_request_id(kassa: KassaProcess) -> None:
    head = (b"POST /v1/transactions HTTP/1.1\r\nHost: kassa\r\nX-Request-Id: proto-1\r\n"
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
    answer = refused(kassa, head)
    assert answer.status == 400
    error = answer.json()["error"]
    assert error["request_id"] == answer.headers["x-request-id"]
    assert error["param"] is None and error["code"] == "invalid_request"
    # A head too broken to read the client's id from: a new one, the same in both places.
    answer = refused(kassa, b"GET / HTTP/1.1\r\nHost: kassa\r\nBad\x01Header: 1\r\n\r\n")
    assert answer.status == 400
    assert answer.json()["error"]["request_id"] == answer.headers["x-request-id"]
