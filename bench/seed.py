"""10,000 funded accounts: rows inserted with SQL, money moved only through the API.

`POST /v1/accounts` is one commit per account and measured about 145 accounts/s here
(70 s for 10,000), too slow for a 2-minute quick run, so the rows are inserted directly
(balance 0, no ledger entries: consistent). The money then goes through the ledger the
normal way, so every balance equals its entries: one deposit to the first account, then
transfers of 64 legs each from it to the others (160 journals instead of 10,000 deposits,
which would all lock `@world:USD` one after the other).
"""

from __future__ import annotations

import time

import asyncpg
import httpx

ACCOUNT_PREFIX = "bench_"
ACCOUNTS = 10_000
CURRENCY = "USD"
# Large enough that random transfers of 1..100 cents (bench/wrk/common.lua) never run dry,
# even on the hot accounts: the scenarios measure the ledger, not insufficient_funds.
OPENING_BALANCE = 1_000_000_000
LEGS_MAX = 64  # docs/api.md: 1 to 64 legs per transfer


class SeedError(RuntimeError):
    pass


def account_id(n: int) -> str:
    return f"{ACCOUNT_PREFIX}{n}"


async def insert_accounts(dsn: str, count: int) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        # The system account as `POST /v1/accounts` makes it: unlimited overdraft.
        await conn.execute(
            "INSERT INTO accounts (id, currency, overdraft_limit) VALUES ($1, $2, NULL) "
            "ON CONFLICT (id) DO NOTHING", f"@world:{CURRENCY}", CURRENCY)
        # ON CONFLICT: a --database-url reused from an earlier run already has them.
        status = await conn.execute(
            "INSERT INTO accounts (id, currency, overdraft_limit) "
            "SELECT id, $2, 0 FROM unnest($1::text[]) AS id ON CONFLICT (id) DO NOTHING",
            [account_id(n) for n in range(count)], CURRENCY)
        return int(status.split()[-1])
    finally:
        await conn.close()


def funding_transfers(count: int) -> list[dict[str, object]]:
    others = [account_id(n) for n in range(1, count)]
    return [{"type": "transfer", "currency": CURRENCY,
             "legs": [{"source": account_id(0), "destination": dest, "amount": OPENING_BALANCE}
                      for dest in others[i:i + LEGS_MAX]]}
            for i in range(0, len(others), LEGS_MAX)]


async def post_sync(http: httpx.AsyncClient, path: str, body: dict[str, object]) -> httpx.Response:
    r = await http.post(path, json=body)
    if r.status_code != 201:
        raise SeedError(f"POST {path}: {r.status_code} {r.text[:300]}")
    return r


async def fund_accounts(url: str, api_key: str, count: int) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {api_key}"},
                                 timeout=120) as http:
        await post_sync(http, "/v1/transactions?wait=true", {
            "type": "deposit", "currency": CURRENCY, "destination": account_id(0),
            "amount": OPENING_BALANCE * count})
        r = await post_sync(http, "/v1/transactions/batch?wait=true",
                            {"transactions": funding_transfers(count)})
        bad = [res for res in r.json()["results"] if res.get("status") != "completed"]
        if bad:
            raise SeedError(f"{len(bad)} funding transfers not completed: {bad[0]}")


async def check_funded(dsn: str, count: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        poor = await conn.fetchval(
            "SELECT count(*) FROM accounts WHERE id = ANY($1::text[]) AND balance < $2",
            [account_id(n) for n in range(count)], OPENING_BALANCE)
    finally:
        await conn.close()
    if poor:
        raise SeedError(f"{poor} accounts hold less than {OPENING_BALANCE} after funding")


async def seed(url: str, api_key: str, dsn: str, count: int = ACCOUNTS) -> dict[str, float]:
    started = time.monotonic()
    inserted = await insert_accounts(dsn, count)
    inserted_s = time.monotonic() - started
    await fund_accounts(url, api_key, count)
    await check_funded(dsn, count)
    return {"accounts": count, "inserted": inserted, "insert_s": round(inserted_s, 2),
            "total_s": round(time.monotonic() - started, 2)}
