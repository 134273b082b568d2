"""The simulated deployment: processes (each one set of use-case objects and its tasks,
as server/process/runtime.py wires them, on the simulated ports), sharing one simulated
database, Redis, receipt service and broker; processes die and are restarted, and
dependencies go down for a while, as the seed says.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from typing import Any

from core.kit.batcher import Batcher
from core.pipeline.accept import TransactionService
from core.pipeline.effects import PostCommit
from core.pipeline.expiry import HoldExpiry
from core.pipeline.links import LinkedRequests
from core.pipeline.pool import ProcessorPool
from core.pipeline.recovery import RecoverySweeper
from core.pipeline.tracker import StatusTracker
from tests.fakes.services import (
    FakeAccountCache,
    FakeIdempotencyCache,
    FakeReceiptSource,
    FakeStatusStore,
)
from tests.sim.faults import DEPENDENCIES, Faults
from tests.sim.loop import VirtualLoop
from tests.sim.ports import IdempotencyView, Points, ReceiptView, StatusView, StoreView
from tests.sim.relay import Relay
from tests.sim.store import Broker, SimStore

LEASE_S = 10.0
SWEEP_INTERVAL_S = 1.0
EXPIRY_INTERVAL_S = 1.0
# Within the design's tolerance: every deadline is on the database's clock, so a process's
# own clock only measures durations (processing_time, the tracker's memory TTL).
CLOCK_SKEW_MAX_S = 2.0
MARKER_TTL_S = 10.0
TASKS_PURGE_AT = 256
TRACKER_FLUSH_MS = 1000  # the tracker's Redis writes: each flush is a loop step per process  # server/adapters/redis/idempotency.py: an in-flight marker's life

CURRENT: contextvars.ContextVar[Process | None] = contextvars.ContextVar("sim_process",
                                                                          default=None)


class World:
    def __init__(self, loop: VirtualLoop, rng: random.Random, faults: Faults) -> None:
        self.loop = loop
        self.rng = rng
        self.faults = faults
        self.store = SimStore(loop.time, lease_s=LEASE_S)
        self.redis_idem = FakeIdempotencyCache(clock=loop.time, marker_ttl_s=MARKER_TTL_S)
        self.redis_statuses = FakeStatusStore()
        self.receipts = FakeReceiptSource()
        self.broker = Broker()
        self.processes: list[Process] = []
        self.generation = 0
        self.kills = 0
        loop.set_task_factory(self._task)

    @staticmethod
    def _task(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        """Every task belongs to the process whose context created it (killed with it)."""
        task = asyncio.Task(coro, loop=loop, **kwargs)
        context = kwargs.get("context")
        process = context.get(CURRENT) if context is not None else CURRENT.get()
        if process is not None:
            process.adopt(task)
        return task

    @property
    def live(self) -> list[Process]:
        return [p for p in self.processes if not p.dead]

    def start_process(self, index: int) -> Process:
        self.generation += 1
        process = Process(self, f"p{index}.{self.generation}", index)
        self.processes.append(process)
        process.start()
        return process

    def kill(self, process: Process, point: str) -> None:
        """The process dies here: its tasks are cancelled, its memory is gone, its leases
        are left to expire; a new process takes its place a little later."""
        if process.dead:
            return
        process.dead = True
        self.kills += 1
        self.faults.log(f"{self.loop.time():10.4f} {process.name:>6} killed at {point}")
        if self.store.relay_holder is process:
            self.store.relay_holder = None  # its session ended: the advisory lock is free
        for task in list(process.tasks):
            task.cancel()  # a done one ignores it
        if self.faults.enabled:
            self.loop.call_later(self.rng.uniform(0.5, 5.0), self._restart, process.index)
        else:
            self._restart(process.index)

    def _restart(self, index: int) -> None:
        if not any(p.index == index and not p.dead for p in self.processes):
            self.start_process(index)

    def set_down(self, dependency: str, down: bool) -> None:
        if dependency == "db":
            self.store.down = down
        elif dependency == "redis":
            self.redis_idem.down = self.redis_statuses.down = down
        elif dependency == "receipts":
            self.receipts.down = down
        else:
            self.broker.down = down

    def schedule_outages(self, count: int, within_s: float) -> None:
        for _ in range(count):
            dependency = self.rng.choice(DEPENDENCIES)
            start, length = self.rng.uniform(0, within_s), self.rng.choice((0.05, 0.5, 2.0, 8.0))
            self.loop.call_later(start, self._outage, dependency, length)

    def _outage(self, dependency: str, length_s: float) -> None:
        if not self.faults.enabled:
            return
        self.faults.count("down", dependency)
        self.faults.log(f"{self.loop.time():10.4f} {dependency} down for {length_s}s")
        self.set_down(dependency, True)
        self.loop.call_later(length_s, self.set_down, dependency, False)

    def heal(self) -> None:
        """No more faults: every dependency up, every dead process restarted."""
        self.faults.enabled = False
        for dependency in DEPENDENCIES:
            self.set_down(dependency, False)
        indexes = {p.index for p in self.processes}
        for index in sorted(indexes):
            self._restart(index)


class Process:
    """One worker process: its use-case objects, wired as runtime.py wires them."""

    def __init__(self, world: World, name: str, index: int) -> None:
        self.world = world
        self.name = name
        self.index = index
        self.dead = False
        self.tasks: dict[asyncio.Task[Any], None] = {}
        rng = world.rng
        skew = rng.uniform(-CLOCK_SKEW_MAX_S, CLOCK_SKEW_MAX_S)
        self.clock = lambda: world.loop.time() + skew
        points = Points(self)
        self.store = StoreView(points, world.store)
        self.cache = FakeAccountCache(self.store)
        self.relay = Relay(self, points)
        self.tracker = StatusTracker(StatusView(points, world.redis_statuses),
                                     flush_interval_ms=TRACKER_FLUSH_MS, redis_ttl_s=60, memory_ttl_s=60,
                                     clock=self.clock)
        self.pool = ProcessorPool(
            self.store, PostCommit(tracker=self.tracker, balances_committed=self.cache.set_balances,
                                   wake_relay=self.relay.wake),
            queue_size_max=rng.choice((8, 50)), writers=rng.choice((1, 2)),
            batch_max=rng.choice((1, 10)), workers=1, attempts_max=3,
            apply_at_accept=rng.random() < 0.5, commit_check_timeout_s=2.0)
        self.batcher: Batcher[Any, Any] = Batcher("accept", self.pool.record,
                                                  batch_size_max=20, flush_interval_ms=1)
        self.service = TransactionService(
            journals=self.batcher, receipts=ReceiptView(points, world.receipts, self),
            accounts=self.cache, pool=self.pool,
            idempotency=IdempotencyView(points, world.redis_idem), owner=name,
            wait_timeout_s=rng.choice((0.05, 2.0)), clock=self.clock, recorded_keys=self.store)
        self.links = LinkedRequests(self.store)
        self.sweeper = RecoverySweeper(self.store, self.pool, owner=name, lease_s=LEASE_S,
                                       interval_s=SWEEP_INTERVAL_S)
        self.expiry = HoldExpiry(self.store, self.service, interval_s=EXPIRY_INTERVAL_S)

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """A dict, not a set: cancelled in creation order. Finished tasks are dropped now
        and then (a done callback per task would cost a loop step each)."""
        if len(self.tasks) >= TASKS_PURGE_AT:
            self.tasks = {t: None for t in self.tasks if not t.done()}
        self.tasks[task] = None

    def start(self) -> None:
        self.run_in(self._start)

    def _start(self) -> None:
        self.batcher.start()
        self.pool.start()
        for coro in (self.sweeper.run(), self.expiry.run(), self.tracker.run(),
                     self.relay.run()):
            asyncio.get_running_loop().create_task(coro)

    def run_in(self, fn: Any, *args: Any) -> Any:
        """Call fn in this process's context: the tasks it creates are this process's."""
        context = contextvars.copy_context()
        context.run(CURRENT.set, self)
        return context.run(fn, *args)
