"""A rolling upgrade under load (docs/operations.md, "A rolling upgrade"): two
instances of the previous release on one database, behind a client-side balancer; the new
release's `kassa migrate` runs while they serve, then each instance in turn is taken out of
the balancer, stopped with SIGTERM and started again from the new release. Meanwhile
`--clients` clients post transfers with `?wait=true`, each with an Idempotency-Key.

Run as `python -m bench.rolling_upgrade [--previous d3f739a]` from the repository root
(about 2 minutes). The previous release is that commit's files (`git archive`, the same as a
`git worktree add`, without touching this repository) under /tmp, extracted once with this
checkout's compiled native/ modules (native/ has not changed since), run by
a wrapper script with this venv's python and PYTHONPATH on that checkout, as bench's
`--kassa-bin` runs another build; the new release is this checkout, run the same way.
PostgreSQL and Redis are shared (started here); each instance embeds its own broker and
gRPC services.

It fails (exit 1) on any 5xx, on a request that never got an answer from either instance
(a transport error is retried with the same Idempotency-Key on the other one, as a
balancer would, and counted), on an answered transfer missing from the journals or not
completed, and when `kassa verify` (new release) is not clean.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

from tests.fixtures.kassa_server import KassaProcess, start_kassa
from tests.fixtures.servers import start_postgres, start_redis

ROOT = Path(__file__).resolve().parents[1]
KEY = "upgrade-admin"
ACCOUNTS = 20
READY_TIMEOUT_S = 120.0


def build(checkout: Path, commit: str | None) -> Path:
    """The wrapper script that runs `kassa` from `checkout` (the files of `commit`,
    extracted first when given and missing) with this venv's python."""
    if commit is not None and not (checkout / "server").exists():
        # The commit's files (as a worktree has them), without touching this repository.
        checkout.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive, check=True)
        for module in (ROOT / "native").glob("*.so"):
            shutil.copy2(module, checkout / "native" / module.name)
    wrapper = checkout / "build" / "kassa-upgrade"  # build/ is ignored by git
    wrapper.parent.mkdir(exist_ok=True)
    # PYTHONSAFEPATH: `python -m` would put the working directory first on sys.path (and
    # another checkout's server package with it); the children inherit both variables.
    wrapper.write_text(f"#!/bin/sh\nexport PYTHONPATH={checkout} PYTHONSAFEPATH=1\n"
                       f"exec {sys.executable} -m server.process.cli \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


@dataclass
class Balancer:
    """The instances taking requests; one is taken out before it is stopped."""

    urls: list[str]
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    def client(self, url: str) -> httpx.AsyncClient:
        if url not in self.clients:
            self.clients[url] = httpx.AsyncClient(
                base_url=url, timeout=30, headers={"Authorization": f"Bearer {KEY}"})
        return self.clients[url]

    def pick(self, avoid: str | None = None) -> str:
        choices = [u for u in self.urls if u != avoid] or self.urls
        return random.choice(choices)


@dataclass
class Tally:
    answered: dict[str, int] = field(default_factory=dict)  # Idempotency-Key -> status
    latencies_ms: list[float] = field(default_factory=list)
    transport_retries: int = 0
    unanswered: list[str] = field(default_factory=list)


async def client_loop(n: int, balancer: Balancer, tally: Tally, stop: asyncio.Event) -> None:
    for count in itertools.count():
        if stop.is_set():
            return
        key = f"upgrade-{n}-{count}"
        source, destination = random.sample(range(ACCOUNTS), 2)
        body = {"type": "transfer", "currency": "USD", "source": f"ru_{source}",
                "destination": f"ru_{destination}", "amount": random.randint(1, 100)}
        started, url = time.monotonic(), balancer.pick()
        for _attempt in range(20):
            try:
                r = await balancer.client(url).post(
                    "/v1/transactions?wait=true", json=body, headers={"Idempotency-Key": key})
                tally.answered[key] = r.status_code
                break
            except httpx.TransportError:
                tally.transport_retries += 1
                url = balancer.pick(avoid=url)
                await asyncio.sleep(0.05)
        else:
            tally.unanswered.append(key)
        tally.latencies_ms.append((time.monotonic() - started) * 1000)


async def setup_accounts(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 headers={"Authorization": f"Bearer {KEY}"}) as http:
        for i in range(ACCOUNTS):
            r = await http.post("/v1/accounts", json={"id": f"ru_{i}", "currency": "USD"})
            assert r.status_code in (201, 409), r.text
            r = await http.post("/v1/transactions?wait=true", json={
                "type": "deposit", "currency": "USD", "destination": f"ru_{i}", "amount": 10**9},
                headers={"Idempotency-Key": f"fund-{i}"})
            assert r.status_code in (200, 201), r.text


@dataclass
class Upgrade:
    """The cluster and the timeline of what was done to it."""

    env: dict[str, str]
    previous: Path
    current: Path
    instances: list[KassaProcess] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)

    def note(self, what: str) -> None:
        self.events.append((round(time.monotonic() - self.began, 1), what))
        print(f"[{self.events[-1][0]:6.1f} s] {what}", flush=True)

    def start(self, kassa: Path, label: str) -> KassaProcess:
        data_dir = Path(tempfile.mkdtemp(prefix=f"kassa-upgrade-{label}-", dir="/tmp"))
        server = start_kassa(self.env, workers=1, data_dir=data_dir, kassa=kassa,
                             cwd=kassa.parent.parent, timeout_s=READY_TIMEOUT_S)
        self.note(f"{label} ready on port {server.port}")
        return server

    async def replace(self, index: int, balancer: Balancer, label: str) -> None:
        old = self.instances[index]
        balancer.urls.remove(old.url)  # out of the balancer first, as a health check would
        self.note(f"{label}: out of the balancer, SIGTERM")
        code = await asyncio.to_thread(old.stop)
        self.note(f"{label}: previous release exited with {code}")
        new = await asyncio.to_thread(self.start, self.current, f"{label} (new release)")
        self.instances[index] = new
        balancer.urls.append(new.url)


def kassa_command(kassa: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("KASSA_")} | env
    return subprocess.run([str(kassa), *args], env=full, capture_output=True, text=True,
                          timeout=600, cwd=kassa.parent.parent)


async def run(up: Upgrade, settle_s: float, clients: int) -> Tally:
    up.instances = [await asyncio.to_thread(up.start, up.previous, name) for name in "AB"]
    await setup_accounts(up.instances[0].url)
    balancer, tally, stop = Balancer([s.url for s in up.instances]), Tally(), asyncio.Event()
    load = [asyncio.create_task(client_loop(n, balancer, tally, stop)) for n in range(clients)]
    up.note(f"load started: {clients} clients")
    await asyncio.sleep(settle_s)
    migrated = await asyncio.to_thread(kassa_command, up.current, up.env, "migrate")
    up.note(f"new release's kassa migrate: exit {migrated.returncode}: "
            f"{(migrated.stdout + migrated.stderr).strip()}")
    await asyncio.sleep(settle_s)
    for index, label in enumerate("AB"):
        await up.replace(index, balancer, label)
        await asyncio.sleep(settle_s)
    stop.set()
    await asyncio.gather(*load)
    up.note("load stopped")
    for client in balancer.clients.values():
        await client.aclose()
    return tally


async def lost(dsn: str, tally: Tally) -> list[str]:
    """Answered 2xx but not a completed journal: a lost request."""
    ok = [k for k, status in tally.answered.items() if 200 <= status < 300]
    conn = await asyncpg.connect(dsn)
    try:
        found = {r["idempotency_key"] for r in await conn.fetch(
            "SELECT idempotency_key FROM journals WHERE idempotency_key = ANY($1) "
            "AND status = 'completed'", ok)}
    finally:
        await conn.close()
    return [k for k in ok if k not in found]


def summary(tally: Tally, missing: list[str], verify: subprocess.CompletedProcess[str],
            events: list[tuple[float, str]]) -> dict[str, object]:
    statuses: dict[str, int] = {}
    for status in tally.answered.values():
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ordered = sorted(tally.latencies_ms)
    return {"requests": len(tally.answered) + len(tally.unanswered), "statuses": statuses,
            "transport_retries": tally.transport_retries, "unanswered": len(tally.unanswered),
            "answered_2xx_not_completed": len(missing),
            "p50_ms": round(ordered[len(ordered) // 2], 1),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)], 1), "max_ms": round(ordered[-1], 1),
            "verify_exit": verify.returncode,
            "verify": [line.strip() for line in verify.stdout.splitlines()],
            "timeline": events}


def rolling_upgrade(previous_dir: Path, commit: str, *, settle_s: float,
                    clients: int) -> dict[str, object]:
    """The whole run; its figures (see summary) and `ok`."""
    previous, current = build(previous_dir, commit), build(ROOT, None)
    pg, redis = start_postgres(fsync=True), start_redis()
    dsn = pg.dsn()
    up = Upgrade({"KASSA_DATABASE_URL": dsn, "KASSA_REDIS_URL": redis.url,
                  "KASSA_API_KEYS": f"{KEY}:admin"}, previous, current)
    try:
        tally = asyncio.run(run(up, settle_s, clients))
        missing = asyncio.run(lost(dsn, tally))
        verify = kassa_command(current, up.env, "verify", "--grace-s", "5")
        status = kassa_command(current, up.env, "migrate", "--status").stdout.splitlines()
    finally:
        for server in up.instances:
            server.stop()
        redis.stop()
        pg.stop()
    result = summary(tally, missing, verify, up.events) | {"migrate_status": status}
    result["ok"] = not (any(int(s) >= 500 for s in tally.answered.values())
                        or tally.unanswered or missing or verify.returncode != 0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--previous", default="d3f739a", help="the previous release's commit")
    parser.add_argument("--previous-dir", default="/tmp/prev", type=Path,
                        help="where its files are (extracted there first when missing)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--settle-s", type=float, default=10.0,
                        help="load alone between the steps")
    parser.add_argument("--output", help="the JSON results (default bench/results/<date>-...)")
    args = parser.parse_args()
    result = rolling_upgrade(args.previous_dir, args.previous, settle_s=args.settle_s,
                             clients=args.clients)
    print(json.dumps({k: v for k, v in result.items() if k not in ("timeline", "verify")},
                     indent=2))
    out = Path(args.output or f"bench/results/{datetime.now(UTC):%Y-%m-%d}-rolling-upgrade.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    raise SystemExit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
