"""The DESIGN.md invariants, checked with SQL against the real database."""

from __future__ import annotations

import asyncpg

CHECKS = {
    "a currency's balances do not sum to zero":
        "SELECT currency, sum(balance) FROM accounts GROUP BY currency HAVING sum(balance) <> 0",
    "a balance is below -overdraft_limit":
        "SELECT id, balance FROM accounts WHERE overdraft_limit IS NOT NULL "
        "AND balance < -overdraft_limit",
    "a balance differs from the sum of its entries":
        "SELECT a.id, a.balance, coalesce(sum(CASE l.direction WHEN 'credit' THEN l.amount "
        "ELSE -l.amount END), 0) AS total FROM accounts a LEFT JOIN ledgers l ON l.account_id = a.id "
        "GROUP BY a.id, a.balance HAVING a.balance <> coalesce(sum(CASE l.direction WHEN 'credit' "
        "THEN l.amount ELSE -l.amount END), 0)",
    "a completed journal has fewer than two entries or unbalanced entries":
        "SELECT j.id FROM journals j LEFT JOIN ledgers l ON l.journal_id = j.id "
        "WHERE j.status = 'completed' GROUP BY j.id HAVING count(l.id) < 2 OR "
        "sum(CASE l.direction WHEN 'debit' THEN l.amount ELSE 0 END) <> "
        "sum(CASE l.direction WHEN 'credit' THEN l.amount ELSE 0 END)",
    "a failed or unfinished journal has entries":
        "SELECT DISTINCT j.id FROM journals j JOIN ledgers l ON l.journal_id = j.id "
        "WHERE j.status <> 'completed'",
    # No check of "one outbox event per finished journal": the relay deletes an event
    # once the broker has it (and outbox.journal_id is UNIQUE); the event tests consume
    # the topic to check that every finished journal was delivered.
    "a completed journal was applied other than exactly once (entries != 2 per leg)":
        "SELECT j.id FROM journals j LEFT JOIN ledgers l ON l.journal_id = j.id "
        "WHERE j.status = 'completed' GROUP BY j.id, j.payload "
        "HAVING count(l.id) <> 2 * jsonb_array_length(j.payload)",
    "an unfinished journal has an outbox event":
        "SELECT j.id FROM journals j JOIN outbox o ON o.journal_id = j.id WHERE j.status = 'processing'",
}


async def violations(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        found = {}
        for name, sql in CHECKS.items():
            rows = await conn.fetch(sql)
            if rows:
                found[name] = [tuple(r) for r in rows[:5]]
        return found
    finally:
        await conn.close()


async def assert_invariants(dsn: str) -> None:
    found = await violations(dsn)
    assert not found, f"invariants broken: {found}"


async def unfinished(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM journals WHERE status = 'processing'"))
    finally:
        await conn.close()
