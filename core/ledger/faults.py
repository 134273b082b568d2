"""Which account a money error is about: native.post_batch says only what failed
(`insufficient_funds`, `amount_overflow`), for speed; a failed transaction's error names
the account at fault (its `param`), found here by deciding its legs again the same way.

Only failures pay for this: a batch without a money error costs one `any()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.ledger.models import AccountSnapshot
from core.ledger.money import INT64_MAX, INT64_MIN, floors_of

Legs = Sequence[tuple[Any, ...]]  # (source, destination, amount)


def fault_of(code: str, legs: Legs, balances: Mapping[str, int], floors: Mapping[str, int]
             ) -> str | None:
    """The account native.post_batch refused these legs for, against these balances (as
    they stood when it decided them): the first whose balance leaves int64 for
    `amount_overflow`, the first left below its floor for `insufficient_funds`."""
    trial: dict[str, int] = {}
    for source, destination, amount in legs:
        trial[source] = src = trial.get(source, balances[source]) - amount
        trial[destination] = dst = trial.get(destination, balances[destination]) + amount
        if code == "amount_overflow" and (src < INT64_MIN or dst > INT64_MAX):
            return str(source if src < INT64_MIN else destination)
    for account, balance in trial.items():
        if balance < floors[account] and balance < balances[account]:
            return str(account)
    return None


def money_faults(accounts: Mapping[str, AccountSnapshot], tasks: Sequence[tuple[int, Legs]],
                 results: list[str | None]) -> list[str | None]:
    """The account at fault of each task native.post_batch refused (None for the posted
    ones): the batch replayed from the locked balances, posting what it posted."""
    if not any(results):
        return [None] * len(results)
    balances = {a.id: a.balance for a in accounts.values()}
    floors = floors_of(accounts)
    faults: list[str | None] = []
    for (_, legs), code in zip(tasks, results, strict=True):
        if code is not None:
            faults.append(fault_of(code, legs, balances, floors))
            continue
        faults.append(None)
        for source, destination, amount in legs:
            balances[source] -= amount
            balances[destination] += amount
    return faults
