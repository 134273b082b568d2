"""Drive a running Kassa over HTTP with bounded concurrency (tests only; benchmarks use wrk)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import httpx

from tests.conftest import ADMIN_KEY, TEST_API_KEYS

SERVE_ENV = {"KASSA_API_KEYS": TEST_API_KEYS}


@dataclass
class Reply:
    status: int
    body: Any


def client(url: str, connections: int = 64) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                             timeout=60, limits=httpx.Limits(max_connections=connections))


async def drive(url: str, requests: list[tuple[str, str, Any]], concurrency: int = 50) -> list[Reply | Exception]:
    """Send (method, path, json) requests with at most `concurrency` in flight, in order of results."""
    results: list[Reply | Exception] = [Exception("not sent")] * len(requests)
    cursor = iter(range(len(requests)))

    async def worker(http: httpx.AsyncClient) -> None:
        for i in cursor:
            method, path, body = requests[i]
            try:
                r = await http.request(method, path, json=body)
                results[i] = Reply(r.status_code, r.json() if r.content else None)
            except (httpx.HTTPError, ValueError) as exc:
                results[i] = exc

    async with client(url, concurrency) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return results


async def open_accounts(url: str, ids: list[str], balance: int, currency: str = "USD",
                        overdraft_limit: int = 0) -> None:
    async with client(url) as http:
        for account_id in ids:
            r = await http.post("/v1/accounts", json={"id": account_id, "currency": currency,
                                                     "overdraft_limit": overdraft_limit})
            assert r.status_code == 201, r.text
            if balance:
                r = await http.post("/v1/transactions?wait=true", json={
                    "type": "deposit", "currency": currency, "destination": account_id,
                    "amount": balance})
                assert r.status_code == 201, r.text


def random_transfers(ids: list[str], n: int, amount_max: int, *, seed: int = 7,
                     wait: bool = False) -> list[tuple[str, str, Any]]:
    rng = random.Random(seed)
    path = "/v1/transactions?wait=true" if wait else "/v1/transactions"
    out = []
    for _ in range(n):
        source, destination = rng.sample(ids, 2)
        out.append(("POST", path, {"type": "transfer", "currency": "USD", "source": source,
                                   "destination": destination,
                                   "amount": rng.randint(1, amount_max)}))
    return out


async def wait_terminal(url: str, receipts: list[str], timeout_s: float = 60) -> dict[str, str]:
    """Poll statuses until every receipt is completed or failed; returns receipt → status."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    final: dict[str, str] = {}
    async with client(url) as http:
        while loop.time() < deadline:
            pending = [rc for rc in receipts if rc not in final]
            if not pending:
                return final
            for rc in pending:
                r = await http.get(f"/v1/transactions/{rc}/status")
                assert r.status_code == 200, r.text
                if r.json()["status"] in ("completed", "failed"):
                    final[rc] = r.json()["status"]
            await asyncio.sleep(0.2)
    raise AssertionError(f"{len(receipts) - len(final)} receipts not terminal after {timeout_s}s")
