"""The checks of a run: the invariants of `kassa verify` (server/adapters/postgres/verify.py,
the same rules, over the simulated database's state instead of SQL), and the client
history against the database and the model.

Rules of verify.py not expressed here, because the simulated database has no such thing:
event_xid marks (the commit log is the relay's feed), webhook deliveries, cursor rows and
transaction-id wraparound.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from core.ledger.status import COMPLETED, HELD, PROCESSING, VOIDED
from tests.fakes.journals import JournalRow
from tests.sim.store import Finish, SimStore

if TYPE_CHECKING:
    from tests.sim.workload import Op
    from tests.sim.world import World

LEASE_GRACE_S = 5.0


def invariants(store: SimStore, initial: dict[str, int], *, quiescent: bool) -> list[str]:
    """verify.py's rules; `quiescent`: also those that hold once everything settled."""
    rows = list(store.journals.values())
    return [*_balance_rules(store, initial), *_link_rules(store, rows),
            *(v for row in rows for v in _journal_rules(store, row, quiescent))]


def _balance_rules(store: SimStore, initial: dict[str, int]) -> list[str]:
    """Sums to zero, balances from their entries, floors."""
    out: list[str] = []
    sums: dict[str, int] = defaultdict(int)
    entries_sum: dict[str, int] = defaultdict(int)
    last_after: dict[str, int] = {}
    for finish in store.log:
        if isinstance(finish, Finish):
            for e in store.journals[finish.journal_id].entries:
                entries_sum[e.account] += e.amount if e.direction == "credit" else -e.amount
                last_after[e.account] = e.balance_after
    for a in store.accounts.values():
        sums[a.currency] += a.balance
        if a.balance != initial.get(a.id, 0) + entries_sum[a.id]:
            out.append(f"balance of {a.id} is not the sum of its entries")
        if a.id in last_after and a.balance != last_after[a.id]:
            out.append(f"balance of {a.id} is not its last entry's balance_after")
        if a.overdraft_limit is not None and a.balance - a.held < -a.overdraft_limit:
            out.append(f"available balance of {a.id} below -overdraft_limit")
    return out + [f"{c} balances sum to {t}" for c, t in sums.items() if t]


def _link_rules(store: SimStore, rows: list[JournalRow]) -> list[str]:
    """`held` from the pending holds, holds ended once, reversals within their original."""
    pending_held: dict[str, int] = defaultdict(int)
    endings: dict[str, int] = defaultdict(int)
    reversals: dict[str, int] = defaultdict(int)
    for row in rows:
        tx = row.transaction
        for leg in tx.legs if row.status == HELD else ():
            pending_held[leg.source] += leg.amount
        if tx.type in ("capture", "void") and row.status in (COMPLETED, VOIDED):
            endings[tx.target or ""] += 1
        if tx.type == "reversal" and row.status == COMPLETED:
            reversals[tx.target or ""] += tx.amount
    out = [f"held of {a.id} is {a.held}, its pending holds {pending_held[a.id]}"
           for a in store.accounts.values() if a.held != pending_held[a.id]]
    for row in rows:
        code, ended = row.receipt_code, row.status in (COMPLETED, VOIDED)  # failed: none
        if row.is_hold and endings[code] != int(ended):
            out.append(f"hold {code} ({row.status}) ended {endings[code]} times")
        if row.reversed != reversals[code] or row.reversed > row.transaction.amount:
            out.append(f"reversals of {code}: {reversals[code]}, reversed {row.reversed}, "
                       f"amount {row.transaction.amount}")
    return out


def _journal_rules(store: SimStore, row: JournalRow, quiescent: bool) -> list[str]:
    out = []
    code = row.receipt_code
    if row.status == COMPLETED and not row.is_hold:
        debits = sum(e.amount for e in row.entries if e.direction == "debit")
        credits = sum(e.amount for e in row.entries if e.direction == "credit")
        if len(row.entries) != 2 * len(row.transaction.legs) or debits != credits:
            out.append(f"completed journal {code} has entries {row.entries}")
    elif row.entries:
        out.append(f"{row.status} journal {code} has entries")
    if row.status == PROCESSING and (row.lease_expires_at is None or (
            quiescent and row.lease_expires_at < store.now - LEASE_GRACE_S)):
        out.append(f"journal {code} unfinished past its lease")
    return out


def relay_rules(world: World) -> list[str]:
    """Every finished journal published at least once, its receipt registered with the
    status it has (the receipt service keeps the furthest)."""
    store, out = world.store, []
    published = set(world.broker.published)
    for row in store.journals.values():
        if row.status == PROCESSING:
            continue
        if row.receipt_code not in published:
            out.append(f"journal {row.receipt_code} ({row.status}) never published")
        receipt = world.receipts.receipts.get(row.receipt_code)
        if receipt is None or receipt.status != row.status:
            out.append(f"receipt {row.receipt_code} registered as "
                       f"{receipt.status if receipt else None}, the journal is {row.status}")
    return out


def history(ops: list[Op], store: SimStore, decided: dict[int, str]) -> list[str]:
    """Each client operation against the journals carrying its tag (its description)."""
    by_tag: dict[str, list[int]] = defaultdict(list)
    for row in store.journals.values():
        if row.transaction.description is not None:
            by_tag[row.transaction.description].append(row.id)
    out: list[str] = []
    for op in ops:
        out += op.check([store.journals[i] for i in by_tag.get(op.tag, [])], decided,
                        store.recorded_at)
    return out


def holds_ended_in_time(store: SimStore, healed_at: float, bound_s: float) -> list[str]:
    """Once faults stopped, every hold past its deadline ends within bound_s of it."""
    ended: dict[str, float] = {}
    for finish in store.log:
        if isinstance(finish, Finish):
            row = store.journals[finish.journal_id]
            if row.transaction.type in ("capture", "void") and finish.status in (COMPLETED,
                                                                                  VOIDED):
                ended[row.transaction.target or ""] = finish.at
    out = []
    for row in store.journals.values():
        if not row.is_hold or row.hold_expires_at is None:
            continue
        due = max(row.hold_expires_at, healed_at) + bound_s
        at = ended.get(row.receipt_code)
        if (at is None and store.now > due and row.status == HELD) or (at is not None
                                                                       and at > due):
            out.append(f"hold {row.receipt_code} (deadline {row.hold_expires_at:.1f}) ended at "
                       f"{at}, after {due:.1f}")
    return out
