"""Micro-benchmark of native/: time per call of each twin and its compiled version.

Run as `python -m bench.native` (about 10 s). Inputs are the realistic shapes: batches
of 50 receipt codes, and post_batch over 1,000 accounts with 500 one-leg tasks plus
50 four-leg ones, some of which fail for insufficient funds. Last, the cost per code of
hiding codes (core/kit/code_cipher.py, pure Python everywhere; budget 2 µs a code).
"""

from __future__ import annotations

import random
import sys
import timeit

from core.kit.code_cipher import CodeCipher
from native import _py

try:
    from native import _speedups
except ImportError:
    sys.exit("native._speedups is not built: pip install -e . first")

NOW_MS = 1_767_225_600_000  # 2026-01-01


def post_batch_inputs(rng: random.Random) -> tuple[dict[str, int], dict[str, int], list]:
    accounts = [f"acc_{i:06d}" for i in range(1_000)]
    balances = {a: rng.randrange(0, 1_000_000) for a in accounts}
    floors = {a: rng.choice([0, 0, 0, -50_000, _py.INT64_MIN]) for a in accounts}

    def account() -> str:
        # Decoded from a request, not the dict's own key objects: lookups compare text.
        return rng.choice(accounts).encode().decode()

    def leg() -> tuple[str, str, int]:
        return account(), account(), rng.randrange(1, 200_000)

    tasks = [(j, [leg()]) for j in range(500)]
    tasks += [(500 + j, [leg() for _ in range(4)]) for j in range(50)]
    rng.shuffle(tasks)
    return balances, floors, tasks


def best_us(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    balances, floors, tasks = post_batch_inputs(random.Random(7))
    cases = {
        "receipt_codes (50 codes)": (
            lambda impl: lambda: impl.receipt_codes(3, 4242, NOW_MS - 1, 9, NOW_MS, 50), 2_000),
        # The copy of `balances` is in both timings; it costs about 1% of the twin's call.
        "post_batch (550 tasks)": (
            lambda impl: lambda: impl.post_batch(dict(balances), floors, tasks), 100),
    }
    print(f"{'function':28} {'twin us':>10} {'cython us':>10} {'speedup':>8}")
    for name, (make, number) in cases.items():
        twin, ext = best_us(make(_py), number), best_us(make(_speedups), number)
        print(f"{name:28} {twin:10.1f} {ext:10.1f} {twin / ext:7.1f}x")
    codes = _speedups.block_codes(123_456, 0, 1_000, NOW_MS)
    hide = CodeCipher(b"bench secret, 16 bytes or more").hide_all
    per_code = best_us(lambda: hide(codes), 200) / len(codes)
    print(f"{'CodeCipher.hide (per code)':28} {per_code:10.2f} us")


if __name__ == "__main__":
    main()
