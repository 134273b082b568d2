"""The client workload: operations drawn from the seed (transfers, multi-leg, bulk, holds
with capture/void/expiry, reversals, idempotent retries, duplicated requests) sent to
random live processes, every answer recorded; and an operator locking accounts for a
while. Each operation's transaction carries its tag as its description, so the checks
find the journals it produced.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import msgspec

from core.ledger.errors import (
    IdempotencyInProgress,
    KassaError,
    OutcomeUnknown,
)
from core.ledger.models import Leg, Transaction
from core.ledger.status import PROCESSING
from core.pipeline.idempotency import request_hash
from core.pipeline.submission import Accepted, Finished, Replayed, Submission
from tests.fakes.journals import JournalRow
from tests.sim.world import Process, World

WORLD = "@world:USD"
ACCOUNTS = [f"a{i}" for i in range(6)]
START_BALANCE = 500
CLIENT_TIMEOUT_S = 3.0
RETRIES_MAX = 4

ACCEPTED, FINISHED, REFUSED, NOT_ACCEPTED, UNKNOWN = (
    "accepted", "finished", "refused", "not-accepted", "unknown")


def open_accounts(world: World) -> dict[str, int]:
    """The accounts and their opening balances (the world account pays for them)."""
    store = world.store
    for i, account in enumerate(ACCOUNTS):
        store.add_account(account, START_BALANCE, overdraft_limit=0 if i % 2 else 100)
    store.add_account(WORLD, -START_BALANCE * len(ACCOUNTS), overdraft_limit=None)
    return {a.id: a.balance for a in store.accounts.values()}


@dataclass
class Answer:
    kind: str
    code: str | None = None
    status: str | None = None  # a finished answer's outcome
    detail: Any = ""
    sent: float = 0.0  # when the attempt was sent (virtual seconds)


@dataclass
class Op:
    tag: str
    kind: str
    key: str | None
    wait: bool
    build: Any  # async (process) -> Transaction
    attempts: list[Answer] = field(default_factory=list)

    def check(self, journals: list[JournalRow], decided: dict[int, str],
              recorded_at: dict[int, float]) -> list[str]:
        out = []
        kinds = {a.kind for a in self.attempts}
        codes = {a.code for a in self.attempts if a.code is not None}
        where = f"{self.tag} ({self.kind}, key {self.key}): {self.attempts}"
        if len(journals) > 1:
            out.append(f"{where} applied {len(journals)} times")
        if len(codes) > 1:
            out.append(f"{where} answered with {len(codes)} receipts")
        if codes:
            if not journals or journals[0].receipt_code not in codes:
                out.append(f"{where} accepted but its journal is missing")
            elif journals[0].status == PROCESSING:
                out.append(f"{where} accepted but never finished")
            given = decided.get(journals[0].id)
            out += [f"{where} answered {a.status}, its journal was decided {given}"
                    for a in self.attempts if a.status is not None and given != a.status]
        elif journals and UNKNOWN not in kinds:
            out.append(f"{where} told not applied, but journal {journals[0].receipt_code} "
                       f"is {journals[0].status}")
        # Refusals are not recorded under a key: a later attempt may be accepted. But an
        # attempt sent once the key's journal was recorded is its repeat (API.md).
        recorded = recorded_at.get(journals[0].id) if journals else None
        if recorded is not None:
            out += [f"{where} refused at {a.sent:.4f}, but journal {journals[0].receipt_code} "
                    f"was recorded at {recorded:.4f}"
                    for a in self.attempts if a.kind == REFUSED and a.sent > recorded]
        return out


class Client:
    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.ops: list[Op] = []
        self.holds: list[str] = []
        self.completed: list[str] = []

    # ---- the operations -------------------------------------------------------------

    def next_op(self) -> list[Op]:
        """One request's operations (a bulk request has several)."""
        rng, n = self.rng, len(self.ops)
        kind = rng.choices(("transfer", "multi", "deposit", "withdrawal", "bulk", "hold",
                            "capture", "void", "reverse"), (6, 2, 2, 2, 2, 3, 2, 1, 2))[0]
        if kind == "bulk":
            return [self._op(f"op{n + i}", "transfer", self._plain("transfer"), keyed=False)
                    for i in range(rng.randint(2, 5))]
        if kind in ("capture", "void", "reverse"):
            return [self._op(f"op{n}", kind, self._linked(kind))]
        return [self._op(f"op{n}", kind, self._plain(kind))]

    def _op(self, tag: str, kind: str, build: Any, *, keyed: bool | None = None) -> Op:
        if keyed is None:
            keyed = self.rng.random() < 0.6
        op = Op(tag, kind, f"k-{tag}" if keyed else None, self.rng.random() < 0.4, build)
        self.ops.append(op)
        return op

    def _plain(self, kind: str) -> Any:
        rng = self.rng
        a, b = rng.sample(ACCOUNTS, 2)
        amount = rng.randint(1, 300)
        if kind == "deposit":
            legs = (Leg(WORLD, a, amount),)
        elif kind == "withdrawal":
            legs = (Leg(a, WORLD, amount),)
        elif kind == "multi":
            c = rng.choice(ACCOUNTS)
            legs = (Leg(a, b, amount), Leg(b, c if c != b else a, rng.randint(1, 300)))
            kind = "transfer"
        else:
            legs = (Leg(a, b, amount),)
        hold_s = rng.choice((1, 3, 10, 30)) if kind == "hold" else None
        tx = Transaction("transfer" if kind == "hold" else kind, "USD", legs,
                         hold_expires_in_s=hold_s)

        async def build(process: Process) -> Transaction:
            return tx
        return build

    def _linked(self, kind: str) -> Any:
        rng = self.rng
        pool = self.holds if kind in ("capture", "void") or rng.random() < 0.2 else self.completed
        target = rng.choice(pool) if pool else "RCP-20261202-0000000000000000"
        amount = rng.choice((None, None, rng.randint(1, 150)))

        async def build(process: Process) -> Transaction:
            links, early = process.links, False
            if kind == "capture":
                return await links.capture(target, amount, early=early)
            if kind == "void":
                return await links.void(target, early=early)
            return await links.reverse(target, amount, None, early=early)
        return build

    # ---- sending --------------------------------------------------------------------

    async def perform(self, ops: list[Op]) -> None:
        if len(ops) > 1:
            await self._bulk(ops)
            return
        op = ops[0]
        for attempt in range(RETRIES_MAX):
            if attempt and self.rng.random() < 0.2:  # the network duplicated the request
                await asyncio.gather(self._send(op), self._send(op))
            else:
                await self._send(op)
            last = op.attempts[-1].kind
            if last in (ACCEPTED, FINISHED, REFUSED) or op.key is None:
                break
            await asyncio.sleep(self.rng.choice((0.05, 0.5, 2.0)))
        self._learn(op)

    def _trace(self, process: Process, op: Op) -> None:
        a = op.attempts[-1]
        self.world.faults.log(f"{self.world.loop.time():10.4f} {process.name:>6} {op.tag} "
                              f"{op.kind} key={op.key} sent {a.sent:.4f}: {a.kind} {a.code or ''}"
                              f" {a.status or ''} {a.detail or ''}".rstrip())

    def _learn(self, op: Op) -> None:
        for a in op.attempts:
            if a.code is None:
                continue
            if op.kind == "hold":
                self.holds.append(a.code)
            elif op.kind != "void":
                self.completed.append(a.code)

    async def _process(self) -> Process:
        while not self.world.live:
            await asyncio.sleep(0.1)
        return self.rng.choice(self.world.live)

    async def _send(self, op: Op) -> None:
        process = await self._process()

        async def request() -> Any:
            tx = msgspec.structs.replace(await op.build(process), description=op.tag)
            sub = Submission(tx, "client", op.key, request_hash(tx) if op.key else None,
                             wait=op.wait)
            return await process.service.submit(sub)
        op.attempts.append(await self._answer(process, request))
        self._trace(process, op)

    async def _bulk(self, ops: list[Op]) -> None:
        process = await self._process()

        async def request() -> Any:
            subs = [Submission(msgspec.structs.replace(await op.build(process),
                                                       description=op.tag), "client",
                               wait=op.wait) for op in ops]
            ids = sorted({a for s in subs for a in s.transaction.account_ids})
            accounts = await process.service.view_accounts(ids)
            return await process.service.submit_many(subs, accounts)
        answer = await self._answer(process, request)
        if answer.kind != "many":
            for op in ops:
                op.attempts.append(answer)
            return
        for op, item in zip(ops, answer.detail, strict=True):
            op.attempts.append(_answer_of(item))
            op.attempts[-1].sent = answer.sent
            self._trace(process, op)
            self._learn(op)

    async def _answer(self, process: Process, request: Any) -> Answer:
        """Send in the process; what the client sees (a dead process: no answer)."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        answer = await self._wait(process, loop.create_task, request)
        answer.sent = sent
        return answer

    @staticmethod
    async def _wait(process: Process, create_task: Any, request: Any) -> Answer:
        task = process.run_in(create_task, request())
        task.add_done_callback(_retrieved)  # an answer after the client gave up is dropped
        done, _ = await asyncio.wait({task}, timeout=CLIENT_TIMEOUT_S)
        if not done or task.cancelled():
            return Answer(UNKNOWN, detail="no answer")
        exc = task.exception()
        if exc is not None:
            return _answer_of(exc)
        result = task.result()
        if isinstance(result, list):
            return Answer("many", detail=result)
        return _answer_of(result)


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _answer_of(result: object) -> Answer:
    if isinstance(result, Finished):
        return Answer(FINISHED, result.receipt_code, result.outcome.status)
    if isinstance(result, Accepted | Replayed):
        return Answer(ACCEPTED, result.receipt_code)
    if isinstance(result, OutcomeUnknown):
        return Answer(UNKNOWN, detail=result.code)
    if isinstance(result, KassaError):
        if result.retriable or isinstance(result, IdempotencyInProgress):
            return Answer(NOT_ACCEPTED, detail=result.code)
        return Answer(REFUSED, detail=result.code)
    raise AssertionError(f"unexpected answer {result!r}")  # a defect: the run fails


async def operator(world: World, rng: random.Random, stop: asyncio.Event) -> None:
    """Locks an account for a while, now and then (an operator's PATCH)."""
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        account = rng.choice(ACCOUNTS)
        try:
            await world.store.set_status(account, "locked")
        except KassaError:
            continue
        await asyncio.sleep(rng.uniform(0.1, 1.0))
        while True:  # the unlock is retried until the database takes it
            try:
                await world.store.set_status(account, "active")
                break
            except KassaError:
                await asyncio.sleep(0.5)
