"""/openapi.json: a valid OpenAPI 3.1 document, generated from the Structs that decode
requests, naming every route, status, error code and contract header; and the real
answers have the shapes it describes."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from openapi_spec_validator import validate

from server.http import schemas
from server.http.app import HOT_ROUTES, ROUTES
from server.http.errors import HTTP_STATUS
from server.http.handlers.webhooks import webhook_in
from server.http.openapi import OPENAPI, UNDOCUMENTED_CODES

pytestmark = pytest.mark.timeout(60)

METHODS = ("get", "post", "patch", "put", "delete")


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in OPENAPI["paths"].items()
            for method, op in item.items() if method in METHODS]


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(OPENAPI)  # type: ignore[arg-type]
    assert OPENAPI["openapi"].startswith("3.1")


def test_every_route_is_documented_and_nothing_else() -> None:
    routes = {(m.lower(), r.path) for r in ROUTES for m in (r.methods or ()) if m != "HEAD"}
    routes |= {(m.lower(), p) for m, p in HOT_ROUTES}
    documented = {(method, path) for path, method, _ in operations()}
    assert routes == documented


def test_every_error_code_is_documented_with_its_status() -> None:
    seen: dict[str, set[str]] = {}

    def walk(node: Any, status: str) -> None:
        if isinstance(node, dict):
            code = node.get("properties", {}).get("error", {}).get("properties", {}).get("code")
            for value in (code or {}).get("enum", []):
                seen.setdefault(value, set()).add(status)
            for child in node.values():
                walk(child, status)
        elif isinstance(node, list):
            for child in node:
                walk(child, status)

    for _, _, op in operations():
        for status, response in op["responses"].items():
            walk(response, status)
    assert set(seen) == set(HTTP_STATUS) - set(UNDOCUMENTED_CODES)
    for code, statuses in seen.items():
        expected = {str(HTTP_STATUS[code])} | ({"422"} if code == "invalid_request" else set())
        assert statuses <= expected, (code, statuses)


def test_headers_of_the_contract() -> None:
    for path, method, op in operations():
        for status, response in op["responses"].items():
            headers = response.get("headers", {})
            assert "X-Request-Id" in headers, (path, method, status)
            if status in ("429", "503") and path.startswith("/v1"):
                assert "Retry-After" in headers, (path, method, status)
            if status == "401":
                assert "WWW-Authenticate" in headers, (path, method)
            if op["security"]:
                assert {"RateLimit-Policy", "RateLimit"} <= set(headers), (path, method, status)
    post = OPENAPI["paths"]["/v1/transactions"]["post"]
    for status in ("201", "202"):
        assert {"Location", "Idempotent-Replayed"} <= set(post["responses"][status]["headers"])
    assert "Idempotent-Replayed" in post["responses"]["422"]["headers"]
    assert "Location" in OPENAPI["paths"]["/v1/accounts"]["post"]["responses"]["201"]["headers"]
    params = {p["name"] for p in post["parameters"]}
    assert {"Idempotency-Key", "wait", "X-Request-Id"} <= params


def test_request_bodies_are_the_structs_that_decode_them() -> None:
    decoders = {("/v1/accounts", "post"): schemas.account_in,
                ("/v1/accounts/{account_id}", "patch"): schemas.account_patch,
                ("/v1/transactions", "post"): schemas.transaction_in,
                ("/v1/transactions/{receipt_code}", "patch"): schemas.transaction_patch,
                ("/v1/transactions/batch", "post"): schemas.batch_in,
                ("/v1/transactions/{receipt_code}/capture", "post"): schemas.capture_in,
                ("/v1/transactions/{receipt_code}/reverse", "post"): schemas.reverse_in,
                ("/v1/webhooks", "post"): webhook_in}
    with_body = {(path, method) for path, method, op in operations() if "requestBody" in op}
    assert with_body == set(decoders)
    components = OPENAPI["components"]["schemas"]
    for (path, method), decoder in decoders.items():
        body = OPENAPI["paths"][path][method]["requestBody"]["content"]["application/json"]
        name = decoder.type.__name__
        assert body["schema"] == {"$ref": f"#/components/schemas/{name}"}
        generated = msgspec.json.schema_components([decoder.type])[1][name]
        forms = variants(components, components[name])
        assert set().union(*(f["properties"] for f in forms)) == generated["properties"].keys()
        assert all(f["additionalProperties"] is False for f in forms)  # forbid_unknown_fields
    items = components["BatchIn"]["properties"]["transactions"]
    assert items["items"]["anyOf"][0] == {"$ref": "#/components/schemas/BatchItemIn"}


def variants(components: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The object schemas a body schema is one of (itself when it is one)."""
    if "oneOf" not in schema:
        return [schema]
    return [v for ref in schema["oneOf"]
            for v in variants(components, components[ref["$ref"].rsplit("/", 1)[1]])]


def test_a_transaction_request_is_one_of_its_forms_by_type() -> None:
    components = OPENAPI["components"]["schemas"]
    body = components["TransactionIn"]
    assert body["discriminator"]["propertyName"] == "type"
    assert set(body["discriminator"]["mapping"]) == {"transfer", "deposit", "withdrawal"}
    forms = {(f["properties"]["type"]["const"], frozenset(f["required"])) for f in
             variants(components, body)}
    base = {"type", "currency"}
    assert forms == {
        ("transfer", frozenset(base | {"amount", "source", "destination"})),
        ("transfer", frozenset(base | {"amount", "source", "destination", "hold"})),
        ("transfer", frozenset(base | {"legs"})),
        ("transfer", frozenset(base | {"legs", "hold"})),
        ("deposit", frozenset(base | {"amount", "destination"})),
        ("withdrawal", frozenset(base | {"amount", "source"})),
        ("withdrawal", frozenset(base | {"amount", "source", "hold"}))}
    for form in variants(components, body):  # the hold fields go together
        held = "hold" in form["required"]
        assert (form["properties"]["hold_expires_in_s"] == {"type": "null"}) is not held


def test_every_operation_has_an_id_and_a_tag() -> None:
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids))
    tags = {t["name"] for t in OPENAPI["tags"]}
    for path, method, op in operations():
        assert len(op["tags"]) == 1 and op["tags"][0] in tags, (path, method)


def shaped(body: Any, struct: type[msgspec.Struct]) -> None:
    """`body` decodes as `struct` and has no field the struct does not name."""
    msgspec.convert(body, struct)
    assert set(body) <= set(struct.__struct_fields__), (set(body), struct)


async def test_real_answers_have_the_documented_shapes(app_client) -> None:  # type: ignore[no-untyped-def]
    served = await app_client.get("/openapi.json")
    assert served.status_code == 200 and served.json() == msgspec.json.decode(
        msgspec.json.encode(OPENAPI))
    assert served.headers["X-Request-Id"]
    r = await app_client.post("/v1/accounts", json={"id": "alice", "currency": "USD",
                                                    "contact": {"email": "a@example.com"}})
    assert r.status_code == 201
    shaped(r.json(), schemas.AccountOut)
    await app_client.post("/v1/accounts", json={"id": "bob", "currency": "USD"})
    r = await app_client.post("/v1/transactions?wait=true", json={
        "type": "deposit", "currency": "USD", "destination": "alice", "amount": 100})
    assert r.status_code == 201
    shaped(r.json(), schemas.TransactionOut)
    for entry in r.json()["entries"]:
        shaped(entry, schemas.PostingOut)
    r = await app_client.post("/v1/transactions", json={
        "type": "transfer", "currency": "USD", "source": "alice", "destination": "bob",
        "amount": 10})
    assert r.status_code == 202
    shaped(r.json(), schemas.AcceptedOut)
    code = r.json()["receipt_code"]
    await asyncio.sleep(0.3)
    shaped((await app_client.get(f"/v1/transactions/{code}/status")).json(), schemas.StatusOut)
    shaped((await app_client.get(f"/v1/transactions/{code}")).json(), schemas.TransactionOut)
    page = (await app_client.get("/v1/accounts/alice/entries")).json()
    shaped(page, schemas.EntriesPage)
    for entry in page["entries"]:
        shaped(entry, schemas.AccountEntryOut)
    r = await app_client.post("/v1/transactions/batch", json={"transactions": [
        {"type": "deposit", "currency": "USD", "destination": "bob", "amount": 1},
        {"type": "deposit", "currency": "USD", "destination": "bob", "amount": 0}]})
    assert r.status_code == 202
    first, second = r.json()["results"]
    shaped(first, schemas.AcceptedOut)
    shaped(second, schemas.ErrorOut)
    r = await app_client.post("/v1/transactions?wait=true", json={
        "type": "transfer", "currency": "USD", "source": "bob", "destination": "alice",
        "amount": 10**9})
    assert r.status_code == 422
    shaped(r.json(), schemas.ErrorOut)
    shaped((await app_client.get("/healthz")).json(), schemas.HealthOut)
    msgspec.convert((await app_client.get("/readyz")).json(), schemas.ReadinessOut)
