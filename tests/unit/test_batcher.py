"""core.kit.batcher.Batcher against in-memory sinks (this is about the logic, not a server)."""

from __future__ import annotations

import asyncio
import time

import pytest

from core.kit.batcher import Batcher
from core.ledger.errors import Overloaded


class RecordingSink:
    """Echoes items doubled; records each batch, its timing and the calls in flight."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.times: list[float] = []
        self.in_flight = 0
        self.in_flight_seen = 0
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        self.called.set()
        self.times.append(time.monotonic())
        self.in_flight += 1
        self.in_flight_seen = max(self.in_flight_seen, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            return [ValueError(f"bad {i}") if i < 0 else i * 2 for i in items]
        finally:
            self.in_flight -= 1


def make(sink: RecordingSink, **kw: float) -> Batcher[int, int]:
    batcher: Batcher[int, int] = Batcher(
        "test", sink, batch_size_max=int(kw.pop("batch_size_max", 3)),
        flush_interval_ms=kw.pop("flush_interval_ms", 10_000), **kw,  # type: ignore[arg-type]
    )
    batcher.start()
    return batcher


async def test_flushes_when_full_without_waiting_for_the_interval() -> None:
    sink = RecordingSink()
    batcher = make(sink, batch_size_max=3)
    futures = [batcher.submit(i) for i in range(3)]
    assert await asyncio.wait_for(asyncio.gather(*futures), 1) == [0, 2, 4]
    assert sink.batches == [[0, 1, 2]]
    await batcher.close()


async def test_flushes_on_time_when_not_full() -> None:
    sink = RecordingSink()
    batcher = make(sink, batch_size_max=100, flush_interval_ms=50)
    started = time.monotonic()
    futures = [batcher.submit(i) for i in range(2)]
    assert await asyncio.wait_for(asyncio.gather(*futures), 2) == [0, 2]
    waited = sink.times[0] - started
    assert 0.045 <= waited < 0.5, waited
    assert sink.batches == [[0, 1]]
    await batcher.close()


async def test_an_exception_result_fails_its_item_only() -> None:
    sink = RecordingSink()
    batcher = make(sink, batch_size_max=3)
    ok1, bad, ok2 = (batcher.submit(i) for i in (1, -1, 2))
    assert await asyncio.wait_for(ok1, 1) == 2
    with pytest.raises(ValueError, match="bad -1"):
        await bad
    assert await ok2 == 4
    await batcher.close()


async def test_one_call_in_flight_and_items_accumulate_meanwhile() -> None:
    sink = RecordingSink()
    sink.gate = asyncio.Event()
    batcher = make(sink, batch_size_max=50, flush_interval_ms=5)
    first = batcher.submit(0)
    await asyncio.wait_for(sink.called.wait(), 1)
    later = [batcher.submit(i) for i in range(1, 8)]
    await asyncio.sleep(0.05)  # many intervals: still only the first call
    assert sink.batches == [[0]] and len(batcher) == 7
    sink.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, *later), 1) == [i * 2 for i in range(8)]
    assert sink.batches == [[0], list(range(1, 8))]
    assert sink.in_flight_seen == 1
    await batcher.close()


async def test_refuses_past_pending_max() -> None:
    sink = RecordingSink()
    sink.gate = asyncio.Event()
    batcher = make(sink, batch_size_max=2, flush_interval_ms=1, pending_max=2)
    first = [batcher.submit(i) for i in range(2)]  # flushed, the call blocks
    await asyncio.wait_for(sink.called.wait(), 1)
    waiting = [batcher.submit(i) for i in range(2, 4)]
    with pytest.raises(Overloaded):
        batcher.submit(4)
    sink.gate.set()
    assert await asyncio.wait_for(asyncio.gather(*first, *waiting), 1) == [0, 2, 4, 6]
    await batcher.close()


async def test_close_flushes_pending_items_and_refuses_new_ones() -> None:
    sink = RecordingSink()
    batcher = make(sink, batch_size_max=3, flush_interval_ms=60_000)
    futures = [batcher.submit(i) for i in range(5)]
    await asyncio.wait_for(batcher.close(), 1)
    assert [f.result() for f in futures] == [0, 2, 4, 6, 8]
    assert sink.batches == [[0, 1, 2], [3, 4]]
    with pytest.raises(Overloaded):
        batcher.submit(9)


async def test_sink_failure_and_timeout_fail_every_item_of_the_batch() -> None:
    sink = RecordingSink()
    sink.gate = asyncio.Event()  # never set: the sink stalls
    batcher = make(sink, batch_size_max=2, timeout_ms=50)
    futures = [batcher.submit(i) for i in range(2)]
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 1)
    assert all(isinstance(r, TimeoutError) for r in results)
    await batcher.close()


# Regression tests for two bugs found in core/kit/batcher.py (fixed).

async def test_close_without_start_resolves_pending_items() -> None:
    batcher: Batcher[int, int] = Batcher(
        "test", RecordingSink(), batch_size_max=3, flush_interval_ms=10
    )
    future = batcher.submit(1)
    await asyncio.wait_for(batcher.close(), 1)
    assert future.done()


async def test_sink_raising_cancelled_error_fails_its_callers() -> None:
    async def sink(items: list[int]) -> list[int]:
        raise asyncio.CancelledError

    batcher: Batcher[int, int] = Batcher("test", sink, batch_size_max=1, flush_interval_ms=1)
    batcher.start()
    future = batcher.submit(1)
    await asyncio.wait_for(batcher.close(), 1)
    await asyncio.sleep(0.01)
    assert future.done()


# submit_many: one future for a caller's items, whichever flushes they go in.

async def test_submit_many_resolves_one_future_across_flushes() -> None:
    sink = RecordingSink()
    batcher = make(sink, batch_size_max=3, flush_interval_ms=1)
    single = batcher.submit(10)
    group = batcher.submit_many([1, -1, 2, 3, 4])
    results = await asyncio.wait_for(group, 1)
    assert [r if isinstance(r, int) else str(r) for r in results] == [2, "bad -1", 4, 6, 8]
    assert await single == 20
    assert sink.batches == [[10, 1, -1], [2, 3, 4]]  # the group split over two flushes
    await batcher.close()


async def test_submit_many_is_refused_whole_past_pending_max() -> None:
    sink = RecordingSink()
    sink.gate = asyncio.Event()
    batcher = make(sink, batch_size_max=2, flush_interval_ms=1, pending_max=3)
    first = batcher.submit_many([0, 1])  # flushed, the call blocks
    await asyncio.wait_for(sink.called.wait(), 1)
    waiting = batcher.submit(2)
    with pytest.raises(Overloaded):
        batcher.submit_many([3, 4, 5])  # 1 waiting + 3 > 3: none of them is added
    assert len(batcher) == 1
    sink.gate.set()
    assert await asyncio.wait_for(first, 1) == [0, 2] and await waiting == 4
    assert (await batcher.submit_many([])) == []
    await batcher.close()


async def test_a_failed_flush_fails_each_item_of_a_group_once() -> None:
    sink = RecordingSink()
    sink.gate = asyncio.Event()  # never set: the sink stalls
    batcher = make(sink, batch_size_max=2, flush_interval_ms=1, timeout_ms=50)
    results = await asyncio.wait_for(batcher.submit_many([1, 2, 3]), 2)
    assert len(results) == 3 and all(isinstance(r, TimeoutError) for r in results)
    await batcher.close()


async def test_a_cancelled_group_caller_does_not_break_the_flush() -> None:
    sink = RecordingSink()
    sink.gate = asyncio.Event()
    batcher = make(sink, batch_size_max=4, flush_interval_ms=1)
    group = batcher.submit_many([1, 2])
    other = batcher.submit(3)
    await asyncio.wait_for(sink.called.wait(), 1)
    group.cancel()
    sink.gate.set()
    assert await asyncio.wait_for(other, 1) == 6  # its batch-mate was resolved all the same
    assert group.cancelled()
    await batcher.close()
