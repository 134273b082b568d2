"""`python -m tests.sim`: run seeds, report, fail loudly on the first failing seed.

    python -m tests.sim --seeds 10000            # seeds 0..9999 on every core
    python -m tests.sim --seed 1234              # one seed, its schedule printed
    python -m tests.sim --seeds 100000 --start 10000 --ops 400   # a soak

A failing seed is run again alone with its schedule traced (every fault injected, where
and when), and printed with its violations: `make sim SEED=<seed>` reproduces it byte
for byte. The report ends with the coverage: how many seeds reached each fault at each
await point.
"""

from __future__ import annotations

import argparse
import gc
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter

from tests.sim.run import Result, describe, run_seed

CHUNK = 50
SHOWN_MAX = 20


Chunk = tuple[list[tuple[int, list[str]]], Counter[tuple[str, str]], int]


def _chunk(args: tuple[int, int, int]) -> Chunk:
    """Run seeds [start, stop): the failures, the coverage (seeds per pair), journals."""
    start, stop, ops = args
    failures, reached, journals = [], Counter[tuple[str, str]](), 0
    for seed in range(start, stop):
        result = run_seed(seed, ops)
        reached.update(set(result.reached))
        journals += result.journals
        if result.violations:
            failures.append((seed, result.violations))
    gc.collect()
    return failures, reached, journals


def _quiet() -> None:
    logging.disable(logging.WARNING)  # defects are logged at ERROR, which the run collects
    gc.disable()  # collected between chunks: the runs make much short-lived garbage


def run_many(first: int, count: int, ops: int, jobs: int) -> int:
    chunks = [(s, min(s + CHUNK, first + count), ops) for s in range(first, first + count, CHUNK)]
    started = time.monotonic()
    failures: list[tuple[int, list[str]]] = []
    reached: Counter[tuple[str, str]] = Counter()
    journals = 0
    with multiprocessing.get_context("fork").Pool(jobs, initializer=_quiet) as pool:
        for found, pairs, n in pool.imap_unordered(_chunk, chunks):
            failures += found
            reached.update(pairs)
            journals += n
    elapsed = time.monotonic() - started
    print(f"sim: {count} seeds from {first}, {ops} client operations each, {journals} journals, "
          f"{elapsed:.1f}s on {jobs} processes ({elapsed * jobs / count * 1000:.1f} ms a seed)")
    print(coverage(reached, count))
    if failures:
        seed, violations = min(failures)
        print(f"sim: {len(failures)} seeds FAILED, the first: {seed}", file=sys.stderr)
        for other, found in sorted(failures)[:SHOWN_MAX]:
            print(f"  seed {other}: {found[0][:300]}")
        show(run_seed(seed, ops, trace=True))
        return 1
    return 0


def coverage(reached: Counter[tuple[str, str]], seeds: int) -> str:
    faults = sorted({f for f, _ in reached})
    points = sorted({p for _, p in reached})
    width = max((len(p) for p in points), default=5)
    lines = [f"coverage: seeds (of {seeds}) reaching each fault at each await point",
             " " * width + "".join(f"{f:>20}" for f in faults)]
    lines += [f"{point:<{width}}" + "".join(f"{reached.get((f, point), 0):>20}" for f in faults)
              for point in points]
    lines.append(f"{len(reached)} fault x point pairs reached")
    return "\n".join(lines)


def show(result: Result) -> None:
    print(f"seed {result.seed}: {describe(result)}")
    print("schedule (every fault injected, every death, every answer a client got):")
    for line in result.trace:
        print("  " + line)
    print(f"{len(result.violations)} violations (the first {SHOWN_MAX}; the rest follow from them, mostly):")
    for v in result.violations[:SHOWN_MAX]:
        print("  " + v)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim")
    parser.add_argument("--seed", type=int, help="run this one seed, its schedule printed")
    parser.add_argument("--seeds", type=int, default=10_000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if os.environ.get("PYTHONHASHSEED") != "0":  # set iteration order is part of a schedule
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "tests.sim", *sys.argv[1:]])
    if args.seed is not None:
        _quiet()
        result = run_seed(args.seed, args.ops, trace=True)
        show(result)
        return 1 if result.violations else 0
    return run_many(args.start, args.seeds, args.ops, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
