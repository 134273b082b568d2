"""An asyncio event loop on virtual time with a seeded scheduler: the use cases run on it
unchanged (asyncio.Queue, Lock, sleep, wait_for, timeout), and one random.Random decides
the order in which the ready callbacks of a step run.

Nothing ever blocks: when no callback is ready, the clock jumps to the next timer. So a run
costs CPU only, a 30 s lease passes in no time, and the same seed gives the same schedule.
`time.monotonic` is pointed at the loop's clock while a run lasts (core reads it for the
accept batcher's flush deadline and for durations): a wall clock would make runs differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import time
from collections.abc import Callable, Iterator
from typing import Any


class Stalled(RuntimeError):
    """Nothing ready and no timer: the run cannot go on (a lost wake-up)."""


class VirtualLoop(asyncio.BaseEventLoop):
    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self._rng = rng
        self._now = 0.0
        self._clock_resolution = 1e-9
        self.steps = 0

    def time(self) -> float:
        return self._now

    def _process_events(self, event_list: Any) -> None:  # no selector: nothing to process
        pass

    def _write_to_self(self) -> None:  # never woken from another thread
        pass

    def _run_once(self) -> None:
        """Move due timers to the ready queue (jumping the clock to the next one when
        nothing is ready), then run the ready callbacks in an order the seed chooses."""
        ready, scheduled = self._ready, self._scheduled
        if not ready:
            while scheduled and scheduled[0]._cancelled:
                heapq.heappop(scheduled)._scheduled = False
            if not scheduled:
                if self._stopping:
                    return
                raise Stalled("nothing ready and no timer set")
            self._now = max(self._now, scheduled[0]._when)
        now = self._now
        while scheduled and scheduled[0]._when <= now:
            handle = heapq.heappop(scheduled)
            handle._scheduled = False
            if not handle._cancelled:
                ready.append(handle)
        batch = list(ready)
        ready.clear()
        if len(batch) > 1:
            self._rng.shuffle(batch)
        self.steps += 1
        for handle in batch:
            if not handle._cancelled:
                handle._run()


@contextlib.contextmanager
def virtual_monotonic(loop: VirtualLoop) -> Iterator[None]:
    """`time.monotonic()` reads the loop's clock for the block."""
    real: Callable[[], float] = time.monotonic
    time.monotonic = loop.time
    try:
        yield
    finally:
        time.monotonic = real
