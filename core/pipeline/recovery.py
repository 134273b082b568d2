"""The recovery sweeper: every process claims unfinished journals whose lease expired
(their process died) and executes them, so every 202 ends completed or failed. Each tick
first renews the leases of the journals this process still holds: a journal waiting
long in the queue is not taken over by another process while this one is alive."""

from __future__ import annotations

import asyncio
import logging
import time

from core.kit.rate_limit import Throttle
from core.ledger.errors import KassaError, Unavailable
from core.pipeline.pool import ProcessorPool
from core.pipeline.ports import JournalStore
from core.pipeline.tasks import Task

log = logging.getLogger("kassa.recovery")

CLAIM_MAX = 1000
OUTAGE_WARNING_INTERVAL_S = 5.0  # while the database is down, one line this often


class RecoverySweeper:
    def __init__(self, store: JournalStore, pool: ProcessorPool, *, owner: str,
                 lease_s: float, interval_s: float) -> None:
        self._store = store
        self._pool = pool
        self._owner = owner
        self._lease_s = lease_s
        self._interval_s = interval_s
        self._outage_warning = Throttle(OUTAGE_WARNING_INTERVAL_S)

    async def sweep(self) -> int:
        """Renew the leases of the journals this process holds (queued or running), then
        claim as many expired journals, never its own, as the queue has room for; returns
        how many were claimed."""
        held = self._pool.held
        if held:
            await self._store.renew_leases(self._owner, held, self._lease_s)
        room = min(CLAIM_MAX, self._pool.room)
        if room <= 0:
            return 0
        # Reserved before claiming: accepts go on while the claim is read, and may fill the
        # queue meanwhile (tests/sim found a claimed journal left out of a full queue).
        with self._pool.admission(room) as admitted:
            claimed = await self._store.claim_expired(self._owner, self._lease_s, room,
                                                      self._pool.held)
            now = time.monotonic()
            for journal in claimed:
                admitted.put(Task(journal.journal_id, journal.receipt_code,
                                  journal.transaction, now))
        if claimed:
            log.warning("[RECOVERY] claimed %d journals with expired leases", len(claimed))
        return len(claimed)

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Unavailable as exc:  # the database is down: the next tick tries again
                # One line every few seconds for an outage, not one per tick.
                if self._outage_warning.ready():
                    log.warning("[RECOVERY] sweep failed: %s", exc.message)
            except KassaError as exc:
                log.error("[RECOVERY] sweep failed: %r", exc)
            except Exception:
                log.exception("[RECOVERY] sweep failed")  # a defect: with its traceback
            await asyncio.sleep(self._interval_s)
