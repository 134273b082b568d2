"""Drive a running Kassa over HTTP with bounded concurrency (tests only; benchmarks use wrk).

aiohttp, not httpx: httpx's async connection pool serves about 300 requests/s on this
machine whatever the server does, which would make these tests measure the client.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.conftest import ADMIN_KEY, TEST_API_KEYS

SERVE_ENV = {"KASSA_API_KEYS": TEST_API_KEYS}


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]
    elapsed_s: float = 0.0


def client(url: str, connections: int = 64) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        url, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=60))


async def send(http: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Reply:
    started = time.monotonic()
    async with http.request(method, path, json=body) as r:
        if r.content_type == "application/json":
            data = await r.json()
        else:
            data = await r.text()
        return Reply(r.status, data, dict(r.headers), time.monotonic() - started)


async def drive(url: str, requests: list[tuple[str, str, Any]], concurrency: int = 50
                ) -> list[Reply | Exception]:
    """Send (method, path, json) requests with at most `concurrency` in flight; results in order."""
    results: list[Reply | Exception] = [Exception("not sent")] * len(requests)
    cursor = iter(range(len(requests)))

    async def worker(http: aiohttp.ClientSession) -> None:
        for i in cursor:
            try:
                results[i] = await send(http, *requests[i])
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                results[i] = exc

    async with client(url, concurrency) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return results


async def open_accounts(url: str, ids: list[str], balance: int, currency: str = "USD",
                        overdraft_limit: int = 0) -> None:
    async with client(url) as http:
        for account_id in ids:
            r = await send(http, "POST", "/v1/accounts", {
                "id": account_id, "currency": currency, "overdraft_limit": overdraft_limit})
            assert r.status == 201, r.body
            if balance:
                r = await send(http, "POST", "/v1/transactions?wait=true", {
                    "type": "deposit", "currency": currency, "destination": account_id,
                    "amount": balance})
                assert r.status == 201, r.body


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


def status_counts(replies: list[Reply | Exception]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in replies:
        key = str(r.status) if isinstance(r, Reply) else type(r).__name__
        counts[key] = counts.get(key, 0) + 1
    return counts


async def wait_terminal(url: str, receipts: list[str], timeout_s: float = 60) -> dict[str, str]:
    """Poll statuses until every receipt is completed or failed; returns receipt → status."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    final: dict[str, str] = {}
    async with client(url, 32) as http:
        while loop.time() < deadline:
            pending = [rc for rc in receipts if rc not in final]
            if not pending:
                return final
            replies = await asyncio.gather(*(send(http, "GET", f"/v1/transactions/{rc}/status")
                                             for rc in pending))
            for rc, r in zip(pending, replies, strict=True):
                assert r.status == 200, r.body
                if r.body["status"] in ("completed", "failed"):
                    final[rc] = r.body["status"]
            await asyncio.sleep(0.2)
    raise AssertionError(f"{len(receipts) - len(final)} receipts not terminal after {timeout_s}s")
