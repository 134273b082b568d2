"""Metadata after creation, over HTTP on the real app (real PostgreSQL and Redis):
PATCH /v1/accounts/{id} and PATCH /v1/transactions/{receipt_code} merge into the stored
object (RFC 7396: null removes a key), within the limits of a creation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import ADMIN_KEY, READ_KEY, WRITE_KEY, make_settings
from tests.test_http_api import make_accounts, snapshot

WRITE = {"Authorization": f"Bearer {WRITE_KEY}"}
READ = {"Authorization": f"Bearer {READ_KEY}"}
BODY_SIZE_MAX = 4096
UNKNOWN = "RCP-20261207-0000000000000000"


@pytest.fixture
async def small_client(pg_dsn: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """app_client with KASSA_BODY_SIZE_MAX=4096, so that a merge can outgrow it cheaply."""
    from server.process.asgi import create_app
    from server.process.runtime import build_runtime

    app = create_app()
    runtime = await build_runtime(make_settings(pg_dsn, redis_url, body_size_max=BODY_SIZE_MAX))
    app.state.runtime = runtime
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kassa",
                                 headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        yield client
    await runtime.stop()


def error_of(r: httpx.Response, status: int, code: str, param: str | None) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    message: str = error["message"]
    return message


async def post(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/transactions?wait=true", json={"currency": "USD", **body})
    assert r.status_code == 201, r.text
    answer: dict[str, Any] = r.json()
    return answer


# ------------------------------------------------------------------------------ accounts


async def test_account_metadata_is_merged_and_null_removes_a_key(app_client) -> None:  # type: ignore[no-untyped-def]
    r = await app_client.post("/v1/accounts", json={
        "id": "alice", "currency": "USD",
        "metadata": {"tier": "gold", "ref": "c-1", "address": {"city": "Oslo", "zip": "0150"}}})
    assert r.status_code == 201, r.text
    r = await app_client.patch("/v1/accounts/alice", json={"metadata": {
        "tier": "platinum", "ref": None, "absent": None, "tags": ["a", "b"],
        "address": {"zip": None, "street": "Karl Johans gate 1"}}})
    assert r.status_code == 200, r.text
    merged = {"tier": "platinum", "tags": ["a", "b"],
              "address": {"city": "Oslo", "street": "Karl Johans gate 1"}}
    assert r.json()["metadata"] == merged
    assert r.json()["status"] == "active"  # a metadata patch leaves the status alone
    assert (await app_client.get("/v1/accounts/alice")).json() == r.json()
    # An object replaced by a value, a value by an object; an empty patch changes nothing.
    r = await app_client.patch("/v1/accounts/alice", json={"metadata": {
        "address": "elsewhere", "tier": {"name": "platinum"}}})
    assert r.json()["metadata"] == {"tier": {"name": "platinum"}, "tags": ["a", "b"],
                                    "address": "elsewhere"}
    r = await app_client.patch("/v1/accounts/alice", json={"metadata": {}})
    assert r.status_code == 200 and r.json()["metadata"]["address"] == "elsewhere"


async def test_status_and_metadata_together_or_alone(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 100, 0), ("bob", 0, 0))
    r = await app_client.patch("/v1/accounts/alice", json={"status": "locked"})
    assert r.status_code == 200 and r.json()["status"] == "locked"
    assert r.json()["metadata"] == {}
    r = await app_client.post("/v1/transactions?wait=true", json={
        "type": "transfer", "currency": "USD", "source": "alice", "destination": "bob",
        "amount": 1})
    assert r.status_code == 422 and r.json()["error"]["code"] == "account_inactive", r.text
    r = await app_client.patch("/v1/accounts/alice", json={"status": "active",
                                                           "metadata": {"unlocked_by": "ops"}})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["metadata"]) == ("active", {"unlocked_by": "ops"})
    # The status change reached the cached views: alice can pay again.
    await post(app_client, type="transfer", source="alice", destination="bob", amount=1)


async def test_concurrent_patches_all_land(app_client) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 0, 0))
    answers = await asyncio.gather(*(
        app_client.patch("/v1/accounts/alice", json={"metadata": {f"k{i}": str(i)}})
        for i in range(20)))
    assert all(r.status_code == 200 for r in answers)
    metadata = (await app_client.get("/v1/accounts/alice")).json()["metadata"]
    assert metadata == {f"k{i}": str(i) for i in range(20)}, "no merge lost another"


async def test_account_patch_refusals(small_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    client = small_client
    await make_accounts(client, ("alice", 10, 0))
    await client.patch("/v1/accounts/alice", json={"metadata": {"note": "x" * 2100}})
    before = await snapshot(pg_dsn), (await client.get("/v1/accounts/alice")).json()
    # The merge would outgrow what a creation body could carry: refused whole, status too.
    r = await client.patch("/v1/accounts/alice", json={"status": "locked",
                                                       "metadata": {"more": "y" * 2100}})
    assert "4096" in error_of(r, 400, "invalid_request", "metadata")
    assert (await snapshot(pg_dsn), (await client.get("/v1/accounts/alice")).json()) == before
    # Replacing the big value instead fits.
    r = await client.patch("/v1/accounts/alice", json={"metadata": {"note": None,
                                                                    "more": "y" * 2100}})
    assert r.status_code == 200 and set(r.json()["metadata"]) == {"more"}
    after = await snapshot(pg_dsn), (await client.get("/v1/accounts/alice")).json()
    for body, param in [({}, None), ({"metadata": None}, "metadata"),
                        ({"metadata": ["a"]}, "metadata"), ({"status": "frozen"}, "status"),
                        ({"metadata": {}, "currency": "EUR"}, "currency"),
                        ({"balance": 5}, "balance")]:
        error_of(await client.patch("/v1/accounts/alice", json=body), 400, "invalid_request",
                 param)
    deep: Any = "bottom"
    for _ in range(40):
        deep = {"d": deep}
    error_of(await client.patch("/v1/accounts/alice", json={"metadata": deep}), 400,
             "invalid_request", None)
    error_of(await client.patch("/v1/accounts/alice", json={"metadata": {"k": "a\u0000b"}}),
             400, "invalid_request", None)
    error_of(await client.patch("/v1/accounts/nobody", json={"metadata": {"a": "b"}}),
             404, "not_found", None)
    error_of(await client.patch("/v1/accounts/@world:USD", json={"metadata": {"a": "b"}}),
             422, "invalid_request", None)
    error_of(await client.patch("/v1/accounts/alice", json={"metadata": {"a": "b"}},
                                headers=WRITE), 403, "forbidden", None)
    error_of(await client.patch("/v1/accounts/alice", json={"metadata": {"a": "b"}},
                                headers={"Authorization": "Bearer nope"}),
             401, "unauthorized", None)
    assert (await snapshot(pg_dsn), (await client.get("/v1/accounts/alice")).json()) == after


# -------------------------------------------------------------------------- transactions


async def test_transaction_metadata_is_merged_and_nothing_else_changes(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 100, 0), ("bob", 0, 0))
    done = await post(app_client, type="transfer", source="alice", destination="bob",
                      amount=30, description="rent", metadata={"order": "o-1", "lines": {"a": 1}})
    code = done["receipt_code"]
    money = await snapshot(pg_dsn)
    r = await app_client.patch(f"/v1/transactions/{code}", headers=WRITE, json={
        "metadata": {"order": None, "invoice": "i-9", "lines": {"b": 2}}})
    assert r.status_code == 200, r.text
    changed = r.json()
    assert changed["metadata"] == {"invoice": "i-9", "lines": {"a": 1, "b": 2}}
    assert {k: v for k, v in changed.items() if k != "metadata"} == \
        {k: v for k, v in done.items() if k != "metadata"}, "only the metadata changed"
    assert (await app_client.get(f"/v1/transactions/{code}", headers=READ)).json() == changed
    assert await snapshot(pg_dsn) == money
    # Anything else of a transaction is refused by name, with or without metadata.
    for body, param in [({"amount": 1}, "amount"),
                        ({"metadata": {"a": "b"}, "status": "failed"}, "status"),
                        ({"description": "other"}, "description"), ({}, "metadata"),
                        ({"metadata": None}, "metadata"), ({"metadata": "x"}, "metadata")]:
        r = await app_client.patch(f"/v1/transactions/{code}", headers=WRITE, json=body)
        message = error_of(r, 400, "invalid_request", param)
        assert param in message
    assert (await app_client.get(f"/v1/transactions/{code}", headers=READ)).json() == changed


async def test_transaction_patch_refusals(small_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    client = small_client
    await make_accounts(client, ("alice", 100, 0))
    code = (await post(client, type="withdrawal", source="alice", amount=5,
                       metadata={"note": "x" * 2100}))["receipt_code"]
    before = (await client.get(f"/v1/transactions/{code}")).json()
    r = await client.patch(f"/v1/transactions/{code}", json={"metadata": {"more": "y" * 2100}})
    assert "4096" in error_of(r, 400, "invalid_request", "metadata")
    error_of(await client.patch(f"/v1/transactions/{UNKNOWN}", json={"metadata": {"a": "b"}}),
             404, "not_found", None)
    error_of(await client.patch("/v1/transactions/RCP-1", json={"metadata": {"a": "b"}}),
             400, "invalid_request", None)
    error_of(await client.patch(f"/v1/transactions/{code}", json={"metadata": {"a": "b"}},
                                headers=READ), 403, "forbidden", None)
    r = await client.patch(f"/v1/transactions/{code}", content=b"a=b",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    error_of(r, 415, "unsupported_media_type", None)
    assert (await client.get(f"/v1/transactions/{code}")).json() == before


async def test_a_processing_transaction_can_be_patched(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    """Its answer is GET's: the status object with its money; its executor, when it runs,
    leaves the metadata as patched."""
    await make_accounts(app_client, ("alice", 100, 0), ("bob", 0, 0))
    code = "RCP-20261201-00000000000000AB"
    conn = await asyncpg.connect(pg_dsn)
    try:  # accepted but not applied yet, as after a crash before its executor
        await conn.execute(
            "INSERT INTO journals (external_ref, type, status, currency, payload, metadata,"
            " lease_owner, lease_expires_at) VALUES ($1, 'transfer', 'processing', 'USD',"
            " '[[\"alice\", \"bob\", 5]]', '{\"a\": \"1\"}', 'elsewhere', now() + interval '1 hour')",
            code)
        r = await app_client.patch(f"/v1/transactions/{code}", json={"metadata": {"b": "2"}})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "processing" and r.json()["amount"] == 5
        assert r.json() == (await app_client.get(f"/v1/transactions/{code}")).json()
        stored = await conn.fetchval("SELECT metadata FROM journals WHERE external_ref = $1",
                                     code)
        assert stored == '{"a": "1", "b": "2"}'
    finally:
        await conn.close()


# ------------------------------------------------------------------ listing filters


async def listed(client: httpx.AsyncClient, path: str, key: str, limit: int = 2) -> list[str]:
    """Every page of a listing (`limit` a page), the items' ids in order."""
    items: list[str] = []
    cursor = ""
    while True:
        r = await client.get(f"{path}&limit={limit}&cursor={cursor}", headers=READ)
        assert r.status_code == 200, r.text
        items += [item["id" if key == "accounts" else "receipt_code"] for item in r.json()[key]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


async def test_accounts_listed_by_metadata(app_client) -> None:  # type: ignore[no-untyped-def]
    for account_id, currency, metadata in [
            ("alice", "USD", {"tier": "gold", "region": "eu"}),
            ("bob", "USD", {"tier": "gold", "region": "us", "level": 3}),
            ("carol", "USD", {"tier": "silver", "nested": {"tier": "gold"}}),
            ("dave", "USD", None), ("erin", "EUR", {"tier": "gold"}),
            ("fay", "USD", {"tier": ["gold"], "level": "3"})]:
        body = {"id": account_id, "currency": currency,
                **({"metadata": metadata} if metadata else {})}
        assert (await app_client.post("/v1/accounts", json=body)).status_code == 201

    async def ids(query: str) -> list[str]:
        return await listed(app_client, f"/v1/accounts?{query}", "accounts")

    assert await ids("metadata[tier]=gold") == ["alice", "bob", "erin"]  # top level, strings
    assert await ids("metadata[tier]=gold&currency=USD") == ["alice", "bob"]
    assert await ids("metadata[tier]=gold&metadata[region]=us") == ["bob"]
    assert await ids("metadata[region]=eu&metadata[tier]=gold&status=active") == ["alice"]
    assert await ids("metadata[tier]=gold&metadata[tier]=gold") == ["alice", "bob", "erin"]
    assert await ids("metadata[tier]=gold&metadata[tier]=silver") == [], "all must hold"
    assert await ids("metadata[tier]=GOLD") == []
    assert await ids("metadata[level]=3") == ["fay"], "a string value, not the number 3"
    assert await ids("metadata[nothing]=x") == []
    await app_client.patch("/v1/accounts/bob", json={"status": "locked",
                                                     "metadata": {"region": None}})
    assert await ids("metadata[tier]=gold&status=locked") == ["bob"]
    assert await ids("metadata[region]=us") == []
    await app_client.patch("/v1/accounts/dave", json={"metadata": {"tier": "gold"}})
    assert await ids("metadata[tier]=gold&currency=USD") == ["alice", "bob", "dave"]


async def test_transactions_listed_by_metadata(app_client) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0), ("carol", 0, 0))

    async def pay(destination: str, **metadata: str) -> str:
        done = await post(app_client, type="transfer", source="alice", destination=destination,
                          amount=1, **({"metadata": metadata} if metadata else {}))
        code: str = done["receipt_code"]
        return code

    t1 = await pay("bob", order="o-1", channel="web")
    t2 = await pay("carol", order="o-2", channel="web")
    t3 = await pay("bob", order="o-3", channel="app")
    await pay("bob")
    t5 = await pay("carol", order="o-5", channel="web", note="a b&c=d[e]")
    w = (await post(app_client, type="withdrawal", source="alice", amount=1,
                    metadata={"channel": "web"}))["receipt_code"]

    async def codes(query: str, limit: int = 2) -> list[str]:
        return await listed(app_client, f"/v1/transactions?{query}", "transactions", limit)

    assert await codes("metadata[channel]=web") == [w, t5, t2, t1]  # newest first
    assert await codes("metadata[channel]=web", limit=1) == [w, t5, t2, t1]
    assert await codes("metadata[channel]=web&type=transfer") == [t5, t2, t1]
    assert await codes("metadata[channel]=web&account=bob") == [t1]
    assert await codes("metadata[channel]=web&account=carol&status=completed") == [t5, t2]
    assert await codes("metadata[channel]=web&metadata[order]=o-2") == [t2]
    assert await codes("metadata[order]=o-2&metadata[order]=o-1") == []
    assert await codes("metadata[note]=a%20b%26c%3Dd%5Be%5D") == [t5], "URL-encoded value"
    assert await codes("metadata[channel]=web&status=failed") == []
    created = (await app_client.get(f"/v1/transactions/{t2}")).json()["created_at"]
    assert await codes(f"metadata[channel]=web&since={created}&type=transfer") == [t5, t2]
    r = await app_client.patch(f"/v1/transactions/{t3}", json={"metadata": {"channel": "web"}})
    assert r.status_code == 200, r.text
    assert await codes("metadata[channel]=web&account=bob") == [t3, t1]
    r = await app_client.get("/v1/transactions?metadata[channel]=we%00b", headers=READ)
    error_of(r, 400, "invalid_request", "metadata[channel]")


async def test_journals_without_metadata_add_nothing_to_its_index(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    """The index is partial: transfers without metadata write no entry to it (bench/
    metadata_index.py measures their WAL: the same with and without the index)."""
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    conn = await asyncpg.connect(pg_dsn)
    try:
        size = "SELECT pg_relation_size('journals_metadata')"
        empty = await conn.fetchval(size)
        r = await app_client.post("/v1/transactions/batch?wait=true", json={"transactions": [
            {"type": "transfer", "currency": "USD", "source": "alice", "destination": "bob",
             "amount": 1} for _ in range(500)]})
        assert r.status_code == 201, r.text
        assert await conn.fetchval(size) == empty
        await post(app_client, type="transfer", source="alice", destination="bob", amount=1,
                   metadata={"order": "o-1"})
        assert await conn.fetchval(size) > empty, "a journal with metadata has its entries"
    finally:
        await conn.close()
