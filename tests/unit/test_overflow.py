"""Balances and `held` at the int64 edges (issue 18, D3): every value the decisions write
stays a bigint, and what would leave the range is `amount_overflow`, on pre-validation and
on execution alike, with the compiled post_batch and its pure-Python twin alike.

`@world:<CUR>` is never the source of a hold (it has no balance to reserve: its `held`
grew without bound until the database refused the journals).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import native
from core.ledger.decide import BatchDecision, decide_batch, prevalidate, source_debits
from core.ledger.errors import BusinessRuleError
from core.ledger.linked import CAPTURE, REVERSAL, VOID, Target, decide_with_linked, is_linked
from core.ledger.models import AMOUNT_MAX, AccountSnapshot, Leg, Transaction, world_account
from core.ledger.status import COMPLETED, FAILED, HELD, VOIDED
from core.pipeline.submission import Finished
from native import _py
from tests.unit.conftest import PipelineFactory, submission

try:
    from native import _speedups
except ImportError:
    _speedups = None

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
NOW = "2026-12-07T00:00:00.000000Z"
WORLD = world_account("USD")
IMPLS = [pytest.param(_py, id="twin"),
         pytest.param(_speedups, id="cython", marks=pytest.mark.skipif(
             _speedups is None, reason="native._speedups is not built"))]
TWINS = [m for m in (_py, _speedups) if m is not None]


@contextlib.contextmanager
def using(impl: ModuleType) -> Iterator[None]:
    """The decisions call native.post_batch at call time: run them on `impl`'s."""
    saved = native.post_batch
    native.post_batch = impl.post_batch
    try:
        yield
    finally:
        native.post_batch = saved


def snapshot(account_id: str, balance: int, limit: int | None, held: int = 0) -> AccountSnapshot:
    return AccountSnapshot(account_id, "USD", "active", balance, limit, held=held)


def hold(*legs: Leg) -> Transaction:
    return Transaction("transfer", "USD", legs, hold_expires_in_s=60)


def decide_one(tx: Transaction, accounts: dict[str, AccountSnapshot],
               targets: dict[str, Target] | None = None) -> BatchDecision:
    """One journal decided as core/pipeline/executor.py decides a batch of it."""
    task = [(1, "RCP-1", tx)]
    named = {a: accounts[a] for a in tx.account_ids}
    if not is_linked(tx):
        return decide_batch(task, named, NOW)
    return decide_with_linked(decide_batch([], named, NOW), task, named, targets or {}, NOW)


def code_of(decision: BatchDecision) -> str | None:
    (outcome,) = decision.outcomes
    return None if outcome.error is None else outcome.error.code


# ---------------------------------------------------------------- D3 as reported


@pytest.mark.parametrize("impl", IMPLS)
def test_holds_from_world_are_refused_before_held_can_overflow(impl: ModuleType) -> None:
    """D3: 1,030 holds of 2**53-1 from @world:USD. Before, the 1,025th took `held` past
    int64 and the database refused the journals (invalid_request, CRITICAL). Now every one
    is refused, early and on execution, and nothing is held."""
    accounts = {WORLD: snapshot(WORLD, 0, None), "a": snapshot("a", 0, 0)}
    tx = hold(Leg(WORLD, "a", AMOUNT_MAX))
    error = prevalidate(tx, accounts)
    assert error is not None and error.code == "invalid_request" and "hold" in error.message
    with using(impl):
        for _ in range(1030):
            decision = decide_one(tx, accounts)
            assert code_of(decision) == "invalid_request"
            assert decision.held == {} and decision.balances == {}
    # A withdrawal hold names @world as its destination only: still allowed.
    ok = Transaction("withdrawal", "USD", (Leg("a", WORLD, 5),), hold_expires_in_s=60)
    assert prevalidate(ok, {**accounts, "a": snapshot("a", 10, 0)}) is None


@pytest.mark.parametrize("impl", IMPLS)
def test_held_reaching_int64_max_then_amount_overflow(impl: ModuleType) -> None:
    """A user account that may hold more than int64 allows (balance near the top, an
    overdraft limit): `held` stops at the edge with amount_overflow, early and on
    execution, and is never written past it."""
    edge = INT64_MAX - 1023
    accounts = {"rich": snapshot("rich", edge, AMOUNT_MAX, held=edge), "b": snapshot("b", 0, 0)}
    exact = hold(Leg("rich", "b", 1023))
    over = hold(Leg("rich", "b", 1024))
    assert prevalidate(exact, accounts) is None
    error = prevalidate(over, accounts)
    assert error is not None and error.code == "amount_overflow" and "held" in error.message
    with using(impl):
        assert decide_one(exact, accounts).held == {"rich": INT64_MAX}
        decision = decide_one(over, accounts)
    assert code_of(decision) == "amount_overflow" and decision.held == {}
    # Two legs from the same source count together.
    two = hold(Leg("rich", "b", 600), Leg("rich", "b", 600))
    assert prevalidate(two, accounts) is not None
    with using(impl):
        assert code_of(decide_one(two, accounts)) == "amount_overflow"


@pytest.mark.parametrize("impl", IMPLS)
def test_balance_edges_single_multi_leg_capture_and_reversal(impl: ModuleType) -> None:
    top = INT64_MAX - 1023
    accounts = {WORLD: snapshot(WORLD, INT64_MIN + 1024, None), "top": snapshot("top", top, 0),
                "a": snapshot("a", 0, AMOUNT_MAX), "c": snapshot("c", 0, 0)}
    deposit = Transaction("deposit", "USD", (Leg(WORLD, "a", 1025),))
    transfer = Transaction("transfer", "USD", (Leg("a", "top", 1024),))
    # Nets to nothing on "top", but posts leg by leg as the executor does: out of range between.
    multi = Transaction("transfer", "USD", (Leg("a", "top", 2000), Leg("top", "c", 2000)))
    capture = Transaction(CAPTURE, "USD", (Leg("a", "top", 1024),), target="H")
    reversal = Transaction(REVERSAL, "USD", (Leg("a", "top", 1024),), target="T")
    pending = Target("H", 7, "transfer", HELD, (Leg("a", "top", 1024),), True)
    original = Target("T", 8, "transfer", COMPLETED, (Leg("top", "a", 5000),), False)
    accounts["a"] = snapshot("a", 0, AMOUNT_MAX, held=1024)
    for tx, targets in ((deposit, {}), (transfer, {}), (multi, {}), (capture, {"H": pending}),
                        (reversal, {"T": original})):
        error = prevalidate(tx, accounts)
        assert error is not None and error.code == "amount_overflow", tx
        with using(impl):
            decision = decide_one(tx, accounts, targets)
        assert code_of(decision) == "amount_overflow", tx
        assert decision.balances == {} and decision.held == {} and decision.ledger_columns[0] == []
    assert pending.status == HELD and original.reversed == 0
    # One minor unit less fits exactly.
    fits = Transaction("deposit", "USD", (Leg(WORLD, "a", 1024),))
    assert prevalidate(fits, accounts) is None
    with using(impl):
        assert decide_one(fits, accounts).balances[WORLD] == INT64_MIN


# ---------------------------------------------------------------- Hypothesis: the edges


def reference(tx: Transaction, accounts: dict[str, AccountSnapshot], target: Target | None
              ) -> str | None:
    """The expected error code, by plain arithmetic on unbounded ints (docs/api.md)."""
    balance = {a: s.balance for a, s in accounts.items()}
    held = {a: s.held for a, s in accounts.items()}

    def floor(a: str) -> int | None:
        limit = accounts[a].overdraft_limit
        return None if limit is None else held[a] - limit

    if tx.type == VOID:
        return None if target is not None and target.status == HELD else "hold_not_pending"
    if tx.hold_expires_in_s is not None:
        debits = source_debits(tx.legs)
        if any(accounts[a].overdraft_limit is None for a in debits):
            return "invalid_request"
        for a, amount in debits.items():
            if held[a] + amount > INT64_MAX:
                return "amount_overflow"
            f = floor(a)
            if f is not None and balance[a] - amount < f:
                return "insufficient_funds"
        return None
    if tx.type == CAPTURE:
        assert target is not None
        if target.status != HELD:
            return "hold_not_pending"
        for a, amount in source_debits(target.legs).items():
            held[a] -= amount
    if tx.type == REVERSAL:
        assert target is not None
        if target.reversed + tx.amount > target.amount:
            return "reversal_exceeds_original"
    before = dict(balance)
    for leg in tx.legs:
        balance[leg.source] -= leg.amount
        balance[leg.destination] += leg.amount
        if balance[leg.source] < INT64_MIN or balance[leg.destination] > INT64_MAX:
            return "amount_overflow"
    for a, value in balance.items():
        f = floor(a)
        if f is not None and value < f and value < before[a]:
            return "insufficient_funds"
    return None


ACCOUNT_IDS = [WORLD, "top", "full", "a", "b"]
near = st.one_of(st.integers(0, 4096), st.integers(0, 3 * AMOUNT_MAX))
big = st.one_of(st.just(AMOUNT_MAX), st.integers(AMOUNT_MAX - 2048, AMOUNT_MAX),
                st.integers(1, 4096), st.integers(1, AMOUNT_MAX))


@st.composite
def ledgers(draw: st.DrawFn) -> dict[str, AccountSnapshot]:
    """Accounts at the edges: @world near INT64_MIN, users near INT64_MAX with `held` near
    it too (what is held never exceeding balance + overdraft limit)."""
    limit_full = draw(st.sampled_from([0, AMOUNT_MAX]))
    top = INT64_MAX - draw(near)
    full = INT64_MAX - draw(near)
    full_held = min(full + limit_full, INT64_MAX - draw(near))
    b_limit = draw(st.sampled_from([0, 1000, AMOUNT_MAX]))
    return {WORLD: snapshot(WORLD, INT64_MIN + draw(near), None),
            "top": snapshot("top", top, 0, held=draw(st.integers(0, 2 * AMOUNT_MAX))),
            "full": snapshot("full", full, limit_full, held=full_held),
            "a": snapshot("a", draw(st.integers(0, 10 * AMOUNT_MAX)), AMOUNT_MAX),
            "b": snapshot("b", draw(st.integers(-b_limit, 4096)), b_limit)}


OPS = st.tuples(st.sampled_from(["deposit", "withdrawal", "transfer", "multi", "hold", "hold",
                                 CAPTURE, CAPTURE, VOID, REVERSAL, REVERSAL]),
                st.lists(st.sampled_from(ACCOUNT_IDS), min_size=6, max_size=6), big, big,
                st.booleans())


@dataclass
class Journal:
    tx: Transaction
    status: str
    reversed: int = 0


@dataclass
class World:
    accounts: dict[str, AccountSnapshot]
    journals: dict[str, Journal] = field(default_factory=dict)

    def target(self, code: str) -> Target | None:
        j = self.journals.get(code)
        if j is None:
            return None
        return Target(code, int(code.split("-")[1]), j.tx.type, j.status, j.tx.legs,
                      j.tx.hold_expires_in_s is not None, j.reversed, "USD")


def _legs(pick: list[str], amount: int, second: int, n: int) -> tuple[Leg, ...]:
    legs = []
    for i in range(n):
        source = pick[2 * i]
        destination = pick[2 * i + 1] if pick[2 * i + 1] != source else (
            "a" if source != "a" else "b")
        legs.append(Leg(source, destination, amount if i == 0 else second))
    return tuple(legs)


def request(op: tuple[str, list[str], int, int, bool], world: World) -> Transaction | None:
    kind, pick, amount, second, flag = op
    users = [a for a in pick if a != WORLD] or ["a"]
    if kind == "deposit":
        return Transaction("deposit", "USD", (Leg(WORLD, users[0], amount),))
    if kind == "withdrawal":
        return Transaction("withdrawal", "USD", (Leg(users[0], WORLD, amount),),
                           hold_expires_in_s=60 if flag else None)
    if kind in ("transfer", "multi", "hold"):
        legs = _legs(pick, amount, second, 1 if kind == "transfer" else 3 if flag else 2)
        return Transaction("transfer", "USD", legs,
                           hold_expires_in_s=60 if kind == "hold" else None)
    holds = [c for c, j in world.journals.items()
             if j.tx.hold_expires_in_s is not None and j.status == HELD]
    if kind in (CAPTURE, VOID):
        if not holds:
            return None
        code = holds[amount % len(holds)]
        legs = world.journals[code].tx.legs
        if kind == CAPTURE and flag and len(legs) == 1:
            legs = (legs[0]._replace(amount=1 + second % legs[0].amount),)
        return Transaction(kind, "USD", legs, target=code)
    done = [c for c, j in world.journals.items()
            if j.status == COMPLETED and j.tx.hold_expires_in_s is None
            and j.tx.type in ("transfer", "deposit", "withdrawal", CAPTURE)]
    if not done:
        return None
    code = done[amount % len(done)]
    legs = world.journals[code].tx.legs
    if flag and len(legs) == 1:
        legs = (legs[0]._replace(amount=1 + second % legs[0].amount),)
    return Transaction(REVERSAL, "USD", tuple(Leg(g.destination, g.source, g.amount) for g in legs),
                       target=code)


def decisions_of(impl: ModuleType, tx: Transaction, world: World, code: str) -> BatchDecision:
    target = world.target(tx.target) if tx.target else None
    targets = {tx.target: target} if tx.target and target is not None else {}
    named = {a: world.accounts[a] for a in tx.account_ids}
    task = [(int(code.split("-")[1]), code, tx)]
    with using(impl):
        if not is_linked(tx):
            return decide_batch(task, named, NOW)
        return decide_with_linked(decide_batch([], named, NOW), task, named, targets, NOW)


def same(one: BatchDecision, other: BatchDecision) -> bool:
    return (one.outcomes, one.balances, one.held, one.ledger_columns) == (
        other.outcomes, other.balances, other.held, other.ledger_columns)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=ledgers(), ops=st.lists(OPS, min_size=1, max_size=25))
def test_at_the_int64_edges_every_written_value_is_a_bigint(
        start: dict[str, AccountSnapshot], ops: list[tuple[str, list[str], int, int, bool]]
) -> None:
    """Journals one after another from accounts at the int64 edges: each is decided as the
    unbounded-int reference says (amount_overflow exactly when a balance or `held` would
    leave int64), the compiled and the pure-Python post_batch decide identically, every
    balance, `held` and balance_after written is within int64 and money is conserved, and
    pre-validation on the same view gives the same early answer."""
    world = World(dict(start))
    for number, op in enumerate(ops, start=1):
        tx = request(op, world)
        if tx is None:
            continue
        code = f"RCP-{number}"
        target = world.target(tx.target) if tx.target else None
        want = reference(tx, world.accounts, target)
        decisions = [decisions_of(impl, tx, world, code) for impl in TWINS]
        decision = decisions[0]
        assert all(same(decision, d) for d in decisions[1:]), (tx, decisions)
        (outcome,) = decision.outcomes
        got = None if outcome.error is None else outcome.error.code
        assert got == want, (tx, world.accounts, got, want)
        event(f"{'hold' if tx.hold_expires_in_s else tx.type}: {got or outcome.status}")
        early = prevalidate(tx, world.accounts)
        if tx.type == CAPTURE:  # early: only the range, the hold's own funds are reserved
            assert (early is not None) == (want == "amount_overflow"), (tx, early, want)
        elif tx.type not in (VOID, REVERSAL):
            assert (None if early is None else early.code) == want, (tx, early, want)
        elif tx.type == REVERSAL and want in (None, "amount_overflow", "insufficient_funds"):
            assert (None if early is None else early.code) == want, (tx, early, want)
        values = [*decision.balances.values(), *decision.held.values(), *decision.ledger_columns[4]]
        assert all(INT64_MIN <= v <= INT64_MAX and type(v) is int for v in values)
        assert all(0 <= v for v in decision.held.values())
        before = sum(world.accounts[a].balance for a in decision.balances)
        assert sum(decision.balances.values()) == before
        # Write it, as the adapter does.
        for account_id, balance in decision.balances.items():
            old = world.accounts[account_id]
            world.accounts[account_id] = snapshot(account_id, balance, old.overdraft_limit,
                                                  held=decision.held.get(account_id, old.held))
        world.journals[code] = Journal(tx, outcome.status)
        for changed in decision.targets:
            journal = world.journals[changed.receipt_code]
            journal.status, journal.reversed = changed.status, changed.reversed
        if outcome.status == FAILED:
            assert decision.balances == {} and decision.held == {} and decision.targets == []
        else:
            assert outcome.status in (COMPLETED, HELD, VOIDED)


# ---------------------------------------------------------------- through the pipeline


async def test_the_pipeline_refuses_before_recording(make_pipeline: PipelineFactory) -> None:
    """Single and batch submissions: a hold from @world is 400 invalid_request, a balance or
    `held` leaving int64 is 422 amount_overflow, both before anything is recorded."""
    p = await make_pipeline()
    p.store.add_account("rich", INT64_MAX - 5, overdraft_limit=AMOUNT_MAX, held=INT64_MAX - 5)
    journals = len(p.store.journals)
    world_hold = hold(Leg(WORLD, "bob", AMOUNT_MAX))
    over_deposit = Transaction("deposit", "USD", (Leg(WORLD, "rich", 6),))
    over_hold = hold(Leg("rich", "bob", 6))
    for tx, code in ((world_hold, "invalid_request"), (over_deposit, "amount_overflow"),
                     (over_hold, "amount_overflow")):
        with pytest.raises(BusinessRuleError) as refused:
            await p.service.submit(submission(tx, wait=True))
        assert refused.value.code == code, tx
    subs = [submission(tx) for tx in (world_hold, over_deposit, over_hold)]
    accounts = await p.cache.get_accounts(sorted({a for s in subs for a in s.transaction.account_ids}))
    answers = await p.service.submit_many(subs, accounts)
    assert [getattr(a, "code", None) for a in answers] == [
        "invalid_request", "amount_overflow", "amount_overflow"]
    assert len(p.store.journals) == journals
    fits = await p.service.submit(submission(hold(Leg("rich", "bob", 5)), wait=True))
    assert isinstance(fits, Finished) and fits.outcome.status == HELD
    assert p.store.accounts["rich"].held == INT64_MAX


async def test_a_stale_cached_view_near_the_edge_does_not_refuse(make_pipeline: PipelineFactory
                                                                ) -> None:
    """amount_overflow is answered early only by the database's view, as insufficient_funds:
    a cached balance or `held` near the edge that has moved since reads again."""
    p = await make_pipeline()
    p.cache.stale(snapshot("bob", INT64_MAX - 1, 0))  # bob has spent it since
    p.cache.stale(snapshot("alice", 100, 0, held=INT64_MAX - 1))  # the holds were voided
    single = await p.service.submit(submission(
        Transaction("transfer", "USD", (Leg("alice", "bob", 10),)), wait=True))
    assert isinstance(single, Finished) and single.outcome.status == COMPLETED
    subs = [submission(hold(Leg("alice", "bob", 10))), submission(
        Transaction("deposit", "USD", (Leg(WORLD, "bob", 5),)))]
    accounts = await p.cache.get_accounts(["@world:USD", "alice", "bob"])
    answers = await p.service.submit_many(subs, accounts)
    assert not any(isinstance(a, BusinessRuleError) for a in answers), answers
    assert p.cache.fresh_reads == 2
