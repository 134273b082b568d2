"""A worker's stock of receipt codes: blocks reserved from the receipt service, handed out
locally, refilled in the background before they run out.

    take(n) ── stock has n ──▶ n codes at once, no await (the common case)
            └─ stock short ──▶ wait for the refill in flight (bounded by timeout_ms),
                               or Unavailable at once if the last reservation failed

One task reserves blocks: when the stock falls to half a block it reserves another, one
call at a time, and retries with backoff (100 ms doubling to retry_max_ms) while the
service is down. So a request waits for the service only when the stock ran dry, and a
service outage shorter than the time the stock lasts is not seen at all. Codes are dated
when handed out (native.block_codes) and hidden then (core/kit/code_cipher.py: the same
keyed bijection in every process, so consecutive codes are not neighbours and stay
unique). Codes left when the process stops are never used: a gap, never a repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import native
from core.kit.code_cipher import CodeCipher
from core.ledger.errors import Unavailable
from server.adapters.grpc import metrics

log = logging.getLogger("kassa.grpc.receipts")

# Reserve `count` codes: returns (block number, codes granted). Raises Unavailable.
Reserve = Callable[[int], Awaitable[tuple[int, int]]]

RETRY_MIN_S = 0.1


class CodeStock:
    def __init__(self, reserve: Reserve, *, cipher: CodeCipher, block_size: int,
                 timeout_ms: float, retry_max_ms: float) -> None:
        assert 1 <= block_size <= native.BLOCK_SPAN
        self._reserve = reserve
        self._hide = cipher.hide_all
        self._block_size = block_size
        self._low = block_size // 2
        self._timeout_s = timeout_ms / 1000
        self._retry_max_s = max(RETRY_MIN_S, retry_max_ms / 1000)
        self._blocks: deque[list[int]] = deque()  # [block number, next offset, end offset]
        self._available = 0
        self._need = asyncio.Event()
        self._refilled: asyncio.Future[None] | None = None
        self._failure: Unavailable | None = None
        self._task: asyncio.Task[None] | None = None
        self.blocks_reserved = 0

    @property
    def available(self) -> int:
        return self._available

    @property
    def failing(self) -> bool:
        """The last reservation failed: once the stock is dry, `take` refuses at once until
        a reservation succeeds. /readyz asks this, not only the breaker: a call the service
        refused (a bug on one side) closes the breaker yet reserves nothing."""
        return self._failure is not None

    def start(self) -> None:
        """Reserve the first block at once, so the first requests find codes."""
        self._need.set()
        self._task = asyncio.create_task(self._run(), name="receipt-blocks")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._wake()

    async def take(self, count: int) -> list[str]:
        """`count` fresh codes; Unavailable when the stock is dry and cannot be refilled."""
        if count <= self._available:
            return self._take(count)  # no await: the request goes on at once
        return await self._take_after_refill(count)

    def _take(self, count: int) -> list[str]:
        now_ms = time.time_ns() // 1_000_000
        codes: list[str] = []
        while len(codes) < count:
            block = self._blocks[0]
            number, first, end = block
            n = min(count - len(codes), end - first)
            codes += self._hide(native.block_codes(number, first, n, now_ms))
            if first + n == end:
                self._blocks.popleft()
            else:
                block[1] = first + n
        self._available -= count
        if self._available <= self._low:
            self._need.set()
        return codes

    async def _take_after_refill(self, count: int) -> list[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        while count > self._available:
            if self._failure is not None:
                raise Unavailable(f"receipt codes ran out: {self._failure.message}",
                                  retry_after_s=self._failure.retry_after_s or 1)
            remaining = deadline - loop.time()
            if remaining <= 0 or self._task is None or self._task.done():
                raise Unavailable("receipt codes ran out: the receipt service is too slow",
                                  retry_after_s=1)
            self._need.set()
            if self._refilled is None:
                self._refilled = loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._refilled), remaining)
        return self._take(count)

    async def _run(self) -> None:
        backoff_s = RETRY_MIN_S
        while True:
            await self._need.wait()
            try:
                number, granted = await self._reserve(self._block_size)
            except Unavailable as exc:
                self._failed(exc)
            except Exception:  # noqa: BLE001 - a bug: log it, keep the worker serving
                log.exception("[RECEIPT BLOCKS] reservation failed")
                self._failed(Unavailable("receipt block reservation failed"))
            else:
                self._stocked(number, granted)
                backoff_s = RETRY_MIN_S
                continue
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self._retry_max_s)

    def _stocked(self, number: int, granted: int) -> None:
        assert 0 < granted <= native.BLOCK_SPAN, f"receipt service granted {granted} codes"
        if self._failure is not None:
            log.warning("[RECEIPT BLOCKS] reserving again (block %d)", number)
        self._failure = None
        self._blocks.append([number, 0, granted])
        self._available += granted
        self.blocks_reserved += 1
        metrics.RECEIPT_BLOCKS_RESERVED.inc()
        if self._available > self._low:
            self._need.clear()
        self._wake()

    def _failed(self, exc: Unavailable) -> None:
        if self._failure is None:
            log.warning("[RECEIPT BLOCKS] cannot reserve codes (%d left): %s",
                        self._available, exc.message)
        self._failure = exc
        self._wake()

    def _wake(self) -> None:
        """Let every request waiting for codes look again."""
        if self._refilled is not None and not self._refilled.done():
            self._refilled.set_result(None)
        self._refilled = None
