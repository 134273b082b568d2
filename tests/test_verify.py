"""`kassa verify`: a clean ledger passes, each kind of violation planted with SQL is found."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import asyncpg
import pytest

from server.adapters.postgres import verify as verify_module
from server.adapters.postgres.verify import CHECKS, verify
from server.process.asgi import create_app
from server.process.runtime import build_runtime
from server.services.receipts import service as receipt_service
from tests.conftest import ADMIN_KEY, make_settings
from tests.fixtures.servers import free_port
from tests.grpc_helpers import serving

pytestmark = pytest.mark.timeout(60)

# A deposit of 100 to `a`, finished two minutes ago and registered: every law holds.
CLEAN = """
INSERT INTO accounts (id, currency, balance, overdraft_limit)
VALUES ('@world:USD', 'USD', -100, NULL), ('a', 'USD', 100, 0), ('b', 'USD', 0, 0);
INSERT INTO journals (id, external_ref, type, status, currency, payload, completed_at,
                      event_xid)
OVERRIDING SYSTEM VALUE
VALUES (1, 'RCP-1', 'deposit', 'completed', 'USD', '[["@world:USD", "a", 100]]',
        now() - interval '2 minutes', pg_current_xact_id());
INSERT INTO ledgers (journal_id, account_id, direction, amount, balance_after)
VALUES (1, '@world:USD', 'debit', 100, -100), (1, 'a', 'credit', 100, 100);
INSERT INTO receipts (code, type, currency, amount, status)
VALUES ('RCP-1', 'deposit', 'USD', 100, 'completed');
"""

PROCESSING = """
INSERT INTO journals (id, external_ref, type, status, currency, payload, lease_owner,
                      lease_expires_at)
OVERRIDING SYSTEM VALUE
VALUES (2, 'RCP-2', 'transfer', 'processing', 'USD', '[["a", "b", 1]]', 'w1', {lease})
"""

# A webhook endpoint and one delivery of journal {journal} to it.
WEBHOOK = """
INSERT INTO webhook_endpoints (id, url, secret) VALUES ('wh_0', 'https://h/x', 'whsec_AA==');
INSERT INTO webhook_deliveries (endpoint_id, journal_id, receipt_code, event)
VALUES ('wh_0', {journal}, {code}, 'transaction.completed')
"""


def check_named(start: str) -> str:
    names = [c.name for c in CHECKS if c.name.startswith(start)]
    assert len(names) == 1, (start, names)
    return names[0]


PLANTED = {
    "sum": ("every currency's balances sum to zero",
            "UPDATE accounts SET balance = balance + 1 WHERE id = 'b'"),
    "entries": ("every balance equals the sum of its entries",
                "UPDATE accounts SET balance = 100 WHERE id = 'b'"),
    "last_entry": ("every balance equals its last entry's balance_after",
                   "UPDATE ledgers SET balance_after = 99 WHERE account_id = 'a'"),
    "overdraft": ("no balance is below -overdraft_limit",
                  "ALTER TABLE accounts DROP CONSTRAINT accounts_check;"
                  "ALTER TABLE accounts DROP CONSTRAINT accounts_available_floor;"
                  "UPDATE accounts SET balance = -1 WHERE id = 'b'"),
    "held": ("every account's held equals the sum of its pending holds",
             "UPDATE accounts SET held = 5 WHERE id = 'a'"),
    "available": ("no available balance",
                  "ALTER TABLE accounts DROP CONSTRAINT accounts_available_floor;"
                  "UPDATE accounts SET held = 101 WHERE id = 'a';"
                  "INSERT INTO journals (id, external_ref, type, status, currency, payload, "
                  "hold_expires_at) OVERRIDING SYSTEM VALUE VALUES (3, 'RCP-3', 'transfer', "
                  "'held', 'USD', '[[\"a\", \"b\", 101]]', now() + interval '1 day')"),
    "hold_ended_twice": ("every hold ended at most once",
                         "INSERT INTO journals (id, external_ref, type, status, currency, "
                         "payload, hold_expires_at, target) OVERRIDING SYSTEM VALUE VALUES "
                         "(3, 'RCP-3', 'transfer', 'voided', 'USD', '[[\"a\", \"b\", 5]]', "
                         "now(), NULL), (4, 'RCP-4', 'void', 'voided', 'USD', "
                         "'[[\"a\", \"b\", 5]]', NULL, 'RCP-3'), (5, 'RCP-5', 'void', "
                         "'voided', 'USD', '[[\"a\", \"b\", 5]]', NULL, 'RCP-3')"),
    "reversed_over": ("reversals add up to their original's reversed sum",
                      "UPDATE journals SET reversed = 100 WHERE id = 1"),
    "one_entry": ("every completed journal has at least two entries",
                  "DELETE FROM ledgers WHERE account_id = 'a'"),
    "unbalanced": ("every completed journal has at least two entries",
                   "UPDATE ledgers SET amount = 60 WHERE account_id = 'a'"),
    "applied_twice": ("every completed journal has two entries per leg",
                      "INSERT INTO ledgers (journal_id, account_id, direction, amount, "
                      "balance_after) SELECT journal_id, account_id, direction, amount, "
                      "balance_after FROM ledgers"),
    "orphan_entry": ("every ledger entry names a journal and an account that exist",
                     "INSERT INTO ledgers (journal_id, account_id, direction, amount, "
                     "balance_after) VALUES (999, 'nobody', 'credit', 1, 1)"),
    "failed_with_entries": ("no failed or unfinished journal has entries",
                            "UPDATE journals SET status = 'failed'"),
    "finished_unmarked": ("every finished journal has its event marked",
                          "UPDATE journals SET event_xid = NULL WHERE id = 1"),
    "unfinished_with_event": ("no unfinished journal has its event marked",
                              PROCESSING.format(lease="now() + interval '30 seconds'") + ";"
                              "UPDATE journals SET event_xid = pg_current_xact_id() "
                              "WHERE id = 2"),
    "cursor_missing": ("every relay cursor is in place",
                       "DELETE FROM journal_cursors WHERE sink = 'receipts'"),
    "webhooks_cursor_missing": ("every relay cursor is in place",
                                "DELETE FROM journal_cursors WHERE sink = 'webhooks'"),
    "delivery_orphan": ("every webhook delivery is about a journal that exists",
                        WEBHOOK.format(journal=999, code="'RCP-999'")),
    "delivery_other_code": ("every webhook delivery is about a journal that exists",
                            WEBHOOK.format(journal=1, code="'RCP-2'")),
    "delivered_twice": ("no journal has two deliveries to one webhook endpoint",
                        WEBHOOK.format(journal=1, code="'RCP-1'") + ";"
                        + WEBHOOK.format(journal=1, code="'RCP-1'").split(";", 1)[1]),
    "cursor_ahead": ("no relay cursor or event mark is ahead",
                     "UPDATE journal_cursors SET xid = '1000000000000' WHERE sink = 'kafka'"),
    "past_lease": ("no journal is unfinished past its lease",
                   PROCESSING.format(lease="now() - interval '5 minutes'")),
    "no_lease": ("no journal is unfinished past its lease", PROCESSING.format(lease="NULL")),
    "not_registered": ("every journal finished before the grace has its receipt registered",
                       "DELETE FROM receipts"),
    "registered_other_status": ("every journal finished before the grace has its receipt",
                                "UPDATE receipts SET status = 'failed'"),
}


async def planted(dsn: str, sql: str = "") -> str:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(CLEAN)
        if sql:
            await conn.execute(sql)
    finally:
        await conn.close()
    return dsn


def run_cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASSA_")}
    env["KASSA_DATABASE_URL"] = dsn
    return subprocess.run([sys.executable, "-m", "server.process.cli", "verify", *args], env=env,
                          capture_output=True, text=True, timeout=30, check=False)


async def test_a_clean_ledger_passes_every_check(pg_dsn: str) -> None:
    report = await verify(await planted(pg_dsn))
    assert report.ok, report.lines()
    assert len(report.results) == len(CHECKS)
    assert report.skipped == []


@pytest.mark.parametrize("case", sorted(PLANTED))
async def test_each_planted_violation_is_found(pg_dsn: str, case: str) -> None:
    start, sql = PLANTED[case]
    report = await verify(await planted(pg_dsn, sql))
    assert not report.ok
    name = check_named(start)
    found = report.violations()
    assert name in found, report.lines()
    assert 1 <= len(found[name]) <= 5


async def test_recent_work_is_within_the_grace(pg_dsn: str) -> None:
    # Finished a second ago and not registered yet; lease expired ten seconds ago.
    dsn = await planted(pg_dsn, "DELETE FROM receipts; UPDATE journals SET completed_at = now();"
                        + PROCESSING.format(lease="now() - interval '10 seconds'"))
    assert (await verify(dsn)).ok
    assert not (await verify(dsn, grace_s=5)).ok


async def test_receipts_check_can_be_skipped(pg_dsn: str) -> None:
    dsn = await planted(pg_dsn, "DELETE FROM receipts")
    report = await verify(dsn, receipts=False)
    assert report.ok, report.lines()
    assert any("registered" in line for line in report.skipped)


async def test_checks_run_read_only(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = await planted(pg_dsn)
    writing = verify_module.Check("a check that writes", "SELECT nextval('receipt_blocks') AS n")
    monkeypatch.setattr(verify_module, "CHECKS", (writing,))
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await verify(dsn)


async def test_cli_exits_0_on_a_clean_ledger(pg_dsn: str) -> None:
    result = run_cli(await planted(pg_dsn))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.strip().startswith("OK") for line in lines) == len(CHECKS)
    assert "all OK" in lines[-1]


async def test_cli_exits_1_and_names_each_violation(pg_dsn: str) -> None:
    dsn = await planted(pg_dsn, PLANTED["last_entry"][1] + ";" + PLANTED["past_lease"][1])
    result = run_cli(dsn)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "1 VIOLATIONS  every balance equals its last entry's balance_after" in out
    assert "e.g. id=a, balance=100, balance_after=99" in out
    assert "1 VIOLATIONS  no journal is unfinished past its lease" in out
    assert "2 violated" in out.splitlines()[-1]


def test_cli_without_a_database_url_is_a_configuration_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASSA_")}
    result = subprocess.run([sys.executable, "-m", "server.process.cli", "verify"], env=env,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "KASSA_DATABASE_URL" in result.stderr


async def test_a_ledger_after_real_traffic_passes(app_client, pg_dsn: str) -> None:  # type: ignore[no-untyped-def]
    for account in ("alice", "bob"):
        assert (await app_client.post("/v1/accounts", json={"id": account, "currency": "USD"})
                ).status_code == 201
    await app_client.post("/v1/transactions?wait=true", json={
        "type": "deposit", "currency": "USD", "destination": "alice", "amount": 500})
    for amount in (10, 20, 10**6):  # the last one fails: insufficient funds
        await app_client.post("/v1/transactions?wait=true", json={
            "type": "transfer", "currency": "USD", "legs": [
                {"source": "alice", "destination": "bob", "amount": amount},
                {"source": "bob", "destination": "alice", "amount": 1}]})
    result = run_cli(pg_dsn, "--no-receipts")
    assert result.returncode == 0, result.stdout + result.stderr


async def test_receipts_registered_by_the_receipt_service_pass(pg_dsn: str, redis_url: str) -> None:
    import httpx

    port = free_port()
    address = f"127.0.0.1:{port}"
    async with serving(receipt_service.serve(port, pg_dsn), address):
        app = create_app()
        runtime = await build_runtime(make_settings(pg_dsn, redis_url,
                                                    receipt_service_addr=address))
        app.state.runtime = runtime
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://kassa",
                                         headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
                await http.post("/v1/accounts", json={"id": "alice", "currency": "USD"})
                for amount in (5, 7):
                    r = await http.post("/v1/transactions?wait=true", json={
                        "type": "deposit", "currency": "USD", "destination": "alice",
                        "amount": amount})
                    assert r.status_code == 201
                r = await http.post("/v1/transactions?wait=true", json={
                    "type": "withdrawal", "currency": "USD", "source": "alice", "amount": 99})
                assert r.status_code == 422
            deadline = time.monotonic() + 10
            while not (report := await verify(pg_dsn, grace_s=0)).ok:
                assert time.monotonic() < deadline, report.lines()
                await asyncio.sleep(0.1)
        finally:
            await runtime.stop()
