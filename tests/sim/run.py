"""One seed's run: build the world, run the workload under faults, heal, wait for
quiescence, check. Everything random comes from the seed, in separate streams (the
scheduler's, the faults', the world's, the clients'), so a run is the same every time.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from core.ledger.status import HELD, PROCESSING
from tests.sim import checks
from tests.sim.faults import Faults, Profile
from tests.sim.loop import Stalled, VirtualLoop, virtual_monotonic
from tests.sim.model import Model
from tests.sim.workload import Client, open_accounts, operator
from tests.sim.world import EXPIRY_INTERVAL_S, LEASE_S, SWEEP_INTERVAL_S, World

CLIENTS = 6
QUIESCENCE_MAX_S = 600.0
# Once faults stop: a hold past its deadline ends within a lease (its void's journal may
# be held by a process that died) and a few sweeps.
HOLD_END_BOUND_S = LEASE_S + 2 * SWEEP_INTERVAL_S + 4 * EXPIRY_INTERVAL_S + 5
# Log lines that mean a defect (the use cases catch them to stay up, and log them).
DEFECTS = ("[BUG]", "post-commit effects failed", "a batch item failed unexpectedly",
           "recording a batch item failed", "sweep failed")


@dataclass
class Result:
    seed: int
    violations: list[str]
    reached: Counter[tuple[str, str]]
    ops: int = 0
    journals: int = 0
    kills: int = 0
    virtual_s: float = 0.0
    trace: list[str] = field(default_factory=list)


class Defects(logging.Handler):
    """Collects the log records of defects and unexpected exceptions of one run."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(message.startswith(d) or d in message for d in DEFECTS):
            self.found.append(f"logged: {message} {record.exc_info[1] if record.exc_info else ''}")


def run_seed(seed: int, ops: int = 200, *, trace: bool = False) -> Result:
    streams = {name: random.Random(f"{seed}:{name}") for name in
               ("scheduler", "faults", "world", "clients")}
    loop = VirtualLoop(streams["scheduler"])
    faults = Faults(streams["faults"], Profile.draw(streams["faults"]),
                    trace=[] if trace else None)
    defects = Defects()
    root = logging.getLogger()
    root.addHandler(defects)
    loop.set_exception_handler(lambda _loop, context: defects.found.append(
        f"unhandled: {context.get('message')} {context.get('exception')!r}"))
    try:
        with virtual_monotonic(loop):
            result = loop.run_until_complete(_run(seed, ops, loop, faults, streams))
    except Stalled as exc:
        result = Result(seed, [f"stalled: {exc}"], faults.reached)
    finally:
        root.removeHandler(defects)
        _close(loop)
    result.violations += defects.found
    result.trace = faults.trace or []
    return result


def _close(loop: VirtualLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()
    try:
        loop.run_until_complete(asyncio.sleep(0))
    except Exception:  # noqa: BLE001 - a run that failed: its leftovers do not matter
        pass
    loop.close()


async def _run(seed: int, ops_n: int, loop: VirtualLoop, faults: Faults,
               streams: dict[str, random.Random]) -> Result:
    world = World(loop, streams["world"], faults)
    initial = open_accounts(world)
    model = Model.of(world.store)
    world.store.on_commit = model.replay
    for index in range(streams["world"].randint(2, 4)):
        world.start_process(index)
    world.schedule_outages(faults.profile.outages, within_s=5.0)
    client = Client(world, streams["clients"])
    stop = asyncio.Event()
    admin = loop.create_task(operator(world, streams["clients"], stop))
    await asyncio.gather(*(_client(client, ops_n // CLIENTS + (i < ops_n % CLIENTS))
                           for i in range(CLIENTS)))
    stop.set()
    await admin
    # verify's rules mid-run too, where journals are unfinished and holds pending.
    violations = checks.invariants(world.store, initial, quiescent=False)
    world.heal()
    healed_at = loop.time()
    await _quiescence(world)
    violations += model.violations
    violations += checks.invariants(world.store, initial, quiescent=True)
    violations += checks.relay_rules(world)
    violations += checks.history(client.ops, world.store, model.decided)
    violations += checks.holds_ended_in_time(world.store, healed_at, HOLD_END_BOUND_S)
    for process in world.processes:
        for task in process.tasks:
            task.cancel()
    return Result(seed, violations, faults.reached, len(client.ops), len(world.store.journals),
                  world.kills, loop.time())


async def _client(client: Client, budget: int) -> None:
    sent = 0
    while sent < budget:
        ops = client.next_op()[:budget - sent]
        sent += len(ops)
        await client.perform(ops)
        await asyncio.sleep(client.rng.expovariate(50.0))


def _settled(world: World) -> bool:
    store = world.store
    done = len(store.finished_order)
    return (all(r.status not in (PROCESSING, HELD) for r in store.journals.values())
            and all(c == done for c in store.cursors.values()))


async def _quiescence(world: World) -> None:
    """Wait until every journal finished, every hold ended and the relay caught up."""
    loop = world.loop
    deadline = loop.time() + QUIESCENCE_MAX_S
    while not _settled(world) and loop.time() < deadline:
        await asyncio.sleep(1.0)
    await asyncio.sleep(1.0)  # effects and the tracker's last flush


def describe(result: Result) -> Any:
    return {"seed": result.seed, "ops": result.ops, "journals": result.journals,
            "kills": result.kills, "virtual_s": round(result.virtual_s, 3)}
