"""A failed transaction's error names the account at fault (`param`): the rules that fail
it (core/ledger/decide.py, linked.py) and the replay after native.post_batch
(core/ledger/faults.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import native
from core.ledger.decide import decide_batch, prevalidate
from core.ledger.faults import INT64_MAX, INT64_MIN, money_faults
from core.ledger.linked import LedgerState, Target, decide_linked
from core.ledger.models import AccountSnapshot, Leg, Transaction
from core.ledger.status import COMPLETED, FAILED

NOW = "2026-12-07T00:00:00.000000Z"


def accounts(**balances: tuple[int, int | None]) -> dict[str, AccountSnapshot]:
    made = {k: AccountSnapshot(k, "USD", "active", b, limit) for k, (b, limit) in balances.items()}
    made["@world:USD"] = AccountSnapshot("@world:USD", "USD", "active", 0, None)
    return made


def transfer(*legs: tuple[str, str, int], **kwargs: object) -> Transaction:
    return Transaction("transfer", "USD", tuple(Leg(*leg) for leg in legs), **kwargs)  # type: ignore[arg-type]


def test_a_multi_leg_transfer_names_the_source_that_lacks_funds() -> None:
    accts = accounts(a=(100, 0), b=(0, 0), c=(0, 0))
    # b receives 50 from a, then gives 80 to c: b is the account short of 30.
    tasks = [(1, "R1", transfer(("a", "b", 50), ("b", "c", 80)))]
    (outcome,) = decide_batch(tasks, accts, NOW).outcomes
    assert outcome.status == FAILED and outcome.error is not None
    assert (outcome.error.code, outcome.error.param) == ("insufficient_funds", "b")


def test_the_fault_is_found_against_the_balances_earlier_tasks_of_the_batch_left() -> None:
    accts = accounts(a=(100, 0), b=(0, 0), c=(0, 0))
    tasks = [(1, "R1", transfer(("a", "b", 60))),
             (2, "R2", transfer(("b", "c", 10), ("a", "c", 60))),  # a has 40 left
             (3, "R3", transfer(("b", "c", 70)))]  # b has 60
    outcomes = decide_batch(tasks, accts, NOW).outcomes
    assert [o.error.param if o.error else None for o in outcomes] == [None, "a", "b"]


def test_static_rules_name_the_account() -> None:
    accts = accounts(a=(100, 0))
    accts["locked"] = AccountSnapshot("locked", "USD", "locked", 0, 0)
    accts["euro"] = AccountSnapshot("euro", "EUR", "active", 0, 0)
    tasks = [(1, "R1", transfer(("a", "ghost", 1))), (2, "R2", transfer(("a", "locked", 1))),
             (3, "R3", transfer(("euro", "a", 1)))]
    errors = [o.error for o in decide_batch(tasks, accts, NOW).outcomes]
    assert [(e.code, e.param) for e in errors if e is not None] == [
        ("account_not_found", "ghost"), ("account_inactive", "locked"),
        ("currency_mismatch", "euro")]


def test_an_overflow_names_the_account_leaving_the_range() -> None:
    accts = accounts(a=(100, 0), rich=(INT64_MAX - 5, 0))
    (outcome,) = decide_batch([(1, "R1", transfer(("a", "rich", 10)))], accts, NOW).outcomes
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.param) == ("amount_overflow", "rich")
    early = prevalidate(transfer(("a", "rich", 10)), accts)
    assert early is not None and (early.code, early.param) == ("amount_overflow", "rich")


def test_prevalidation_names_the_account_short_of_funds() -> None:
    error = prevalidate(transfer(("a", "b", 150)), accounts(a=(100, 0), b=(0, 0)))
    assert error is not None and (error.code, error.param) == ("insufficient_funds", "a")


def test_holds_and_captures_name_their_account() -> None:
    accts = accounts(a=(100, 0), b=(0, 0))
    state = LedgerState.of(accts, {})
    hold = decide_linked(1, "H1", transfer(("a", "b", 150), hold_expires_in_s=60), state, NOW)
    assert hold.outcome.error is not None and hold.outcome.error.param == "a"
    world = decide_linked(2, "H2", transfer(("@world:USD", "b", 1), hold_expires_in_s=60),
                          state, NOW)
    assert world.outcome.error is not None and world.outcome.error.param == "@world:USD"
    # A reversal whose destination has spent the money since: it posts through native,
    # whose failure is replayed for the account.
    original = Target("T1", 3, "transfer", COMPLETED, (Leg("a", "b", 50),), is_hold=False)
    state = LedgerState.of(accounts(a=(100, 0), b=(10, 0)), {"T1": original})
    reversal = decide_linked(4, "V1", Transaction("reversal", "USD", (Leg("b", "a", 50),),
                                                  target="T1"), state, NOW)
    assert reversal.outcome.error is not None
    assert (reversal.outcome.error.code, reversal.outcome.error.param) == (
        "insufficient_funds", "b")


NAMES = ["a", "b", "c", "d"]
LEGS = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMES),
                          st.integers(1, 200)).filter(lambda leg: leg[0] != leg[1]),
                min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-50, 300), min_size=4, max_size=4), st.lists(LEGS, max_size=8))
def test_every_money_failure_names_an_account_it_would_take_below_its_floor(
        start: list[int], batch: list[list[tuple[str, str, int]]]) -> None:
    accts = {n: AccountSnapshot(n, "USD", "active", b, 50) for n, b in zip(NAMES, start, strict=True)}
    balances = {n: a.balance for n, a in accts.items()}
    floors = {n: -50 for n in NAMES}
    tasks = list(enumerate(batch))
    results, _ = native.post_batch(dict(balances), floors, tasks)
    faults = money_faults(accts, tasks, results)
    for (_, legs), code, fault in zip(tasks, results, faults, strict=True):
        if code is None:
            assert fault is None
            for source, destination, amount in legs:
                balances[source] -= amount
                balances[destination] += amount
            continue
        assert code == "insufficient_funds" and fault is not None
        after = balances[fault] + sum(n for _, d, n in legs if d == fault) - sum(
            n for s, _, n in legs if s == fault)
        assert after < -50 and after < balances[fault]
    assert INT64_MIN < min(balances.values())
