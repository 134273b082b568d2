"""The per-process account cache: an LRU of snapshots, kept current by this process's commits.

Pure logic with an injected monotonic clock; server/adapters/redis/account_cache.py puts the
database and the cross-process invalidation around it. The cache only serves
pre-validation, an early reject: the executor decides again under row locks, so a stale
entry costs at most a wrong early answer, never a wrong balance.

An entry mixes two kinds of data. Facts (existence, currency, status, overdraft limit,
contact) change only by account admin, which drops the entry here and in every process.
The balance changes with every commit: `set_balances` writes the balances a committed
batch of this process left (a dict update, no I/O), while commits of other processes are
seen only when the entry expires. So a cached balance may be stale both ways, and the
caller must read again before refusing on funds (TransactionService does). A read begun
before a commit may also store the older balance after `set_balances`: one more way to be
stale, handled the same way. A balance update keeps the entry's expiry: the TTL also
bounds how long facts may live when an invalidation was lost.

The hard part is a read racing an invalidation: a request reads an account below this
tier, an admin change elsewhere invalidates it, and then the request stores what it read,
which is already stale. Every drop therefore advances an epoch and leaves a tombstone
(account id → epoch of its last drop); a read notes the epoch before it starts and
`put_many` refuses any account dropped since. The tombstones are bounded: forgetting one
raises `_floor`, and reads older than the floor store nothing (too old to know whether
they missed a drop).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import msgspec

from core.ledger.models import AccountSnapshot


@dataclass
class CacheStats:
    """Lookups counted per account id: `refreshes` are reads past the cache before a refusal."""

    hits: int = 0
    misses: int = 0
    refreshes: int = 0
    balance_updates: int = 0  # cached balances set by this process's commits

    @property
    def hit_rate(self) -> float:
        """Lookups answered by the cache / all lookups (refreshes count as lookups)."""
        lookups = self.hits + self.misses + self.refreshes
        return self.hits / lookups if lookups else 0.0


class LocalAccountCache:
    def __init__(self, *, size_max: int, ttl_ms: float, tombstones_max: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert size_max >= 1 and ttl_ms > 0
        self._size_max = size_max
        self._ttl_s = ttl_ms / 1000
        self._tombstones_max = tombstones_max or max(size_max, 1024)
        self._clock = clock
        self._entries: OrderedDict[str, tuple[AccountSnapshot, float]] = OrderedDict()
        self._dropped: OrderedDict[str, int] = OrderedDict()  # id → epoch of its last drop
        self._epoch = 0
        self._floor = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, account_id: object) -> bool:
        return account_id in self._entries

    @property
    def epoch(self) -> int:
        """Note this before reading below the cache; pass it to `put_many` after."""
        return self._epoch

    def get_many(self, account_ids: Iterable[str]) -> tuple[dict[str, AccountSnapshot], list[str]]:
        """(the fresh entries found, the ids missing or expired)."""
        now = self._clock()
        found: dict[str, AccountSnapshot] = {}
        missing: list[str] = []
        for account_id in account_ids:
            entry = self._entries.get(account_id)
            if entry is None or entry[1] <= now:
                if entry is not None:
                    del self._entries[account_id]
                missing.append(account_id)
                continue
            self._entries.move_to_end(account_id)
            found[account_id] = entry[0]
        return found, missing

    def put_many(self, snapshots: Iterable[AccountSnapshot], read_epoch: int) -> list[AccountSnapshot]:
        """Store what a read begun at `read_epoch` found; returns what was stored.

        An account dropped since the read began is not stored: the read may predate
        the change that dropped it.
        """
        if read_epoch < self._floor:
            return []
        expires_at = self._clock() + self._ttl_s
        stored = []
        for snapshot in snapshots:
            if self._dropped.get(snapshot.id, -1) > read_epoch:
                continue
            self._entries[snapshot.id] = (snapshot, expires_at)
            self._entries.move_to_end(snapshot.id)
            stored.append(snapshot)
        while len(self._entries) > self._size_max:
            self._entries.popitem(last=False)
        return stored

    def set_balances(self, balances: Mapping[str, int]) -> int:
        """Set the balances of the cached accounts among these; returns how many changed.

        Only the balance: an entry dropped by admin stays dropped, and a change of facts
        never rides on a balance update. Accounts not cached are not added (their facts
        would have to come from a read that `put_many` can check against drops).
        """
        changed = 0
        for account_id, balance in balances.items():
            entry = self._entries.get(account_id)
            if entry is not None and entry[0].balance != balance:
                snapshot = msgspec.structs.replace(entry[0], balance=balance)
                self._entries[account_id] = (snapshot, entry[1])
                changed += 1
        return changed

    def drop(self, account_ids: Iterable[str]) -> None:
        """Forget these accounts, and refuse them from reads already under way."""
        self._epoch += 1
        for account_id in account_ids:
            self._entries.pop(account_id, None)
            self._dropped[account_id] = self._epoch
            self._dropped.move_to_end(account_id)
        while len(self._dropped) > self._tombstones_max:
            _, epoch = self._dropped.popitem(last=False)
            self._floor = max(self._floor, epoch)

    def clear(self) -> None:
        """Forget everything, and refuse everything from reads already under way."""
        self._epoch += 1
        self._floor = self._epoch
        self._entries.clear()
        self._dropped.clear()
