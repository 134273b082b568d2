"""The ledger's invariants (docs/design.md) as SQL: `kassa verify` and the tests run these.

Each check is a query that returns the rows that break one law, so an empty result is a
pass. `verify` runs them all in one READ ONLY, REPEATABLE READ transaction: every check
sees the same snapshot (a sum taken while a batch commits would otherwise disagree with
the entries counted a moment later) and nothing can be written.

Two laws hold only some time after the fact, and take a grace period in seconds as $1:
a journal left `processing` by a dead process is claimed by a sweeper once its lease
expires, and receipts are registered with the receipt service by the relay, in batches
read past its receipts cursor, after the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from server.adapters.postgres.migrate import connect

EXAMPLES_MAX = 5
GRACE_S = 60.0

_SIGNED = "CASE l.direction WHEN 'credit' THEN l.amount ELSE -l.amount END"


@dataclass(frozen=True)
class Check:
    name: str
    sql: str
    # Uses $1, a grace period in seconds.
    graced: bool = False
    # Needs the receipt service (plain gunicorn keeps no receipt records).
    receipts: bool = False


CHECKS = (
    Check("every currency's balances sum to zero",
          "SELECT currency, sum(balance) AS total FROM accounts GROUP BY currency "
          "HAVING sum(balance) <> 0"),
    Check("every balance equals the sum of its entries",
          f"SELECT a.id, a.balance, coalesce(sum({_SIGNED}), 0) AS entries FROM accounts a "
          "LEFT JOIN ledgers l ON l.account_id = a.id GROUP BY a.id, a.balance "
          f"HAVING a.balance <> coalesce(sum({_SIGNED}), 0)"),
    Check("every balance equals its last entry's balance_after",
          "SELECT a.id, a.balance, l.balance_after FROM accounts a "
          "JOIN LATERAL (SELECT balance_after FROM ledgers WHERE account_id = a.id "
          "ORDER BY id DESC LIMIT 1) l ON true WHERE a.balance <> l.balance_after"),
    Check("no balance is below -overdraft_limit",
          "SELECT id, balance, overdraft_limit FROM accounts "
          "WHERE overdraft_limit IS NOT NULL AND balance < -overdraft_limit"),
    Check("every completed journal has at least two entries, debits equal to credits",
          "SELECT j.id, j.external_ref, count(l.id) AS entries FROM journals j "
          "LEFT JOIN ledgers l ON l.journal_id = j.id WHERE j.status = 'completed' "
          "AND j.hold_expires_at IS NULL "  # a hold posts nothing; its capture does
          "GROUP BY j.id HAVING count(l.id) < 2 OR "
          "coalesce(sum(CASE l.direction WHEN 'debit' THEN l.amount ELSE 0 END), 0) <> "
          "coalesce(sum(CASE l.direction WHEN 'credit' THEN l.amount ELSE 0 END), 0)"),
    Check("every completed journal has two entries per leg (applied exactly once)",
          "SELECT j.id, j.external_ref, count(l.id) AS entries, "
          "jsonb_array_length(j.payload) AS legs FROM journals j "
          "LEFT JOIN ledgers l ON l.journal_id = j.id WHERE j.status = 'completed' "
          "AND j.hold_expires_at IS NULL "
          "GROUP BY j.id HAVING count(l.id) <> 2 * jsonb_array_length(j.payload)"),
    Check("every account's held equals the sum of its pending holds",
          "SELECT a.id, a.held, coalesce(h.total, 0) AS pending FROM accounts a LEFT JOIN "
          "(SELECT leg->>0 AS account_id, sum((leg->>2)::bigint) AS total FROM journals j, "
          "jsonb_array_elements(j.payload) leg WHERE j.status = 'held' GROUP BY 1) h "
          "ON h.account_id = a.id WHERE a.held <> coalesce(h.total, 0)"),
    Check("no available balance (balance - held) is below -overdraft_limit",
          "SELECT id, balance, held, overdraft_limit FROM accounts "
          "WHERE overdraft_limit IS NOT NULL AND balance - held < -overdraft_limit"),
    Check("every hold ended at most once, by one capture or one void",
          "SELECT h.external_ref, h.status, count(e.id) AS endings FROM journals h "
          "LEFT JOIN journals e ON e.target = h.external_ref AND e.type IN ('capture', 'void') "
          "AND e.status IN ('completed', 'voided') WHERE h.hold_expires_at IS NOT NULL "
          "AND h.status IN ('held', 'completed', 'voided') GROUP BY h.id "
          "HAVING count(e.id) <> CASE h.status WHEN 'held' THEN 0 ELSE 1 END"),
    Check("reversals add up to their original's reversed sum, never over its amount",
          "WITH r AS (SELECT rj.target, sum((leg->>2)::bigint) AS total FROM journals rj, "
          "jsonb_array_elements(rj.payload) leg WHERE rj.type = 'reversal' "
          "AND rj.status = 'completed' GROUP BY rj.target), "
          "o AS (SELECT external_ref, reversed, (SELECT sum((leg->>2)::bigint) "
          "FROM jsonb_array_elements(payload) leg) AS amount FROM journals "
          "WHERE reversed > 0 OR external_ref IN (SELECT target FROM r)) "
          "SELECT o.external_ref, o.reversed, coalesce(r.total, 0) AS reversals, o.amount "
          "FROM o LEFT JOIN r ON r.target = o.external_ref "
          "WHERE o.reversed <> coalesce(r.total, 0) OR o.reversed > o.amount"),
    # Migration 009 dropped the foreign keys of ledger entries (one statement writes an
    # entry with its journal, after reading the account): what they enforced is checked here.
    Check("every ledger entry names a journal and an account that exist",
          "SELECT l.id, l.journal_id, l.account_id FROM ledgers l "
          "WHERE NOT EXISTS (SELECT FROM journals j WHERE j.id = l.journal_id) "
          "OR NOT EXISTS (SELECT FROM accounts a WHERE a.id = l.account_id)"),
    Check("no failed or unfinished journal has entries",
          "SELECT j.id, j.external_ref, j.status, count(*) AS entries FROM journals j "
          "JOIN ledgers l ON l.journal_id = j.id WHERE j.status <> 'completed' GROUP BY j.id"),
    # The journal row is the outbox (migration 010): the statement that finishes a
    # journal marks its event due, and the relay publishes the marked journals past its
    # cursor. Whether the broker has them is read by consuming the topic (the event tests).
    Check("every finished journal has its event marked",
          "SELECT id, external_ref, status FROM journals "
          "WHERE status <> 'processing' AND event_xid IS NULL"),
    Check("no unfinished journal has its event marked",
          "SELECT id, external_ref, event_xid::text AS event_xid FROM journals "
          "WHERE status = 'processing' AND event_xid IS NOT NULL"),
    Check("every relay cursor is in place",
          "SELECT s.sink FROM (VALUES ('kafka'), ('receipts'), ('webhooks')) AS s(sink) "
          "LEFT JOIN journal_cursors c ON c.sink = s.sink WHERE c.sink IS NULL"),
    # The webhooks sink creates a journal's deliveries in the transaction that moves its
    # cursor past it (migration 014): one per endpoint, about a journal that exists.
    Check("every webhook delivery is about a journal that exists, with its receipt code",
          "SELECT d.id, d.journal_id, d.receipt_code FROM webhook_deliveries d "
          "LEFT JOIN journals j ON j.id = d.journal_id "
          "WHERE j.external_ref IS DISTINCT FROM d.receipt_code"),
    Check("no journal has two deliveries to one webhook endpoint",
          "SELECT endpoint_id, journal_id, count(*) AS deliveries FROM webhook_deliveries "
          "GROUP BY endpoint_id, journal_id HAVING count(*) > 1"),
    # Transaction ids of another cluster (a logical restore): the relay would skip every
    # newer journal. docs/operations.md, Backups, says how to renumber them.
    Check("no relay cursor or event mark is ahead of this cluster's transaction ids",
          "SELECT 'cursor' AS what, sink AS name, xid::text AS xid FROM journal_cursors "
          "WHERE xid >= pg_snapshot_xmax(pg_current_snapshot()) UNION ALL "
          "SELECT 'journal', external_ref, event_xid::text FROM journals "
          "WHERE event_xid >= pg_snapshot_xmax(pg_current_snapshot())"),
    # A NULL lease would never be claimed by the sweeper (lease_expires_at < now()).
    Check("no journal is unfinished past its lease (plus grace)",
          "SELECT id, external_ref, lease_owner, lease_expires_at FROM journals "
          "WHERE status = 'processing' AND (lease_expires_at IS NULL "
          "OR lease_expires_at < now() - make_interval(secs => $1))",
          graced=True),
    Check("every journal finished before the grace has its receipt registered, same status",
          "SELECT j.id, j.external_ref, j.status, r.status AS receipt_status FROM journals j "
          "LEFT JOIN receipts r ON r.code = j.external_ref "
          "WHERE j.status IN ('completed', 'failed', 'held', 'voided') "
          "AND j.completed_at < now() - make_interval(secs => $1) "
          "AND r.status IS DISTINCT FROM j.status",
          graced=True, receipts=True),
)

NOT_CHECKED: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    name: str
    count: int
    examples: list[tuple[object, ...]]
    columns: tuple[str, ...] = ()

    def example_lines(self) -> list[str]:
        return [", ".join(f"{c}={v}" for c, v in zip(self.columns, row, strict=True))
                for row in self.examples]


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.count == 0 for r in self.results)

    def violations(self) -> dict[str, list[tuple[object, ...]]]:
        return {r.name: r.examples for r in self.results if r.count}

    def lines(self) -> list[str]:
        """One line per check (OK or the count), each violation's examples under it."""
        out = []
        for r in self.results:
            out.append(f"{'OK' if not r.count else f'{r.count} VIOLATIONS':>14}  {r.name}")
            out.extend(f"{'':>16}e.g. {example}" for example in r.example_lines())
        out.extend(f"{'SKIPPED':>14}  {line}" for line in self.skipped)
        bad = sum(1 for r in self.results if r.count)
        out.append(f"{len(self.results)} checks, {bad} violated" if bad
                   else f"{len(self.results)} checks, all OK")
        return out


async def verify(dsn: str, *, grace_s: float = GRACE_S, receipts: bool = True,
                 connect_timeout_s: float = 60.0) -> Report:
    """Run the checks on the database at `dsn` in one read-only snapshot. With
    `receipts=False` the receipt-registration check is skipped (no receipt service).
    Raises DatabaseUnreachable (one line) when no connection can be made."""
    conn = await connect(dsn, connect_timeout_s)
    try:
        return await verify_on(conn, grace_s=grace_s, receipts=receipts)
    finally:
        await conn.close()


async def verify_on(conn: asyncpg.Connection, *, grace_s: float = GRACE_S,
                    receipts: bool = True) -> Report:
    report = Report(skipped=list(NOT_CHECKED))
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for check in CHECKS:
            if check.receipts and not receipts:
                report.skipped.append(f"{check.name}: not asked for")
                continue
            report.results.append(await _run(conn, check, grace_s))
    return report


async def _run(conn: asyncpg.Connection, check: Check, grace_s: float) -> Result:
    # One scan per check: the first few rows and, beside each, how many there are.
    sql = (f"SELECT v.*, count(*) OVER () AS violations_total FROM ({check.sql}) v "
           f"LIMIT {EXAMPLES_MAX}")
    rows = await (conn.fetch(sql, grace_s) if check.graced else conn.fetch(sql))
    if not rows:
        return Result(check.name, 0, [])
    columns = tuple(rows[0].keys())[:-1]
    return Result(check.name, int(rows[0]["violations_total"]),
                  [tuple(row.values())[:-1] for row in rows], columns)
