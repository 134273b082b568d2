"""Pure-Python twins of the functions in _speedups.pyx: identical behaviour, always available."""

from __future__ import annotations

import datetime as dt

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# A receipt code is `RCP-YYYYMMDD-` and its 80-bit value as 16 Crockford characters. The
# top bit tells the two layouts apart, so a code of one can never equal a code of the other:
#
#   process layout (receipt_codes: plain gunicorn, and every code made before blocks):
#     0 | 40 bits ms since EPOCH_MS | 10 bits node id | 22 bits process id | 7 bits sequence
#   block layout (block_codes: blocks reserved from the receipt service):
#     1 | 63 bits block number | 16 bits offset in the block
#
# The process layout had 41 bits of milliseconds; its top one is 0 for every instant from
# EPOCH_MS until 2054-11-03, so codes made with it so far have bit 79 clear, and it is now
# kept clear (the ms field wraps in 2054: still unique, as the date differs).
EPOCH_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z
NODE_BITS, PID_BITS, SEQ_BITS = 10, 22, 7
SEQ_MAX = (1 << SEQ_BITS) - 1
VALUE_BITS = 80
BLOCK_FLAG = 1 << (VALUE_BITS - 1)
BLOCK_OFFSET_BITS = 16
BLOCK_SPAN = 1 << BLOCK_OFFSET_BITS  # codes per block number
BLOCK_NO_MAX = (1 << (VALUE_BITS - 1 - BLOCK_OFFSET_BITS)) - 1  # PostgreSQL's bigint max
MS_PER_DAY = 86_400_000
UNIX_EPOCH_DATE = dt.date(1970, 1, 1)


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
        value = (((ms - EPOCH_MS) << 39) | (node << 29) | (proc << 7) | seq) & ~BLOCK_FLAG
        day = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y%m%d")
        codes.append(f"RCP-{day}-{_crockford(value)}")
    return codes, ms, seq


def block_codes(block_no: int, first: int, count: int, now_ms: int) -> list[str]:
    """The codes at offsets `first` to `first + count - 1` of block `block_no`, dated with
    the UTC day of `now_ms` (when they are handed out).

    Raises ValueError unless 0 <= block_no <= BLOCK_NO_MAX and the offsets lie in
    0..BLOCK_SPAN - 1; OverflowError when the day is outside years 1 to 9999.
    """
    if not (0 <= block_no <= BLOCK_NO_MAX and 0 <= first and 0 <= count
            and first + count <= BLOCK_SPAN):
        raise ValueError(f"no offsets {first}+{count} in block {block_no}")
    day = (UNIX_EPOCH_DATE + dt.timedelta(days=now_ms // MS_PER_DAY)).strftime("%Y%m%d")
    base = BLOCK_FLAG | (block_no << BLOCK_OFFSET_BITS)
    return [f"RCP-{day}-{_crockford(base | offset)}" for offset in range(first, first + count)]


def _crockford(value: int) -> str:
    """Bits 0..79 of `value` as 16 Crockford base32 characters, most significant first."""
    return "".join([CROCKFORD[(value >> shift) & 31] for shift in range(75, -1, -5)])


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
