"""A generic batcher: callers add items one at a time and each gets its own result,
while the sink sees lists.

A batch is flushed when it reaches `batch_size_max` items or when its oldest item
has waited `flush_interval_ms`. At most `in_flight_max` flushes run at once; new
items accumulate meanwhile, so under load batches grow by themselves (group
commit). `pending_max` bounds what may wait: past it `submit` refuses at once
rather than queueing without limit.

`submit_many` adds a caller's items together under one future, which resolves with the
list of their results (an Exception instance for an item that failed) once every item has
one, whichever flushes they went in: one future per request, not one per item.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from core.ledger.errors import Overloaded, Unavailable

T = TypeVar("T")
R = TypeVar("R")

# The sink returns one result per item, in order; an Exception instance fails that item only.
Sink = Callable[[list[T]], Awaitable[Sequence["R | BaseException"]]]
FlushObserver = Callable[[int, float], None]

log = logging.getLogger("kassa.batcher")


_UNSET = object()


class _Group(Generic[R]):
    """The items of one `submit_many`: their results, in order, and one future for all."""

    __slots__ = ("future", "results", "left")

    def __init__(self, future: asyncio.Future[list[R | BaseException]], n: int) -> None:
        self.future = future
        self.results: list[R | BaseException | object] = [_UNSET] * n
        self.left = n

    def set(self, index: int, result: R | BaseException) -> None:
        if self.results[index] is not _UNSET:
            return  # a failure of the whole flush after this item had its result
        self.results[index] = result
        self.left -= 1
        if not self.left and not self.future.done():  # done: the caller was cancelled
            self.future.set_result(self.results)  # type: ignore[arg-type]  # all set now


class Batcher(Generic[T, R]):
    def __init__(
        self,
        name: str,
        sink: Sink[T, R],
        *,
        batch_size_max: int,
        flush_interval_ms: float,
        pending_max: int = 100_000,
        in_flight_max: int = 1,
        timeout_ms: float | None = None,
        on_flush: FlushObserver | None = None,
    ) -> None:
        assert batch_size_max >= 1 and in_flight_max >= 1 and pending_max >= batch_size_max
        self.name = name
        self._sink = sink
        self._size = batch_size_max
        self._interval_s = flush_interval_ms / 1000
        self._pending_max = pending_max
        self._timeout_s = None if timeout_ms is None else timeout_ms / 1000
        self._on_flush = on_flush
        self._pending: deque[tuple[T, asyncio.Future[R] | _Group[R], int, float]] = deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(in_flight_max)
        self._flushes: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False

    def __len__(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    def submit(self, item: T) -> asyncio.Future[R]:
        """Add one item without waiting; the future resolves with its own result."""
        if self._closing:
            raise Overloaded(f"{self.name} is shutting down")
        if len(self._pending) >= self._pending_max:
            raise Overloaded(f"{self.name} has {len(self._pending)} items waiting")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future, 0, time.monotonic()))
        if len(self._pending) == 1 or len(self._pending) >= self._size:
            self._wakeup.set()
        return future

    def submit_many(self, items: list[T]) -> asyncio.Future[list[R | BaseException]]:
        """Add a caller's items without waiting, all or none; the one future resolves with
        their results in order, an Exception instance for each item that failed."""
        if self._closing:
            raise Overloaded(f"{self.name} is shutting down")
        if len(self._pending) + len(items) > self._pending_max:
            raise Overloaded(f"{self.name} has {len(self._pending)} items waiting")
        future: asyncio.Future[list[R | BaseException]] = asyncio.get_running_loop().create_future()
        if not items:
            future.set_result([])
            return future
        group = _Group[R](future, len(items))
        was = len(self._pending)
        now = time.monotonic()
        self._pending.extend((item, group, i, now) for i, item in enumerate(items))
        if not was or len(self._pending) >= self._size:
            self._wakeup.set()
        return future

    async def close(self) -> None:
        """Flush everything still pending, wait for flushes in flight, stop."""
        self._closing = True
        self._wakeup.set()
        if self._runner is None:
            self.start()  # never started: still flush what was submitted
        assert self._runner is not None
        await self._runner
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._wait_until_due()
            await self._slots.acquire()
            batch = [self._pending.popleft() for _ in range(min(self._size, len(self._pending)))]
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._flush(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _wait_until_due(self) -> None:
        """Sleep until the batch is full, its oldest item is due, or we are closing."""
        while len(self._pending) < self._size and not self._closing:
            remaining = self._pending[0][3] + self._interval_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _flush(self, batch: list[tuple[T, asyncio.Future[R] | _Group[R], int, float]]
                     ) -> None:
        started = time.monotonic()
        try:
            items = [entry[0] for entry in batch]
            if self._timeout_s is None:
                results = await self._sink(items)
            else:
                results = await asyncio.wait_for(self._sink(items), self._timeout_s)
            assert len(results) == len(batch), f"{self.name}: sink returned {len(results)} results"
            for (_, slot, index, _), result in zip(batch, results, strict=True):
                _resolve(slot, index, result)
        except BaseException as exc:  # every waiting caller gets the failure, even on cancel
            error = exc if isinstance(exc, Exception) else Unavailable(f"{self.name} flush cancelled")
            for _, slot, index, _ in batch:
                _resolve(slot, index, error)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._slots.release()
            if self._on_flush is not None:
                self._on_flush(len(batch), time.monotonic() - started)


def _resolve(slot: asyncio.Future[R] | _Group[R], index: int, result: R | BaseException) -> None:
    """Give an item its result, unless it has one (a failure of the whole flush after some
    items were resolved, or a caller that was cancelled)."""
    if isinstance(slot, _Group):
        slot.set(index, result)
    elif slot.done():
        return
    elif isinstance(result, BaseException):
        slot.set_exception(result)
    else:
        slot.set_result(result)
