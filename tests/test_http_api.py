"""The HTTP contract on the real app (real PostgreSQL and Redis), in-process."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.conftest import READ_KEY, WRITE_KEY
from tests.invariants import assert_invariants

RECEIPT = r"^RCP-\d{8}-[0-9A-HJKMNP-TV-Z]{16}$"


async def make_accounts(client, *specs: tuple[str, int, int]) -> None:  # type: ignore[no-untyped-def]
    """(id, opening balance, overdraft limit) in USD."""
    for account_id, balance, limit in specs:
        r = await client.post("/v1/accounts", json={"id": account_id, "currency": "USD",
                                                   "overdraft_limit": limit})
        assert r.status_code == 201, r.text
        if balance:
            r = await client.post("/v1/transactions?wait=true", json={
                "type": "deposit", "currency": "USD", "destination": account_id, "amount": balance})
            assert r.status_code == 201, r.text


async def snapshot(dsn: str) -> tuple[object, ...]:
    conn = await asyncpg.connect(dsn)
    try:
        return (await conn.fetch("SELECT id, balance, status FROM accounts ORDER BY id"),
                await conn.fetchval("SELECT count(*) FROM journals"),
                await conn.fetchval("SELECT count(*) FROM ledgers"))
    finally:
        await conn.close()


BAD_TRANSACTIONS = [
    (b"{not json", 400), (b"[]", 400), (b"", 400),
    (b'{"type": "transfer", "currency": "USD", "amount": "10", "source": "alice", "destination": "bob"}', 400),
    (b'{"type": "transfer", "currency": "USD", "amount": 0, "source": "alice", "destination": "bob"}', 400),
    (b'{"type": "transfer", "currency": "USD", "amount": -1, "source": "alice", "destination": "bob"}', 400),
    (b'{"type": "transfer", "currency": "USD", "amount": 1.5, "source": "alice", "destination": "bob"}', 400),
    (b'{"type": "transfer", "currency": "USD", "amount": 9007199254740992, "source": "alice", "destination": "bob"}', 400),
    (b'{"type": "transfer", "currency": "USD", "amount": 1e400, "source": "alice", "destination": "bob"}', 400),
    (b'{"type": "transfer", "currency": "USD", "amount": true, "source": "alice", "destination": "bob"}', 400),
    (b'{"type": "transfer", "currency": "USD", "amount": 5, "source": "alice", "destination": "bob", "fee": 1}', 400),
    (b'{"type": "transfer", "currency": "usd", "amount": 5, "source": "alice", "destination": "bob"}', 400),
    (b'{"type": "transfer", "currency": "USD", "amount": 5, "source": "alice", "destination": "alice"}', 400),
    (b'{"type": "teleport", "currency": "USD", "amount": 5, "source": "alice", "destination": "bob"}', 400),
    (b'{"type": "transfer", "currency": "USD", "legs": [{"source": "alice", "destination": "bob", "amount": 0}]}', 400),
    (b'{"type": "transfer", "currency": "USD", "amount": 5, "source": "alice", "destination": "nobody"}', 422),
    (b'{"type": "transfer", "currency": "USD", "amount": 5000, "source": "alice", "destination": "bob"}', 422),
    (b'{"type": "transfer", "currency": "EUR", "amount": 5, "source": "alice", "destination": "bob"}', 422),
]


async def test_bad_input_gets_the_contract_4xx_and_changes_nothing(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    before = await snapshot(pg_dsn)
    for body, status in BAD_TRANSACTIONS:
        for path in ("/v1/transactions", "/v1/transactions?wait=true"):
            r = await app_client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (body, r.text)
            error = r.json()["error"]
            assert set(error) >= {"code", "message"} and error["code"].islower(), r.text
    big = b'{"type": "transfer", "currency": "USD", "amount": 5, "source": "alice", "destination": "bob", "description": "' + b"x" * 2_000_000 + b'"}'
    r = await app_client.post("/v1/transactions", content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "invalid_request"
    r = await app_client.post("/v1/transactions", json={"type": "deposit", "currency": "USD",
                                                        "destination": "bob", "amount": 1},
                              headers={"Authorization": ""})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = await app_client.post("/v1/transactions", json={"type": "deposit", "currency": "USD",
                                                        "destination": "bob", "amount": 1},
                              headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = await app_client.post("/v1/transactions", json={"type": "deposit", "currency": "USD",
                                                        "destination": "bob", "amount": 1},
                              headers={"Authorization": f"Bearer {READ_KEY}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = await app_client.post("/v1/accounts", json={"currency": "USD"},
                              headers={"Authorization": f"Bearer {WRITE_KEY}"})
    assert r.status_code == 403
    for body in ({"currency": "US"}, {"currency": "USD", "overdraft_limit": -1},
                 {"currency": "USD", "id": "bad id"}, {"currency": "USD", "colour": "red"},
                 {"currency": "USD", "contact": {"fax": "1"}}):
        assert (await app_client.post("/v1/accounts", json=body)).status_code == 400, body
    assert (await app_client.post("/v1/accounts", json={"id": "alice", "currency": "USD"})).status_code == 409
    assert (await app_client.patch("/v1/accounts/alice", json={"status": "frozen"})).status_code == 400
    assert (await app_client.get("/v1/accounts/nobody")).status_code == 404
    assert (await app_client.get("/v1/transactions/RCP-20260101-0000000000000000")).status_code == 404
    assert (await app_client.get("/v1/accounts/alice/entries?limit=0")).status_code == 400
    assert (await app_client.get("/v1/accounts/alice/entries?cursor=%%%")).status_code == 400
    assert await snapshot(pg_dsn) == before
    await assert_invariants(pg_dsn)


async def test_accounts_entries_and_paging(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    r = await app_client.post("/v1/accounts", json={"currency": "EUR", "metadata": {"tier": 1}})
    assert r.status_code == 201
    account = r.json()
    assert account["balance"] == 0 and account["status"] == "active" and account["metadata"] == {"tier": 1}
    assert account["created_at"].endswith("Z")
    for amount in (1, 2, 3, 4, 5):
        r = await app_client.post("/v1/transactions?wait=true", json={
            "type": "deposit", "currency": "EUR", "destination": account["id"], "amount": amount})
        assert r.status_code == 201
    seen, cursor = [], None
    while True:
        url = f"/v1/accounts/{account['id']}/entries?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await app_client.get(url)).json()
        seen += [e["amount"] for e in page["entries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [5, 4, 3, 2, 1]
    r = await app_client.patch(f"/v1/accounts/{account['id']}", json={"status": "locked"})
    assert r.status_code == 200 and r.json()["status"] == "locked"
    r = await app_client.post("/v1/transactions?wait=true", json={
        "type": "withdrawal", "currency": "EUR", "source": account["id"], "amount": 1})
    assert r.status_code == 422 and r.json()["error"]["code"] == "account_inactive"
    await assert_invariants(pg_dsn)


async def test_async_accept_then_complete(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    r = await app_client.post("/v1/transactions", json={
        "type": "transfer", "currency": "USD", "source": "alice", "destination": "bob",
        "amount": 250, "description": "rent", "metadata": {"m": 1}})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "processing" and body["processing_time"].endswith("ms")
    assert r.headers["location"] == f"/v1/transactions/{body['receipt_code']}"
    import re

    assert re.match(RECEIPT, body["receipt_code"])
    for _ in range(100):
        status = (await app_client.get(f"/v1/transactions/{body['receipt_code']}/status")).json()
        if status["status"] == "completed":
            break
        await asyncio.sleep(0.02)
    assert status["status"] == "completed" and status["error"] is None
    tx = (await app_client.get(body["receipt_code"].join(["/v1/transactions/", ""]))).json()
    assert tx["entries"] == [
        {"account": "alice", "direction": "debit", "amount": 250, "balance_after": 750},
        {"account": "bob", "direction": "credit", "amount": 250, "balance_after": 250}]
    assert tx["description"] == "rent" and tx["metadata"] == {"m": 1} and tx["type"] == "transfer"
    await assert_invariants(pg_dsn)


async def test_sync_failure_carries_the_receipt(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 100, 0), ("bob", 0, 0))
    # One batch reads its accounts once, so both items pass pre-validation on the same
    # view and the executor refuses the second under lock: an execution-time failure.
    item = {"type": "transfer", "currency": "USD", "source": "alice", "destination": "bob", "amount": 80}
    r = await app_client.post("/v1/transactions/batch?wait=true", json={"transactions": [item, item]})
    assert r.status_code == 201, r.text
    done, failed = r.json()["results"]
    assert done["status"] == "completed"
    assert failed["error"]["code"] == "insufficient_funds"
    receipt = failed["error"]["receipt_code"]
    assert receipt.startswith("RCP-") and failed["receipt_code"] == receipt
    status = (await app_client.get(f"/v1/transactions/{receipt}/status")).json()
    assert status["status"] == "failed" and status["error"]["code"] == "insufficient_funds"
    view = (await app_client.get(f"/v1/transactions/{receipt}")).json()
    assert view["status"] == "failed" and view["entries"] == []
    await assert_invariants(pg_dsn)


async def test_idempotency(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    body = {"type": "transfer", "currency": "USD", "source": "alice", "destination": "bob", "amount": 7}
    first = await app_client.post("/v1/transactions", json=body, headers={"Idempotency-Key": "k-1"})
    again = await app_client.post("/v1/transactions", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    other = await app_client.post("/v1/transactions", json={**body, "amount": 8},
                                  headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    # Another API key has its own key space.
    mine = await app_client.post("/v1/transactions", json=body, headers={
        "Idempotency-Key": "k-1", "Authorization": f"Bearer {WRITE_KEY}"})
    assert mine.status_code == 202 and "idempotent-replayed" not in mine.headers
    # Sync: the replay answers the final transaction, posting nothing more.
    s1 = await app_client.post("/v1/transactions?wait=true", json=body, headers={"Idempotency-Key": "k-2"})
    await app_client.runtime.redis.flushall()  # the database constraint alone still holds
    s2 = await app_client.post("/v1/transactions?wait=true", json=body, headers={"Idempotency-Key": "k-2"})
    assert s1.status_code == s2.status_code == 201 and s2.json() == s1.json()
    assert s2.headers["idempotent-replayed"] == "true"
    await asyncio.sleep(0.3)
    bob = (await app_client.get("/v1/accounts/bob")).json()
    assert bob["balance"] == 7 * 3
    await assert_invariants(pg_dsn)


async def test_concurrent_repeats_post_once(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    body = {"type": "transfer", "currency": "USD", "source": "alice", "destination": "bob", "amount": 3}
    results = await asyncio.gather(*(app_client.post(
        "/v1/transactions", json=body, headers={"Idempotency-Key": "same"}) for _ in range(20)))
    assert {r.status_code for r in results} <= {202, 409}
    assert any(r.status_code == 202 and "idempotent-replayed" not in r.headers for r in results)
    conflict = [r for r in results if r.status_code == 409]
    assert all(r.json()["error"]["code"] == "idempotency_in_progress" and r.headers["retry-after"]
               for r in conflict)
    receipts = {r.json()["receipt_code"] for r in results if r.status_code == 202}
    assert len(receipts) == 1
    await asyncio.sleep(0.3)
    assert (await app_client.get("/v1/accounts/bob")).json()["balance"] == 3
    await assert_invariants(pg_dsn)


async def test_batch_endpoint_items_are_independent(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 100, 0), ("bob", 0, 0))
    items = [{"type": "transfer", "currency": "USD", "source": "alice", "destination": "bob", "amount": 10},
             {"type": "transfer", "currency": "USD", "source": "alice", "destination": "bob", "amount": 1.5},
             {"type": "deposit", "currency": "USD", "destination": "ghost", "amount": 10},
             {"type": "transfer", "currency": "USD", "source": "alice", "destination": "bob", "amount": 20,
              "idempotency_key": "b-1"}]
    r = await app_client.post("/v1/transactions/batch?wait=true", json={"transactions": items})
    assert r.status_code == 201, r.text
    results = r.json()["results"]
    assert len(results) == 4
    assert results[0]["status"] == "completed" and results[3]["status"] == "completed"
    assert results[1]["error"]["code"] == "invalid_request"
    assert results[2]["error"]["code"] == "account_not_found"
    r = await app_client.post("/v1/transactions/batch", json={"transactions": items[:1] * 3})
    assert r.status_code == 202 and all(x["status"] == "processing" for x in r.json()["results"])
    for bad in ({"transactions": []}, {"transactions": items[:1] * 1001}, {"tx": []}):
        assert (await app_client.post("/v1/transactions/batch", json=bad)).status_code == 400
    await asyncio.sleep(0.3)
    assert (await app_client.get("/v1/accounts/bob")).json()["balance"] == 60
    await assert_invariants(pg_dsn)


async def test_operations_endpoints(app_client) -> None:  # type: ignore[no-untyped-def]
    assert (await app_client.get("/healthz", headers={"Authorization": ""})).json() == {"status": "ok"}
    ready = await app_client.get("/readyz", headers={"Authorization": ""})
    assert ready.status_code == 200 and ready.json()["postgres"] == "ok"
    spec = (await app_client.get("/openapi.json")).json()
    assert {"/v1/transactions", "/v1/transactions/batch", "/v1/accounts/{account_id}/entries",
            "/v1/transactions/{receipt_code}/status"} <= set(spec["paths"])
    metrics = (await app_client.get("/metrics")).text
    assert "kassa_executor_queued_tasks" in metrics


@pytest.mark.parametrize("limit", [0, 100])
async def test_overdraft_limits(app_client, pg_dsn, limit: int) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 50, limit), ("bob", 0, 0))
    ok = await app_client.post("/v1/transactions?wait=true", json={
        "type": "transfer", "currency": "USD", "source": "alice", "destination": "bob", "amount": 50 + limit})
    assert ok.status_code == 201 and ok.json()["entries"][0]["balance_after"] == -limit
    no = await app_client.post("/v1/transactions?wait=true", json={
        "type": "transfer", "currency": "USD", "source": "alice", "destination": "bob", "amount": 1})
    assert no.status_code == 422 and no.json()["error"]["code"] == "insufficient_funds"
    await assert_invariants(pg_dsn)


async def test_wait_true_answers_from_the_outcome_without_reading_it_back(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 100, 0), ("bob", 0, 0))
    body = {"type": "transfer", "currency": "USD", "source": "alice", "destination": "bob",
            "amount": 30, "description": "rent", "metadata": {"b": 1, "a": [2]}}
    reads = app_client.runtime.accounts

    async def unreachable(receipt_code: str) -> None:
        raise AssertionError("the finished transaction was read back")

    original, reads.transaction = reads.transaction, unreachable
    try:
        posted = await app_client.post("/v1/transactions?wait=true", json=body)
    finally:
        reads.transaction = original
    assert posted.status_code == 201, posted.text
    stored = await app_client.get(f"/v1/transactions/{posted.json()['receipt_code']}")
    assert stored.json() == posted.json(), "the answer reads exactly as the journal does"
    assert posted.json()["entries"] == [
        {"account": "alice", "direction": "debit", "amount": 30, "balance_after": 70},
        {"account": "bob", "direction": "credit", "amount": 30, "balance_after": 30}]
    await assert_invariants(pg_dsn)


async def test_idempotency_ignores_the_order_of_metadata_keys(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 100, 0), ("bob", 0, 0))
    base = {"type": "transfer", "currency": "USD", "source": "alice", "destination": "bob",
            "amount": 5}
    first = await app_client.post("/v1/transactions", headers={"Idempotency-Key": "order"},
                                  json={**base, "metadata": {"a": 1, "b": {"x": 1, "y": 2}}})
    again = await app_client.post("/v1/transactions", headers={"Idempotency-Key": "order"},
                                  json={**base, "metadata": {"b": {"y": 2, "x": 1}, "a": 1}})
    assert first.status_code == again.status_code == 202, again.text
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    await assert_invariants(pg_dsn)
