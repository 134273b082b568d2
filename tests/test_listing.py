"""Listings over HTTP on the real app (GET /v1/transactions, GET /v1/accounts, ?at=), and
the plans of every listing query shape on a few hundred thousand journals."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from typing import Any

import asyncpg
import pytest

from core.pipeline.views import TransactionFilter
from server.adapters.postgres.listing import (
    ACCOUNT_AT,
    LISTING_SLACK,
    accounts_query,
    journals_query,
)
from tests.conftest import READ_KEY
from tests.invariants import assert_invariants
from tests.test_http_api import make_accounts, snapshot

READ = {"Authorization": f"Bearer {READ_KEY}"}


async def post(client: Any, **body: Any) -> str:
    r = await client.post("/v1/transactions?wait=true", json={"currency": "USD", **body})
    assert r.status_code in (201, 422), r.text
    code: str = r.json()["receipt_code"]
    return code


async def pages(client: Any, query: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        url = f"/v1/transactions?{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        r = await client.get(url, headers=READ)
        assert r.status_code == 200, r.text
        items += r.json()["transactions"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


async def test_transactions_filters(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0), ("carol", 0, 0))
    t1 = await post(app_client, type="transfer", source="alice", destination="bob", amount=10)
    t2 = await post(app_client, type="transfer", legs=[
        {"source": "alice", "destination": "carol", "amount": 5},
        {"source": "alice", "destination": "bob", "amount": 5}])
    # A failure at execution (pre-validation refuses most without a receipt): as recorded.
    failed = "RCP-20261201-00000000000000FA"
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(
            "INSERT INTO journals (external_ref, type, status, currency, payload, error_code,"
            " error_message, completed_at) VALUES ($1, 'transfer', 'failed', 'USD',"
            " '[[\"bob\", \"carol\", 1000000]]', 'insufficient_funds', 'no', now())", failed)
    finally:
        await conn.close()
    w = await post(app_client, type="withdrawal", source="bob", amount=3)

    everything = await pages(app_client, "", 100)
    codes = [t["receipt_code"] for t in everything]
    assert codes[:4] == [w, failed, t2, t1] and len(codes) == 5  # and alice's opening deposit
    ids = [t["journal_id"] for t in everything]
    assert ids == sorted(ids, reverse=True)
    for item in everything:  # each item is what the single-transaction route answers
        r = await app_client.get(f"/v1/transactions/{item['receipt_code']}")
        assert r.json() == item
    failed_item = everything[1]
    assert failed_item["status"] == "failed" and failed_item["entries"] == []
    assert failed_item["error"]["code"] == "insufficient_funds"
    assert len(everything[2]["entries"]) == 4

    async def codes_of(query: str) -> list[str]:
        return [t["receipt_code"] for t in await pages(app_client, query, 2)]

    assert await codes_of("account=bob") == [w, failed, t2, t1]
    assert await codes_of("account=carol") == [failed, t2]
    assert len(await codes_of("account=@world:USD")) == 2  # the deposit and the withdrawal
    assert await codes_of("account=nobody") == []  # an unknown account: an empty list
    assert await codes_of("status=failed") == [failed]
    assert await codes_of("status=processing") == []
    assert await codes_of("status=executing") == []
    assert await codes_of("status=completed&type=transfer") == [t2, t1]
    assert await codes_of("type=withdrawal") == [w]
    assert await codes_of("type=capture") == []
    assert await codes_of("account=bob&status=completed&type=transfer") == [t2, t1]
    created = {t["receipt_code"]: t["created_at"] for t in everything}
    since, until = created[t2], created[failed]
    assert await codes_of(f"since={since}&until={until}") == [failed, t2]
    assert await codes_of(f"since={since}") == [w, failed, t2]
    assert await codes_of(f"until={until}&account=carol") == [failed, t2]
    # An offset is the same instant.
    shifted = (dt.datetime.fromisoformat(since) .astimezone(dt.timezone(dt.timedelta(hours=-5))))
    assert await codes_of("since=" + shifted.isoformat().replace("+", "%2B")) == [w, failed, t2]
    assert await codes_of("until=2000-01-01T00:00:00Z") == []
    assert await codes_of("since=2999-01-01T00:00:00%2B01:00") == []


async def test_processing_items_are_status_objects(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 1000, 0), ("bob", 0, 0))
    conn = await asyncpg.connect(pg_dsn)
    try:  # a journal accepted but not yet applied (as after a crash before its executor)
        await conn.execute(
            "INSERT INTO journals (external_ref, type, status, currency, payload, lease_owner,"
            " lease_expires_at) VALUES ('RCP-20261201-00000000000000AB', 'transfer',"
            " 'processing', 'USD', '[[\"alice\", \"bob\", 5]]', 'elsewhere',"
            " now() + interval '1 hour')")
    finally:
        await conn.close()
    r = await app_client.get("/v1/transactions?status=processing&account=alice", headers=READ)
    items = r.json()["transactions"]
    assert len(items) == 1 and items[0]["status"] == "processing" and items[0]["entries"] == []
    single = await app_client.get("/v1/transactions/RCP-20261201-00000000000000AB")
    assert single.json() == items[0]
    assert set(items[0]) == {"receipt_code", "status", "error", "updated_at", "amount", "legs",
                             "entries"}
    assert (items[0]["amount"], items[0]["legs"]) == (
        5, [{"source": "alice", "destination": "bob", "amount": 5}])


async def test_pages_are_stable_under_concurrent_inserts(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 10**6, 0), ("bob", 0, 0))
    for _ in range(20):
        await post(app_client, type="transfer", source="alice", destination="bob", amount=1)
    first = await pages(app_client, "account=alice", 1000)
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        url = "/v1/transactions?account=alice&limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = (await app_client.get(url, headers=READ)).json()
        seen += body["transactions"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        # Writes between page reads: async and sync, both on the listed account.
        await asyncio.gather(
            post(app_client, type="transfer", source="alice", destination="bob", amount=1),
            app_client.post("/v1/transactions", json={
                "type": "deposit", "currency": "USD", "destination": "alice", "amount": 1}))
    codes = [t["receipt_code"] for t in seen]
    assert len(codes) == len(set(codes)), "an item repeated across pages"
    assert {t["receipt_code"] for t in first} <= set(codes), "an item skipped"
    ids = [t["journal_id"] for t in seen]
    assert ids == sorted(ids, reverse=True)
    await asyncio.sleep(0.5)
    await assert_invariants(pg_dsn)


class Forbidden:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"listing.{name} called for a request that must be refused")


BAD_LISTS = [
    "limit=0", "limit=1001", "limit=abc", "limit=%EF%BC%91", "limit=-1", "limit=",
    "cursor=%%%", "cursor=YQ", "cursor=YWxpY2U", "cursor=ajE5OTk5OTk5OTk5OTk5OTk5OTk5OQ",
    "cursor=ajA", "status=done", "status=", "type=teleport", "account=", "account=bad%20id",
    "account=" + "a" * 65, "since=yesterday", "since=2026-11-24", "since=2026-11-24T10:00:00",
    "since=2026-13-01T00:00:00Z", "until=2026-11-24T25:00:00Z", "until=2026-11-24T10:00:00%2B24:00",
    "since=2026-02-30T00:00:00Z", "until=2026-11-24 10:00:00Z",
]


async def test_invalid_parameters_are_400_and_touch_nothing(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 100, 0))
    before = await snapshot(pg_dsn)
    api = app_client.runtime.api
    real, api.listing = api.listing, Forbidden()
    try:
        for query in BAD_LISTS:
            r = await app_client.get(f"/v1/transactions?{query}", headers=READ)
            assert r.status_code == 400, (query, r.text)
            assert r.json()["error"]["code"] == "invalid_request"
        for query in ("limit=0", "status=frozen", "currency=usd", "cursor=ajE", "cursor=YQ",
                      "cursor=%%%"):
            r = await app_client.get(f"/v1/accounts?{query}", headers=READ)
            assert r.status_code == 400, (query, r.text)
        for at in ("now", "2026-11-24", "2026-11-24T10:00:00", "0000-01-01T00:00:00Z"):
            r = await app_client.get(f"/v1/accounts/alice?at={at}", headers=READ)
            assert r.status_code == 400, (at, r.text)
        r = await app_client.get("/v1/transactions", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
    finally:
        api.listing = real
    assert await snapshot(pg_dsn) == before


async def test_accounts_list(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("b1", 0, 0), ("a1", 0, 0), ("c1", 0, 0))
    for account_id in ("e1", "d1"):
        r = await app_client.post("/v1/accounts", json={"id": account_id, "currency": "EUR"})
        assert r.status_code == 201
    await app_client.patch("/v1/accounts/c1", json={"status": "locked"})
    ids: list[str] = []
    cursor = None
    while True:
        r = await app_client.get("/v1/accounts?limit=2" + (f"&cursor={cursor}" if cursor else ""),
                                 headers=READ)
        assert r.status_code == 200, r.text
        ids += [a["id"] for a in r.json()["accounts"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert ids == sorted(["@world:EUR", "@world:USD", "a1", "b1", "c1", "d1", "e1"])
    one = (await app_client.get("/v1/accounts?currency=USD&limit=1000", headers=READ)).json()
    assert [a["id"] for a in one["accounts"]] == ["@world:USD", "a1", "b1", "c1"]
    assert one["accounts"][1] == (await app_client.get("/v1/accounts/a1")).json()
    locked = (await app_client.get("/v1/accounts?status=locked", headers=READ)).json()
    assert [a["id"] for a in locked["accounts"]] == ["c1"] and locked["next_cursor"] is None
    eur = (await app_client.get("/v1/accounts?currency=EUR&status=active", headers=READ)).json()
    assert [a["id"] for a in eur["accounts"]] == ["@world:EUR", "d1", "e1"]
    none = (await app_client.get("/v1/accounts?currency=JPY", headers=READ)).json()
    assert none == {"accounts": [], "next_cursor": None}


async def test_balance_at(app_client, pg_dsn) -> None:  # type: ignore[no-untyped-def]
    await make_accounts(app_client, ("alice", 0, 0))
    for amount in (100, 20, 3):
        await post(app_client, type="deposit", destination="alice", amount=amount)
        await asyncio.sleep(0.01)
    entries = (await app_client.get("/v1/accounts/alice/entries")).json()["entries"][::-1]
    times = [dt.datetime.fromisoformat(e["created_at"]) for e in entries]
    assert [e["balance_after"] for e in entries] == [100, 120, 123]
    now = (await app_client.get("/v1/accounts/alice")).json()
    micro = dt.timedelta(microseconds=1)

    async def at(instant: dt.datetime) -> dict[str, Any]:
        text = instant.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        r = await app_client.get(f"/v1/accounts/alice?at={text}", headers=READ)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    created = dt.datetime.fromisoformat(now["created_at"])
    assert (await at(created - dt.timedelta(days=1)))["balance"] == 0  # before the account
    assert (await at(times[0] - micro))["balance"] == 0
    assert (await at(times[0]))["balance"] == 100  # at an entry's instant: after it
    assert (await at(times[1] - micro))["balance"] == 100
    assert (await at(times[1]))["balance"] == 120
    assert (await at(times[2] + dt.timedelta(hours=1)))["balance"] == 123
    body = await at(times[2])
    assert body == {**{k: v for k, v in now.items() if k not in ("held", "available")},
                    "balance": 123}
    assert "held" not in body and "available" not in body
    r = await app_client.get("/v1/accounts/nobody?at=2026-01-01T00:00:00Z", headers=READ)
    assert r.status_code == 404


# ------------------------------------------------------------------ plans at size

# KASSA_TEST_LISTING_JOURNALS=10000000 gives the figures of docs/performance.md at size
# (about a quarter of an hour here); the suite runs the same shapes at 300,000.
JOURNALS = int(os.environ.get("KASSA_TEST_LISTING_JOURNALS", "300000"))
ACCOUNTS = 1_000
SPACING = dt.timedelta(milliseconds=10)  # 100 journals a second
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
PLANNED = ("journals", "journal_accounts", "ledgers", "accounts")


async def load(conn: asyncpg.Connection) -> None:
    """Accounts, journals (the unposted ones named in journal_accounts by the trigger), two
    entries per completed journal."""
    await conn.execute(
        "INSERT INTO accounts (id, currency, overdraft_limit)"
        " SELECT 'acc_' || i, 'USD', NULL FROM generate_series(0, $1 - 1) i", ACCOUNTS)
    await conn.execute("INSERT INTO accounts (id, currency, overdraft_limit)"
                       " VALUES ('@world:USD', 'USD', NULL), ('eur_1', 'EUR', 0)")
    await conn.execute("UPDATE accounts SET status = 'locked' WHERE id IN ('acc_7', 'acc_70')")
    # Metadata on 1 account in 10: a reference of its own and one of two tiers.
    await conn.execute("UPDATE accounts SET metadata = jsonb_build_object('ref', 'r-' || id,"
                       " 'tier', CASE WHEN length(id) % 2 = 0 THEN 'gold' ELSE 'silver' END)"
                       " WHERE id LIKE 'acc_%0'")
    # Status: 1 in 97 failed, 0.2% processing, the rest completed. Type: 1 in 10 deposit,
    # 1 in 50 withdrawal, the rest transfer. Legs: acc_(i mod n) -> acc_(7i+1 mod n).
    # Metadata on 1 journal in 20 (the rest {}): an order id of its own and one of three
    # channels (so 1 journal in 60 is channel web).
    await conn.execute(f"""
        INSERT INTO journals (external_ref, type, status, currency, payload, created_at,
                              metadata)
        SELECT 'RCP-20260101-' || lpad(i::text, 16, '0'),
               CASE WHEN i % 10 = 3 THEN 'deposit' WHEN i % 50 = 7 THEN 'withdrawal'
                    ELSE 'transfer' END,
               CASE WHEN i % 97 = 1 THEN 'failed' WHEN i % 500 = 2 THEN 'processing'
                    ELSE 'completed' END,
               'USD',
               jsonb_build_array(jsonb_build_array('acc_' || (i % {ACCOUNTS}),
                                                   'acc_' || ((7 * i + 1) % {ACCOUNTS}), 1)),
               $1::timestamptz + i * $2::interval,
               CASE WHEN i % 20 = 5 THEN jsonb_build_object(
                   'order', 'o-' || i, 'channel', (ARRAY['web', 'app', 'pos'])[i % 3 + 1])
                    ELSE '{{}}' END
        FROM generate_series(1, {JOURNALS}) i""", T0, SPACING)
    await conn.execute("""
        INSERT INTO ledgers (journal_id, account_id, direction, amount, balance_after, created_at)
        SELECT j.id, leg.a, leg.d, 1, j.id, j.created_at
        FROM journals j CROSS JOIN LATERAL (VALUES (j.payload -> 0 ->> 0, 'debit'),
                                                   (j.payload -> 0 ->> 1, 'credit')) leg(a, d)
        WHERE j.status = 'completed'""")
    await conn.execute("ANALYZE")


def walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node] + [n for child in node.get("Plans", []) for n in walk(child)]


def middle(i: int) -> dt.datetime:
    return T0 + i * SPACING


LIMIT = 100
SLACK_ROWS = int(LISTING_SLACK / SPACING)
ORDER = JOURNALS // 2 // 20 * 20 + 5  # a journal in the middle with metadata (i % 20 = 5)
# name, filter, cursor (journal id or None), the most index/heap rows a page may touch
SHAPES: list[tuple[str, TransactionFilter, int | None, int]] = [
    ("newest", TransactionFilter(), None, 2 * LIMIT),
    ("deep cursor", TransactionFilter(), JOURNALS // 2, 2 * LIMIT),
    # An account's page reads at most a page of each source (its ledger entries, and
    # journal_accounts for journals that posted nothing), then the page's journals.
    ("account", TransactionFilter(account="acc_42"), None, 3 * (LIMIT + 1)),
    ("account, deep cursor", TransactionFilter(account="acc_42"), JOURNALS // 3, 3 * (LIMIT + 1)),
    ("status completed", TransactionFilter(statuses=("completed",)), None, 2 * LIMIT),
    ("status failed", TransactionFilter(statuses=("failed",)), None, 2 * LIMIT),
    ("status processing", TransactionFilter(statuses=("processing",)), None, 2 * LIMIT),
    ("type transfer", TransactionFilter(type="transfer"), None, 3 * LIMIT),
    ("type deposit", TransactionFilter(type="deposit"), None, 2 * LIMIT),
    ("type withdrawal", TransactionFilter(type="withdrawal"), None, 2 * LIMIT),
    ("status failed, type deposit", TransactionFilter(statuses=("failed",), type="deposit"),
     None, 12 * LIMIT),
    ("since..until, in the past", TransactionFilter(since=middle(100_000), until=middle(150_000)),
     None, 2 * LIMIT + SLACK_ROWS),
    ("since..until, page 2", TransactionFilter(since=middle(100_000), until=middle(150_000)),
     140_000, 2 * LIMIT),
    # A window of 1,000 journals: the planner reads it by created_at and sorts it (top-N),
    # which it prefers while the window is estimated small; either plan is bounded.
    ("since, narrow window", TransactionFilter(since=middle(JOURNALS - 1000)), None,
     2 * LIMIT + SLACK_ROWS),
    ("until, narrow window", TransactionFilter(until=middle(1000)), None,
     2 * LIMIT + SLACK_ROWS),
    ("since, wide window", TransactionFilter(since=middle(1000)), None, 2 * LIMIT),
    ("until, wide window in the past", TransactionFilter(until=middle(200_000)), None,
     2 * LIMIT + SLACK_ROWS),
    ("account, since..until", TransactionFilter(account="acc_42", since=middle(100_000),
                                                until=middle(250_000)), None, 3 * LIMIT + 1000),
    # metadata[<key>]=<value> (migration 013's partial GIN index): an order id names one
    # journal; a channel 1 in 60, all of whose matches the bitmap reads before the top-N
    # (a GIN index has no order: the cursor filters the bitmap's rows, it does not bound it).
    ("metadata order", TransactionFilter(metadata=(("order", f"o-{ORDER}"),)), None, 2 * LIMIT),
    ("metadata order, no match", TransactionFilter(metadata=(("order", "o-1"),)), None, 2),
    ("metadata order and channel", TransactionFilter(
        metadata=(("order", f"o-{ORDER}"), ("channel", ("web", "app", "pos")[ORDER % 3]))),
     None, 2 * LIMIT),
    ("metadata order, account", TransactionFilter(
        account=f"acc_{ORDER % ACCOUNTS}", metadata=(("order", f"o-{ORDER}"),)), None,
     2 * LIMIT),
    ("metadata order, status, type", TransactionFilter(
        statuses=("completed",), type="transfer", metadata=(("order", f"o-{ORDER}"),)), None,
     2 * LIMIT),
    ("metadata channel (1 in 60)", TransactionFilter(metadata=(("channel", "web"),)), None,
     JOURNALS // 60 + 2 * LIMIT),
    ("metadata channel, deep cursor", TransactionFilter(metadata=(("channel", "web"),)),
     JOURNALS // 2, JOURNALS // 60 + 2 * LIMIT),
]


async def explain(conn: asyncpg.Connection, sql: str, args: list[Any]) -> tuple[dict[str, Any], str]:
    raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
    text = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}", *args))
    return json.loads(raw)[0], text


def check_plan(name: str, plan: dict[str, Any], budget: int, problems: list[str]) -> int:
    """Rows the page's scans touched (returned or filtered out; the one-row probes of the
    since/until bounds excluded); a Seq Scan or more than `budget` rows is a problem."""
    touched = 0
    for node in walk(plan["Plan"]):
        relation = node.get("Relation Name")
        if node["Node Type"] == "Seq Scan" and relation in PLANNED:
            problems.append(f"{name}: Seq Scan on {relation}")
        if relation in PLANNED and "Scan" in node["Node Type"] \
                and node.get("Parent Relationship") != "InitPlan":
            touched += (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
                        + node.get("Rows Removed by Index Recheck", 0)) * node["Actual Loops"]
    if touched > budget:
        problems.append(f"{name}: {touched} rows touched, more than {budget}")
    return touched


@pytest.mark.timeout(900 if JOURNALS <= 1_000_000 else 3600)
async def test_listing_plans_at_size(pg_dsn) -> None:  # type: ignore[no-untyped-def]
    conn = await asyncpg.connect(pg_dsn)
    try:
        started = time.monotonic()
        await load(conn)
        loaded_s = time.monotonic() - started
        count = await conn.fetchval("SELECT count(*) FROM journal_accounts")
        # Only journals that posted nothing when written name their accounts there (009).
        assert count == await conn.fetchval(
            "SELECT count(DISTINCT (a, id)) FROM journals, LATERAL (VALUES (payload->0->>0),"
            " (payload->0->>1)) v(a) WHERE status <> 'completed'")
        problems: list[str] = []
        report = [f"{JOURNALS} journals, {count} journal_accounts rows, loaded in {loaded_s:.1f} s"]
        for name, where, cursor, budget in SHAPES:
            sql, args = journals_query(where, LIMIT, cursor)
            plan, text = await explain(conn, sql, args)
            touched = check_plan(name, plan, budget, problems)
            report.append(f"### {name}: {touched} rows touched, "
                          f"{plan['Execution Time']:.2f} ms\n{sql}\n{text}")
        for name, (currency, status, after, metadata) in {
                "accounts": (None, None, None, ()),
                "accounts USD after acc_5": ("USD", None, "acc_5", ()),
                "accounts locked": (None, "locked", None, ()),
                "accounts EUR active": ("EUR", "active", None, ()),
                "accounts metadata ref": (None, None, None, (("ref", "r-acc_420"),)),
                "accounts USD metadata tier": ("USD", None, None, (("tier", "gold"),)),
                }.items():
            sql, args = accounts_query(currency, status, LIMIT, after, metadata)
            plan, text = await explain(conn, sql, args)
            touched = check_plan(name, plan, 2 * LIMIT, problems)
            report.append(f"### {name}: {touched} rows touched, "
                          f"{plan['Execution Time']:.2f} ms\n{sql}\n{text}")
        plan, text = await explain(conn, ACCOUNT_AT, ["acc_42", middle(123_456)])
        touched = check_plan("at", plan, 4, problems)
        report.append(f"### account at: {touched} rows touched, "
                      f"{plan['Execution Time']:.2f} ms\n{ACCOUNT_AT}\n{text}")
        print("\n\n".join(report))
        assert not problems, problems
    finally:
        await conn.close()
