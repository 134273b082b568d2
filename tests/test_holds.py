"""Holds, captures, voids and reversals over HTTP on the real app (real PostgreSQL and
Redis, in-process): docs/api.md, Holds and Reversals."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.invariants import assert_invariants, scalar
from tests.test_http_api import make_accounts


@pytest.fixture(autouse=True)
def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The server runs in this process: a failure it only logs (post-commit effects, a
    sweep) fails the test too."""
    caplog.set_level(logging.INFO, logger="kassa")  # as served: info lines are written
    yield
    errors = [r for r in caplog.get_records("call")
              if r.levelno >= logging.ERROR and r.name.startswith("kassa")]
    assert not errors, [r.getMessage() for r in errors]


async def account(client: Any, account_id: str) -> dict[str, Any]:
    r = await client.get(f"/v1/accounts/{account_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def hold(client: Any, amount: int, source: str = "alice", **extra: Any) -> dict[str, Any]:
    r = await client.post("/v1/transactions?wait=true", json={
        "type": "transfer", "currency": "USD", "source": source, "destination": "bob",
        "amount": amount, "hold": True, **extra})
    assert r.status_code == 201, r.text
    body = dict(r.json())
    assert body["status"] == "held" and body["entries"] == []
    return body


async def test_a_hold_reserves_and_a_partial_capture_posts_and_releases(app_client, pg_dsn) -> None:
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    held = await hold(app_client, 600)
    alice = await account(app_client, "alice")
    assert (alice["balance"], alice["held"], alice["available"]) == (1000, 600, 400)
    # Debits are checked against what is available, not the balance.
    r = await app_client.post("/v1/transactions?wait=true", json={
        "type": "transfer", "currency": "USD", "source": "alice", "destination": "bob",
        "amount": 500})
    assert r.status_code == 422 and r.json()["error"]["code"] == "insufficient_funds"
    code = held["receipt_code"]
    r = await app_client.post(f"/v1/transactions/{code}/capture?wait=true", json={"amount": 250})
    assert r.status_code == 201, r.text
    capture = r.json()
    assert capture["status"] == "completed" and capture["captures"] == code
    assert [(e["account"], e["direction"], e["amount"]) for e in capture["entries"]] == [
        ("alice", "debit", 250), ("bob", "credit", 250)]
    alice = await account(app_client, "alice")
    assert (alice["balance"], alice["held"], alice["available"]) == (750, 0, 750)
    status = (await app_client.get(f"/v1/transactions/{code}/status")).json()
    assert status["status"] == "completed"
    r = await app_client.post(f"/v1/transactions/{code}/void?wait=true")
    assert r.status_code == 409 and r.json()["error"]["code"] == "hold_not_pending"
    await assert_invariants(pg_dsn)


async def test_a_void_releases_the_hold_once(app_client, pg_dsn) -> None:
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    code = (await hold(app_client, 700))["receipt_code"]
    r = await app_client.post(f"/v1/transactions/{code}/void?wait=true")
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "voided" and r.json()["voids"] == code
    assert (await account(app_client, "alice"))["held"] == 0
    assert (await app_client.get(f"/v1/transactions/{code}/status")).json()["status"] == "voided"
    r = await app_client.post(f"/v1/transactions/{code}/capture?wait=true")
    assert r.status_code == 409 and r.json()["error"]["code"] == "hold_not_pending"
    await assert_invariants(pg_dsn)


async def test_concurrent_capture_and_void_end_the_hold_once(app_client, pg_dsn) -> None:
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    codes = [(await hold(app_client, 100))["receipt_code"] for _ in range(10)]
    answers = await asyncio.gather(*(
        app_client.post(f"/v1/transactions/{c}/{verb}?wait=true")
        for c in codes for verb in ("capture", "void")))
    statuses = [a.status_code for a in answers]
    assert statuses.count(201) == 10 and statuses.count(409) == 10, statuses
    alice = await account(app_client, "alice")
    captured = sum(1 for a in answers if a.status_code == 201 and "captures" in a.json())
    assert alice["held"] == 0 and alice["balance"] == 1000 - 100 * captured
    await assert_invariants(pg_dsn)


async def test_an_expired_hold_is_voided_by_the_server(app_client, pg_dsn) -> None:
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    code = (await hold(app_client, 300, hold_expires_in_s=1))["receipt_code"]
    for _ in range(100):
        if (await app_client.get(f"/v1/transactions/{code}/status")).json()["status"] == "voided":
            break
        await asyncio.sleep(0.1)
    assert (await app_client.get(f"/v1/transactions/{code}/status")).json()["status"] == "voided"
    assert (await account(app_client, "alice"))["held"] == 0
    voids = await scalar(pg_dsn, "SELECT count(*) FROM journals WHERE target = $1 AND "
                         "type = 'void' AND description = 'expired'", code)
    assert voids == 1
    await assert_invariants(pg_dsn)


async def test_reversals_never_exceed_the_original(app_client, pg_dsn) -> None:
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    r = await app_client.post("/v1/transactions?wait=true", json={
        "type": "transfer", "currency": "USD", "source": "alice", "destination": "bob",
        "amount": 500})
    code = r.json()["receipt_code"]
    answers = await asyncio.gather(*(
        app_client.post(f"/v1/transactions/{code}/reverse?wait=true", json={"amount": 300})
        for _ in range(2)))
    assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
    done = next(a.json() for a in answers if a.status_code == 201)
    assert done["reverses"] == code
    original = (await app_client.get(f"/v1/transactions/{code}")).json()
    assert original["reversed_by"] == [done["receipt_code"]]
    # With no amount, a reversal is of the whole original: more than is left now.
    r = await app_client.post(f"/v1/transactions/{code}/reverse?wait=true")
    assert r.status_code == 409 and r.json()["error"]["code"] == "reversal_exceeds_original"
    r = await app_client.post(f"/v1/transactions/{code}/reverse?wait=true", json={"amount": 200})
    assert r.status_code == 201 and sum(e["amount"] for e in r.json()["entries"]) == 400
    r = await app_client.post(f"/v1/transactions/{code}/reverse?wait=true", json={"amount": 1})
    assert r.status_code == 409 and r.json()["error"]["code"] == "reversal_exceeds_original"
    assert (await account(app_client, "alice"))["balance"] == 1000
    await assert_invariants(pg_dsn)


async def test_a_reversal_above_the_original_is_409(app_client, pg_dsn) -> None:
    """Issue 18 D7: `{"amount": 401}` of a 400 transfer was 400 invalid_request; any amount
    above what is left, above the original itself included, is 409, with or without a key."""
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    r = await app_client.post("/v1/transactions?wait=true", json={
        "type": "transfer", "currency": "USD", "source": "alice", "destination": "bob",
        "amount": 400})
    code = r.json()["receipt_code"]
    for path, key in ((f"/v1/transactions/{code}/reverse?wait=true", None),
                      (f"/v1/transactions/{code}/reverse", "k-401")):
        for _ in range(2):  # a retry under the same key is refused the same way
            r = await app_client.post(path, json={"amount": 401},
                                      headers={"Idempotency-Key": key} if key else {})
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == "reversal_exceeds_original"
    r = await app_client.post(f"/v1/transactions/{code}/reverse?wait=true", json={"amount": 400})
    assert r.status_code == 201, r.text
    r = await app_client.post(f"/v1/transactions/{code}/reverse?wait=true", json={"amount": 1})
    assert r.status_code == 409 and r.json()["error"]["code"] == "reversal_exceeds_original"
    assert (await account(app_client, "alice"))["balance"] == 1000
    await assert_invariants(pg_dsn)


def replayed(answer: Any) -> Any:
    """An answer's body as a replay repeats it: all of it but an error's request_id, which
    names the request answered (its X-Request-Id)."""
    body = answer.json()
    if body.get("error") is not None:
        assert body["error"].pop("request_id") == answer.headers["X-Request-Id"]
    return body


async def test_a_retried_capture_or_reversal_is_a_replay(app_client, pg_dsn) -> None:
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    code = (await hold(app_client, 600))["receipt_code"]
    for verb, body in (("capture", {"amount": 100}), ("void", None)):
        key = {"Idempotency-Key": f"k-{verb}"}
        first = await app_client.post(f"/v1/transactions/{code}/{verb}?wait=true",
                                      json=body, headers=key)
        again = await app_client.post(f"/v1/transactions/{code}/{verb}?wait=true",
                                      json=body, headers=key)
        assert again.headers.get("Idempotent-Replayed") == "true", again.text
        assert (again.status_code, replayed(again)) == (first.status_code, replayed(first))
    capture = (await app_client.get(f"/v1/transactions/{code}")).json()
    assert capture["status"] == "completed"
    r = await app_client.post("/v1/transactions?wait=true", json={
        "type": "transfer", "currency": "USD", "source": "alice", "destination": "bob",
        "amount": 50})
    original = r.json()["receipt_code"]
    key = {"Idempotency-Key": "k-reverse"}
    first = await app_client.post(f"/v1/transactions/{original}/reverse?wait=true", headers=key)
    again = await app_client.post(f"/v1/transactions/{original}/reverse?wait=true", headers=key)
    assert first.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == first.json()
    # The void came after the capture: it failed on execution, and its replay says so too.
    await assert_invariants(pg_dsn)


async def test_bad_requests_change_nothing(app_client, pg_dsn) -> None:
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    r = await app_client.post("/v1/transactions", json={
        "type": "deposit", "currency": "USD", "destination": "bob", "amount": 5, "hold": True})
    assert r.status_code == 400
    r = await app_client.post("/v1/transactions", json={
        "type": "transfer", "currency": "USD", "source": "alice", "destination": "bob",
        "amount": 5, "hold": True, "hold_expires_in_s": 0})
    assert r.status_code == 400
    missing = "RCP-20261202-0000000000000000"
    assert (await app_client.post(f"/v1/transactions/{missing}/void")).status_code == 404
    assert (await app_client.post("/v1/transactions/nope/void")).status_code == 400
    code = (await hold(app_client, 100))["receipt_code"]
    # Well formed, refused by the hold they name: 422 invalid_request.
    r = await app_client.post(f"/v1/transactions/{code}/capture", json={"amount": 101})
    assert (r.status_code, r.json()["error"]["param"]) == (422, "amount")
    r = await app_client.post(f"/v1/transactions/{code}/reverse")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")
    assert (await account(app_client, "alice"))["held"] == 100
    await assert_invariants(pg_dsn)


async def test_a_hold_on_a_locked_account_still_expires(app_client, pg_dsn) -> None:
    await make_accounts(app_client, ("alice", 1000, 0), ("carol", 1000, 0), ("bob", 0, 0))
    first = (await hold(app_client, 300, hold_expires_in_s=1))["receipt_code"]
    later = (await hold(app_client, 200, source="carol", hold_expires_in_s=1))["receipt_code"]
    r = await app_client.patch("/v1/accounts/alice", json={"status": "locked"})
    assert r.status_code == 200
    for _ in range(100):
        statuses = [(await app_client.get(f"/v1/transactions/{c}/status")).json()["status"]
                    for c in (first, later)]
        if statuses == ["voided", "voided"]:
            break
        await asyncio.sleep(0.1)
    assert statuses == ["voided", "voided"]
    assert (await account(app_client, "alice"))["held"] == 0
    await assert_invariants(pg_dsn)
