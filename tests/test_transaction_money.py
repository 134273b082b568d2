"""Every transaction body carries its money (docs/api.md, Transactions): `amount` and `legs`
whatever its status, a hold its capture or void and what was captured and released, a
failed one the account at fault in `error.param`. Through HTTP against `kassa serve` on
real PostgreSQL and Redis: `?wait=true` answers, batch results, GET and listings read the
same."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.fixtures.kassa_server import KassaProcess, serve_new_database
from tests.fixtures.servers import PostgresServer, RedisServer

pytestmark = [pytest.mark.timeout(120)]

T = "/v1/transactions"
WORLD = "@world:USD"


@pytest.fixture(scope="module")
def kassa(pg_server: PostgresServer, redis_server: RedisServer) -> Iterator[KassaProcess]:
    yield from serve_new_database(pg_server, redis_server, workers=1, no_traceback=True)


@pytest.fixture
def http(kassa: KassaProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=kassa.url, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        yield client


def open_accounts(http: httpx.Client, **balances: int) -> None:
    for account_id, balance in balances.items():
        r = http.post("/v1/accounts", json={"id": account_id, "currency": "USD"})
        assert r.status_code == 201, r.text
        if balance:
            deposit(http, account_id, balance)


def deposit(http: httpx.Client, account_id: str, amount: int) -> dict[str, Any]:
    r = http.post(f"{T}?wait=true", json={"type": "deposit", "currency": "USD",
                                         "destination": account_id, "amount": amount})
    assert r.status_code == 201, r.text
    return dict(r.json())


def leg(source: str, destination: str, amount: int) -> dict[str, Any]:
    return {"source": source, "destination": destination, "amount": amount}


def get(http: httpx.Client, receipt: str) -> dict[str, Any]:
    r = http.get(f"{T}/{receipt}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def post(http: httpx.Client, path: str, body: dict[str, Any] | None, status: int
         ) -> dict[str, Any]:
    r = http.post(path, json=body) if body is not None else http.post(
        path, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    return dict(r.json())


def test_deposits_withdrawals_and_multi_leg_transfers_carry_their_legs(http: httpx.Client
                                                                       ) -> None:
    open_accounts(http, m_a=0, m_b=0, m_c=0)
    answer = deposit(http, "m_a", 1000)
    assert (answer["amount"], answer["legs"]) == (1000, [leg(WORLD, "m_a", 1000)])
    assert get(http, answer["receipt_code"]) == answer  # the answer reads as a later GET
    answer = post(http, f"{T}?wait=true", {"type": "withdrawal", "currency": "USD",
                                           "source": "m_a", "amount": 100}, 201)
    assert (answer["amount"], answer["legs"]) == (100, [leg("m_a", WORLD, 100)])
    assert get(http, answer["receipt_code"]) == answer
    legs = [leg("m_a", "m_b", 300), leg("m_b", "m_c", 120), leg("m_a", "m_c", 5)]
    answer = post(http, f"{T}?wait=true", {"type": "transfer", "currency": "USD",
                                           "legs": legs}, 201)
    assert (answer["status"], answer["amount"], answer["legs"]) == ("completed", 425, legs)
    assert len(answer["entries"]) == 6
    assert get(http, answer["receipt_code"]) == answer
    # The 202 of the asynchronous path stays a status body; the transaction has its money.
    accepted = post(http, T, {"type": "transfer", "currency": "USD", "source": "m_c",
                              "destination": "m_b", "amount": 7}, 202)
    assert set(accepted) == {"receipt_code", "status", "processing_time"}
    view = get(http, accepted["receipt_code"])
    assert (view["amount"], view["legs"]) == (7, [leg("m_c", "m_b", 7)])


def test_a_failed_transaction_names_the_account_at_fault(http: httpx.Client) -> None:
    open_accounts(http, f_a=100, f_b=0, f_c=100)
    # Each item fits the balances read for pre-validation; executed in order, the second
    # finds f_a short, at its second leg (f_c can pay its own).
    items = [{"type": "transfer", "currency": "USD", "source": "f_a", "destination": "f_b",
              "amount": 60},
             {"type": "transfer", "currency": "USD",
              "legs": [leg("f_c", "f_b", 10), leg("f_a", "f_b", 60)]}]
    results = post(http, f"{T}/batch?wait=true", {"transactions": items}, 201)["results"]
    done, failed = results
    assert done["status"] == "completed" and done["legs"] == [leg("f_a", "f_b", 60)]
    assert get(http, done["receipt_code"]) == done
    assert (failed["error"]["code"], failed["error"]["param"]) == ("insufficient_funds", "f_a")
    view = get(http, failed["receipt_code"])
    assert (view["status"], view["amount"], view["legs"], view["entries"]) == (
        "failed", 70, items[1]["legs"], [])
    assert (view["error"]["code"], view["error"]["param"]) == ("insufficient_funds", "f_a")
    status = http.get(f"{T}/{failed['receipt_code']}/status").json()
    assert status["error"]["param"] == "f_a"
    # Refused before a receipt: the same rules name the same accounts.
    refused = post(http, f"{T}?wait=true", {"type": "transfer", "currency": "USD",
                                            "source": "f_b", "destination": "ghost",
                                            "amount": 1}, 422)
    assert (refused["error"]["code"], refused["error"]["param"]) == ("account_not_found", "ghost")
    refused = post(http, f"{T}?wait=true", {"type": "transfer", "currency": "USD",
                                            "source": "f_b", "destination": "f_a",
                                            "amount": 10_000}, 422)
    assert (refused["error"]["code"], refused["error"]["param"]) == ("insufficient_funds", "f_b")


HOLD = ("captured_by", "voided_by", "captured_amount", "released_amount")


def hold_fields(view: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(view[k] for k in HOLD)


def test_holds_name_their_capture_or_void_and_what_was_captured_and_released(
        http: httpx.Client) -> None:
    open_accounts(http, h_a=1000, h_b=0)
    hold = post(http, f"{T}?wait=true", {"type": "transfer", "currency": "USD", "source": "h_a",
                                         "destination": "h_b", "amount": 300, "hold": True}, 201)
    rc = hold["receipt_code"]
    assert (hold["status"], hold["amount"], hold["legs"], hold["entries"]) == (
        "held", 300, [leg("h_a", "h_b", 300)], [])
    assert hold_fields(hold) == ([], None, 0, 0)
    assert get(http, rc) == hold
    capture = post(http, f"{T}/{rc}/capture?wait=true", {"amount": 120}, 201)
    assert (capture["captures"], capture["amount"], capture["legs"]) == (
        rc, 120, [leg("h_a", "h_b", 120)])
    assert not set(HOLD) & set(capture)
    assert get(http, capture["receipt_code"]) == capture
    after = get(http, rc)
    assert (after["status"], after["amount"], after["entries"]) == ("completed", 300, [])
    assert hold_fields(after) == ([capture["receipt_code"]], None, 120, 180)
    # A second capture fails on execution (with a key, the writers decide): it too has money.
    r = http.post(f"{T}/{rc}/capture?wait=true", json={"amount": 10},
                  headers={"Idempotency-Key": "second-capture"})
    assert r.status_code == 409, r.text
    late = get(http, r.json()["receipt_code"])
    assert (late["status"], late["amount"], late["legs"], late["error"]["code"]) == (
        "failed", 10, [leg("h_a", "h_b", 10)], "hold_not_pending")
    assert hold_fields(get(http, rc)) == ([capture["receipt_code"]], None, 120, 180)

    withdrawal = post(http, f"{T}?wait=true", {"type": "withdrawal", "currency": "USD",
                                               "source": "h_a", "amount": 50, "hold": True}, 201)
    wrc = withdrawal["receipt_code"]
    assert withdrawal["legs"] == [leg("h_a", WORLD, 50)]
    void = post(http, f"{T}/{wrc}/void?wait=true", None, 201)
    assert (void["status"], void["voids"], void["amount"], void["legs"]) == (
        "voided", wrc, 50, [leg("h_a", WORLD, 50)])
    assert get(http, void["receipt_code"]) == void
    voided = get(http, wrc)
    assert voided["status"] == "voided"
    assert hold_fields(voided) == ([], void["receipt_code"], 0, 50)

    # A reversal of the capture: the capture lists it, and carries no hold fields.
    reversal = post(http, f"{T}/{capture['receipt_code']}/reverse?wait=true", {"amount": 20}, 201)
    assert (reversal["reverses"], reversal["amount"], reversal["legs"]) == (
        capture["receipt_code"], 20, [leg("h_b", "h_a", 20)])
    reversed_capture = get(http, capture["receipt_code"])
    assert reversed_capture["reversed_by"] == [reversal["receipt_code"]]
    assert not set(HOLD) & set(reversed_capture)


def test_listing_items_read_as_their_transactions(http: httpx.Client) -> None:
    open_accounts(http, l_a=500, l_b=0)
    hold = post(http, f"{T}?wait=true", {"type": "transfer", "currency": "USD", "source": "l_a",
                                         "destination": "l_b", "amount": 200, "hold": True}, 201)
    post(http, f"{T}/{hold['receipt_code']}/capture?wait=true", {"amount": 50}, 201)
    post(http, f"{T}?wait=true", {"type": "transfer", "currency": "USD", "source": "l_a",
                                  "destination": "l_b", "amount": 10_000}, 422)
    post(http, f"{T}?wait=true", {"type": "withdrawal", "currency": "USD", "source": "l_b",
                                  "amount": 5}, 201)
    r = http.get(T, params={"account": "l_a", "limit": "100"})
    assert r.status_code == 200, r.text
    items = r.json()["transactions"]
    # The deposit, the hold and its capture; the withdrawal is l_b's; the refused transfer
    # got no receipt.
    assert [i["type"] for i in items] == ["capture", "transfer", "deposit"]
    for item in items:
        assert item == get(http, item["receipt_code"])
        assert item["amount"] == sum(x["amount"] for x in item["legs"])
    assert hold_fields(items[1]) == ([items[0]["receipt_code"]], None, 50, 150)
    r = http.get(T, params={"account": "l_b", "type": "withdrawal"})
    (withdrawal,) = r.json()["transactions"]
    assert withdrawal["legs"] == [leg("l_b", WORLD, 5)]
