"""Events of holds, captures, voids and reversals end to end: `kassa serve` publishing
through the relay to a real Tansu broker (docs/api.md, Events; Holds; Reversals)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import new_database
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.servers import PostgresServer
from tests.invariants import assert_invariants
from tests.load import Reply, client, open_accounts, send
from tests.test_e2e_events import EVENT_KEYS, consume, journal_count, serve, wait_all_published

pytestmark = pytest.mark.slow


async def post(http: Any, path: str, body: Any = None, status: int = 201) -> dict[str, Any]:
    reply: Reply = await send(http, "POST", path, body)
    assert reply.status == status, reply.body
    return dict(reply.body)


async def wait_status(http: Any, code: str, wanted: str, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            reply = await send(http, "GET", f"/v1/transactions/{code}/status")
            assert reply.status == 200, reply.body
            if reply.body["status"] == wanted:
                return
            await asyncio.sleep(0.1)


def legs(event: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(e["account"], e["direction"], e["amount"]) for e in event["entries"]]


async def test_holds_captures_voids_expiries_and_reversals_are_published_once(
        pg_server: PostgresServer, redis_url: str, kafka_broker: KafkaBroker) -> None:
    # A flushed Redis: every fresh database hands out the same first receipt codes, and an
    # earlier test's final status cached under one of them would answer for this one.
    dsn = await new_database(pg_server)
    kassa = serve(dsn, redis_url, kafka_broker.bootstrap,
                  KASSA_HOLD_EXPIRY_INTERVAL_S="0.2")
    try:
        await open_accounts(kassa.url, ["h_alice", "h_bob"], 10_000)
        hold = {"type": "transfer", "currency": "USD", "source": "h_alice",
                "destination": "h_bob", "hold": True}
        async with client(kassa.url, 8) as http:
            captured = await post(http, "/v1/transactions?wait=true", {**hold, "amount": 1000})
            assert captured["status"] == "held" and captured["entries"] == []
            capture = await post(http, f"/v1/transactions/{captured['receipt_code']}/capture"
                                 "?wait=true", {"amount": 400})
            voided = await post(http, "/v1/transactions?wait=true", {**hold, "amount": 500})
            # `{}`: aiohttp labels a POST without a body application/octet-stream (415).
            void = await post(http, f"/v1/transactions/{voided['receipt_code']}/void?wait=true",
                              {})
            expiring = await post(http, "/v1/transactions?wait=true",
                                  {**hold, "amount": 300, "hold_expires_in_s": 1})
            await wait_status(http, expiring["receipt_code"], "voided")
            original = await post(http, "/v1/transactions?wait=true", {
                "type": "transfer", "currency": "USD", "source": "h_alice",
                "destination": "h_bob", "amount": 200})
            reversal = await post(http, f"/v1/transactions/{original['receipt_code']}/reverse"
                                  "?wait=true", {"amount": 150})
            alice = (await send(http, "GET", "/v1/accounts/h_alice")).body
        assert (alice["balance"], alice["held"]) == (10_000 - 400 - 200 + 150, 0)

        # The expiry void is the server's own journal: its receipt is read from the event.
        codes = {r["receipt_code"] for r in (captured, capture, voided, void, expiring,
                                             original, reversal)}
        seen = await consume(kafka_broker.bootstrap, codes)
        expired = [events[0] for events in seen.values()
                   if events[0].get("voids") == expiring["receipt_code"]]
        assert len(expired) == 1, "one expiry void, published once"
        for code, events in seen.items():  # the keys are receipt codes (consume checks)
            assert len(events) == 1, (code, events)
        assert await journal_count(dsn) == len(seen), "one event per finished journal"
        event = {code: events[0] for code, events in seen.items()}

        e = event[captured["receipt_code"]]
        assert set(e) == EVENT_KEYS
        assert (e["event"], e["type"], e["entries"], e["error"]) == (
            "transaction.held", "transfer", [], None)
        e = event[capture["receipt_code"]]
        assert set(e) == EVENT_KEYS | {"captures"}
        assert (e["event"], e["type"], e["captures"]) == (
            "transaction.completed", "capture", captured["receipt_code"])
        assert legs(e) == [("h_alice", "debit", 400), ("h_bob", "credit", 400)]

        assert event[voided["receipt_code"]]["event"] == "transaction.held"
        e = event[void["receipt_code"]]
        assert set(e) == EVENT_KEYS | {"voids", "reason"}
        assert (e["event"], e["type"], e["voids"], e["reason"], e["entries"]) == (
            "transaction.voided", "void", voided["receipt_code"], "requested", [])

        assert event[expiring["receipt_code"]]["event"] == "transaction.held"
        e = expired[0]
        assert set(e) == EVENT_KEYS | {"voids", "reason"}
        assert (e["event"], e["type"], e["reason"], e["entries"]) == (
            "transaction.voided", "void", "expired", [])

        assert event[original["receipt_code"]]["event"] == "transaction.completed"
        assert "reverses" not in event[original["receipt_code"]]
        e = event[reversal["receipt_code"]]
        assert set(e) == EVENT_KEYS | {"reverses"}
        assert (e["event"], e["type"], e["reverses"]) == (
            "transaction.completed", "reversal", original["receipt_code"])
        assert legs(e) == [("h_bob", "debit", 150), ("h_alice", "credit", 150)]

        await wait_all_published(dsn)
        await assert_invariants(dsn)
    finally:
        kassa.stop()
