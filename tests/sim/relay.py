"""The relay's publication step, modelled on the simulated ports (the real one,
server/adapters/kafka/relay.py and publisher.py, is SQL on a dedicated connection and
aiokafka, tested against the real servers; its logic is not on core's ports, so it is
modelled here rather than extracted).

Per process: take the advisory lock when it is free (a dead process's session frees it);
the holder runs one cycle per sink: read the journals finished past the sink's cursor,
deliver them (Kafka: publish; receipts: receipt_records, the real builder, registered),
then move the cursor. Death between delivery and the cursor's move delivers again: at
least once. A wake-up after each commit shortens the idle wait, as the real one does.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from core.ledger.errors import KassaError, Unavailable
from core.ledger.events import FinishedJournal, TargetNow
from core.pipeline.receipts import receipt_records
from tests.sim.ports import Points

if TYPE_CHECKING:
    from tests.sim.world import Process

POLL_S = 1.0
BATCH_MAX = 50


class Relay:
    def __init__(self, process: Process, points: Points) -> None:
        self._process = process
        self._p = points
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        if not self._process.dead:
            self._wakeup.set()

    async def run(self) -> None:
        store = self._process.world.store
        while True:
            try:
                await self._p.call("db.relay.try_lock", self._noop)
                if store.relay_holder is None:
                    store.relay_holder = self._process
                if store.relay_holder is self._process:
                    await self._cycle("kafka")
                    await self._cycle("receipts")
            except KassaError:
                pass  # the database or a sink is down: the next cycle tries again
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._wakeup.wait()

    async def _cycle(self, sink: str) -> None:
        world = self._process.world
        store = world.store
        await self._p.call("db.relay.due", self._noop)
        start = store.cursors[sink]
        ids = store.finished_order[start:start + BATCH_MAX]
        if not ids:
            return
        if sink == "kafka":
            codes = [store.journals[i].receipt_code for i in ids]
            await self._p.call("broker.publish", lambda: self._publish(codes))
        else:
            records = receipt_records([self._finished(i) for i in ids])
            await self._p.call("receipts.register", lambda: self._register(records))
        await self._p.call("db.relay.advance", self._noop)
        if store.relay_holder is self._process:  # a lost lock moves no cursor
            store.cursors[sink] = max(store.cursors[sink], start + len(ids))

    async def _noop(self) -> None:
        self._process.world.store.check_up()

    async def _publish(self, codes: list[str]) -> None:
        self._process.world.broker.publish(codes)

    async def _register(self, records: list) -> None:  # type: ignore[type-arg]
        receipts = self._process.world.receipts
        if receipts.down:
            raise Unavailable("the receipt service is unavailable")
        receipts.register(records)

    def _finished(self, journal_id: int) -> FinishedJournal:
        store = self._process.world.store
        row = store.journals[journal_id]
        tx = row.transaction
        named = None
        if tx.target is not None and tx.target in store.by_code:
            t = store.journal(tx.target)
            named = TargetNow(t.receipt_code, t.transaction.type, t.status,
                              t.transaction.currency, t.transaction.legs)
        return FinishedJournal(row.id, row.receipt_code, tx.type, row.status, tx.currency,
                               tx.legs, row.is_hold, row.updated_at, list(row.entries),
                               row.error, tx.description, tx.target, named)
