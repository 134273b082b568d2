"""Pure-Python twins of the functions in _speedups.pyx: identical behaviour, always available."""

from __future__ import annotations

import datetime as dt

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Receipt code value, 80 bits = 16 Crockford characters:
#   41 bits milliseconds since EPOCH_MS | 10 bits node id | 22 bits process id | 7 bits sequence
EPOCH_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z
NODE_BITS, PID_BITS, SEQ_BITS = 10, 22, 7
SEQ_MAX = (1 << SEQ_BITS) - 1


def receipt_codes(
    node_id: int, pid: int, last_ms: int, last_seq: int, now_ms: int, count: int
) -> tuple[list[str], int, int]:
    """`count` new receipt codes and the (last_ms, last_seq) state to pass next time.

    The clock is logical: it never goes back, and when 128 codes were made in one
    millisecond it borrows the next one, so codes of one process strictly increase.
    """
    node = node_id & ((1 << NODE_BITS) - 1)
    proc = pid & ((1 << PID_BITS) - 1)
    ms, seq = last_ms, last_seq
    codes = []
    for _ in range(count):
        if now_ms > ms:
            ms, seq = now_ms, 0
        else:
            seq += 1
            if seq > SEQ_MAX:
                ms, seq = ms + 1, 0
        value = ((ms - EPOCH_MS) << 39) | (node << 29) | (proc << 7) | seq
        chars = [CROCKFORD[(value >> shift) & 31] for shift in range(75, -1, -5)]
        day = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y%m%d")
        codes.append(f"RCP-{day}-{''.join(chars)}")
    return codes, ms, seq


INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
DEBIT, CREDIT = 0, 1


def post_batch(
    balances: dict[str, int],
    floors: dict[str, int],
    tasks: list[tuple[int, list[tuple[str, str, int]]]],
) -> tuple[list[str | None], list[list[int] | list[str]]]:
    """Decide a batch of transfers in order against locked balances.

    `tasks` are (journal_id, legs) with legs (source, destination, amount); every
    account named is a key of `balances` and `floors` (the lowest balance allowed:
    -overdraft_limit, or INT64_MIN for unlimited). A task posts all its legs or
    none: it fails with "insufficient_funds" when an account it debits would end
    below its floor, or "amount_overflow" when any balance would leave int64.
    Returns one result per task (None = posted, else the error code) and the ledger
    rows of the posted tasks as columns: journal ids, account ids, directions
    (DEBIT/CREDIT), amounts, balances after. `balances` is updated in place.
    """
    results: list[str | None] = []
    journal_ids: list[int] = []
    account_ids: list[str] = []
    directions: list[int] = []
    amounts: list[int] = []
    after: list[int] = []
    for journal_id, legs in tasks:
        trial: dict[str, int] = {}
        error = None
        for source, destination, amount in legs:
            src = trial.get(source, balances[source]) - amount
            trial[source] = src
            dst = trial.get(destination, balances[destination]) + amount
            trial[destination] = dst
            if src < INT64_MIN or dst > INT64_MAX:
                error = "amount_overflow"
                break
        if error is None:
            for account, balance in trial.items():
                if balance < floors[account] and balance < balances[account]:
                    error = "insufficient_funds"
                    break
        results.append(error)
        if error is not None:
            continue
        for source, destination, amount in legs:
            balances[source] -= amount
            balances[destination] += amount
            journal_ids += (journal_id, journal_id)
            account_ids += (source, destination)
            directions += (DEBIT, CREDIT)
            amounts += (amount, amount)
            after += (balances[source], balances[destination])
    return results, [journal_ids, account_ids, directions, amounts, after]
