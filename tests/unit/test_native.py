"""native/: the compiled functions against their pure-Python twins, and the twins' rules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import native
from native import _py

try:
    from native import _speedups
except ImportError:  # test_extension_is_built says so; the parity tests skip
    _speedups = None

ROOT = Path(__file__).resolve().parents[2]
INT64_MIN, INT64_MAX = _py.INT64_MIN, _py.INT64_MAX
AMOUNT_MAX = (1 << 53) - 1
CROCKFORD = _py.CROCKFORD
needs_extension = pytest.mark.skipif(_speedups is None, reason="native._speedups is not built")
IMPLS = [pytest.param(_py, id="twin"), pytest.param(_speedups, id="cython", marks=needs_extension)]
PARITY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(fn, *args):
    """What a call did: its result, or its exception's type and args."""
    try:
        return "ok", fn(*args)
    except Exception as e:  # noqa: BLE001 - the exception itself is what we compare
        return "raised", type(e), e.args


# ---------------------------------------------------------------- the extension is used


@pytest.mark.skipif(os.environ.get("KASSA_NO_EXTENSIONS") == "1", reason="twins forced")
def test_extension_is_built() -> None:
    """Fails when the install silently fell back to the twins."""
    assert _speedups is not None, "native._speedups did not import: the extension was not built"
    assert native.USING_EXTENSIONS
    assert native.post_batch is _speedups.post_batch
    assert native.receipt_codes is _speedups.receipt_codes
    assert native.block_codes is _speedups.block_codes


def test_env_var_forces_the_twins() -> None:
    code = "import native; print(native.USING_EXTENSIONS, native.post_batch.__module__)"
    env = {**os.environ, "KASSA_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, timeout=60,
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "native._py"]


# ---------------------------------------------------------------- receipt_codes: the rules

EPOCH = _py.EPOCH_MS
DAY_MS = 86_400_000


def decode(code: str) -> tuple[str, int, int, int, int]:
    """(date, ms, node, pid, seq) of a code, reading the documented bit layout."""
    prefix, day, body = code.split("-")
    assert prefix == "RCP" and len(day) == 8 and len(body) == 16
    value = 0
    for char in body:
        value = value * 32 + CROCKFORD.index(char)
    return day, (value >> 39) + EPOCH, (value >> 29) & 1023, (value >> 7) & (2**22 - 1), value & 127


@pytest.mark.parametrize("impl", IMPLS)
def test_receipt_code_layout(impl) -> None:
    codes, ms, seq = impl.receipt_codes(1024 + 7, 2**22 + 99, 0, 0, EPOCH + DAY_MS - 1, 2)
    assert [decode(c) for c in codes] == [
        ("20200101", EPOCH + DAY_MS - 1, 7, 99, 0),
        ("20200101", EPOCH + DAY_MS - 1, 7, 99, 1),
    ]
    assert (ms, seq) == (EPOCH + DAY_MS - 1, 1)
    day_two, _, _ = impl.receipt_codes(7, 99, 0, 0, EPOCH + DAY_MS, 1)
    assert decode(day_two[0])[0] == "20200102"
    assert impl.receipt_codes(0, 0, 0, 0, 1_709_164_800_000, 1)[0][0].startswith("RCP-20240229-")


@pytest.mark.parametrize("impl", IMPLS)
def test_receipt_clock_never_goes_back(impl) -> None:
    now = EPOCH + 10**9
    codes, ms, seq = impl.receipt_codes(1, 2, now, 5, now - 60_000, 3)
    assert [decode(c)[1:] for c in codes] == [(now, 1, 2, s) for s in (6, 7, 8)]
    assert (ms, seq) == (now, 8)


@pytest.mark.parametrize("impl", IMPLS)
def test_receipt_sequence_overflow_borrows_next_ms(impl) -> None:
    now = EPOCH + 10**9
    codes, ms, seq = impl.receipt_codes(1, 2, 0, 0, now, 300)
    assert codes == sorted(codes) and len(set(codes)) == 300
    assert [decode(c)[1] - now for c in codes[126:130]] == [0, 0, 1, 1]
    assert (ms, seq) == (now + 2, 300 - 2 * 128 - 1)
    # The state carries over: the next call continues strictly after.
    more, _, _ = impl.receipt_codes(1, 2, ms, seq, now, 1)
    assert more[0] > codes[-1]


# ------------------------------------------------------------------- receipt_codes: parity

realistic_ms = st.integers(EPOCH - 2**40, EPOCH + 2**41 + 2**40)
year_9999_end = st.integers(253_402_300_800_000 - 5_000, 253_402_300_800_000 + 5_000)
any_int = st.integers(-(2**70), 2**70)
state_ms = st.one_of(realistic_ms, year_9999_end, st.integers(-(2**62), 2**62), any_int)
odd_value = st.one_of(st.booleans(), st.floats(allow_nan=False), st.none(), st.just(2**61 + 1))


@needs_extension
@PARITY
@given(
    node=st.one_of(st.integers(0, 1023), any_int),
    pid=st.one_of(st.integers(0, 2**22), any_int),
    last_ms=state_ms,
    last_seq=st.one_of(st.integers(-3, 130), any_int),
    now_delta=st.one_of(st.integers(-3, 3), st.integers(-(10**9), 10**9)),
    now_abs=st.none() | state_ms,
    count=st.integers(-1, 300),
)
def test_receipt_codes_parity(node, pid, last_ms, last_seq, now_delta, now_abs, count) -> None:
    now = last_ms + now_delta if now_abs is None else now_abs
    args = (node, pid, last_ms, last_seq, now, count)
    assert outcome(_speedups.receipt_codes, *args) == outcome(_py.receipt_codes, *args)


@needs_extension
@PARITY
@given(
    args=st.lists(st.one_of(st.integers(0, EPOCH + 10**6), odd_value), min_size=5, max_size=5),
    count=st.one_of(st.integers(0, 3), odd_value.filter(lambda v: not isinstance(v, int) or v < 4)),
)
def test_receipt_codes_parity_odd_input(args, count) -> None:
    args = (*args, count)
    assert outcome(_speedups.receipt_codes, *args) == outcome(_py.receipt_codes, *args)


# ------------------------------------------------------------------ block_codes: the rules

SPAN = _py.BLOCK_SPAN
BLOCK_NO_MAX = _py.BLOCK_NO_MAX


def value_of(code: str) -> int:
    value = 0
    for char in code.split("-")[2]:
        value = value * 32 + CROCKFORD.index(char)
    return value


@pytest.mark.parametrize("impl", IMPLS)
def test_block_code_layout(impl) -> None:
    codes = impl.block_codes(77, SPAN - 2, 2, EPOCH + DAY_MS - 1)
    assert [c.split("-")[1] for c in codes] == ["20200101", "20200101"]
    assert [value_of(c) for c in codes] == [(1 << 79) | (77 << 16) | o for o in (SPAN - 2, SPAN - 1)]
    top = impl.block_codes(BLOCK_NO_MAX, 0, 1, 1_709_164_800_000)[0]
    assert top.startswith("RCP-20240229-") and value_of(top) == (1 << 80) - SPAN
    assert impl.block_codes(0, 0, 1, 0) == ["RCP-19700101-G000000000000000"]
    assert impl.block_codes(5, 10, 0, 0) == []


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("args", [(-1, 0, 1), (BLOCK_NO_MAX + 1, 0, 1), (0, -1, 1), (0, 0, -1),
                                  (0, SPAN - 1, 2), (0, SPAN, 1)])
def test_block_codes_refuse_offsets_outside_the_block(impl, args) -> None:
    with pytest.raises(ValueError, match="no offsets"):
        impl.block_codes(*args, EPOCH)


@pytest.mark.parametrize("impl", IMPLS)
def test_the_layouts_never_meet(impl) -> None:
    """Bit 79 is set in every block code and clear in every process code, for any instant:
    the process layout's millisecond field no longer reaches it (it wraps, the date moves on)."""
    instants = [EPOCH - 10**12, EPOCH, EPOCH + (1 << 40) - 1, EPOCH + (1 << 40), EPOCH + (1 << 41) + 5,
                253_402_300_799_999]
    for now in instants:
        codes, _, _ = impl.receipt_codes(1023, 2**22 - 1, 0, 0, now, 3)
        assert all(value_of(c) >> 79 == 0 for c in codes), now
    wrapped = impl.receipt_codes(1, 1, 0, 0, EPOCH + (1 << 40), 1)[0][0]
    assert wrapped == impl.receipt_codes(1, 1, 0, 0, EPOCH, 1)[0][0].replace("20200101", "20541103")
    for block in (0, 1, 2**40, BLOCK_NO_MAX):
        assert value_of(impl.block_codes(block, 0, 1, EPOCH)[0]) >> 79 == 1
    # Visible too: a block code's first character is G..Z, a process code's 0..F.
    assert impl.block_codes(0, 0, 1, EPOCH)[0][13] == "G"


# ------------------------------------------------------------------- block_codes: parity

block_no = st.one_of(st.integers(0, 2**20), st.integers(BLOCK_NO_MAX - 5, BLOCK_NO_MAX + 5),
                     st.integers(2**61 - 3, 2**61 + 3), any_int)
offset = st.one_of(st.integers(-2, SPAN + 2), any_int)


@needs_extension
@PARITY
@given(block=block_no, first=offset, count=st.one_of(st.integers(-2, 40), st.integers(SPAN - 3, SPAN + 1)),
       now=state_ms)
def test_block_codes_parity(block, first, count, now) -> None:
    args = (block, first, count, now)
    assert outcome(_speedups.block_codes, *args) == outcome(_py.block_codes, *args)


@needs_extension
@PARITY
@given(args=st.lists(st.one_of(st.integers(0, 3), odd_value), min_size=4, max_size=4))
def test_block_codes_parity_odd_input(args) -> None:
    assert outcome(_speedups.block_codes, *args) == outcome(_py.block_codes, *args)


# ------------------------------------------------------------------ post_batch: the rules


def run(impl, balances, floors, tasks):
    balances = dict(balances)
    results, columns = impl.post_batch(balances, floors, tasks)
    return results, columns, balances


@pytest.mark.parametrize("impl", IMPLS)
def test_post_batch_columns_and_running_balances(impl) -> None:
    balances, floors = {"a": 100, "b": 0, "c": 5}, {"a": 0, "b": 0, "c": 0}
    tasks = [(7, [("a", "b", 30)]), (8, [("a", "c", 10), ("b", "c", 30)])]
    results, columns, after = run(impl, balances, floors, tasks)
    assert results == [None, None]
    assert columns == [
        [7, 7, 8, 8, 8, 8],
        ["a", "b", "a", "c", "b", "c"],
        [native.DEBIT, native.CREDIT] * 3,
        [30, 30, 10, 10, 30, 30],
        [70, 30, 60, 15, 0, 45],
    ]
    assert after == {"a": 60, "b": 0, "c": 45}


@pytest.mark.parametrize("impl", IMPLS)
def test_post_batch_insufficient_funds_posts_no_leg(impl) -> None:
    balances, floors = {"a": 100, "b": 10, "c": 0}, {"a": 0, "b": 0, "c": 0}
    tasks = [(1, [("a", "c", 50), ("b", "c", 11)]), (2, [("b", "c", 10)])]
    results, columns, after = run(impl, balances, floors, tasks)
    assert results == ["insufficient_funds", None]
    assert columns[0] == [2, 2]
    assert after == {"a": 100, "b": 0, "c": 10}


@pytest.mark.parametrize("impl", IMPLS)
def test_post_batch_floors(impl) -> None:
    # Overdraft down to -limit; INT64_MIN is unlimited; an account already below its
    # floor may receive credits, and may be debited if it ends no lower than it was.
    balances = {"od": 0, "free": 0, "low": -50, "x": 0}
    floors = {"od": -100, "free": INT64_MIN, "low": 0, "x": 0}
    tasks = [
        (1, [("od", "x", 100)]),
        (2, [("od", "x", 1)]),
        (3, [("free", "x", AMOUNT_MAX)]),
        (4, [("x", "low", 20)]),
        (5, [("low", "x", 5), ("x", "low", 5)]),
        (6, [("low", "x", 1)]),
    ]
    results, _, after = run(impl, balances, floors, tasks)
    assert results == [None, "insufficient_funds", None, None, None, "insufficient_funds"]
    assert after == {"od": -100, "free": -AMOUNT_MAX, "low": -30, "x": AMOUNT_MAX + 80}


@pytest.mark.parametrize("impl", IMPLS)
def test_post_batch_overflow_is_detected_not_wrapped(impl) -> None:
    balances = {"rich": INT64_MAX - 5, "poor": INT64_MIN + 5, "m": 0}
    floors = dict.fromkeys(balances, INT64_MIN)
    tasks = [
        (1, [("m", "rich", 6)]),
        (2, [("poor", "m", 6)]),
        (3, [("poor", "poor", 6)]),  # the source dips below int64 mid-leg
        (4, [("m", "rich", 5), ("rich", "m", 5)]),
        (5, [("poor", "m", 5)]),
    ]
    results, columns, after = run(impl, balances, floors, tasks)
    assert results == ["amount_overflow"] * 3 + [None, None]
    assert after == {"rich": INT64_MAX - 5, "poor": INT64_MIN, "m": 5}
    assert columns[4] == [-5, INT64_MAX, INT64_MAX - 5, 0, INT64_MIN, 5]


@pytest.mark.parametrize("impl", IMPLS)
def test_post_batch_overflowing_leg_stops_the_trial(impl) -> None:
    # The overflowing leg's destination is still read; the legs after it are not.
    balances, floors = {"poor": INT64_MIN, "x": 0}, {"poor": INT64_MIN, "x": 0}
    with pytest.raises(KeyError, match="zz"):
        impl.post_batch(balances, floors, [(1, [("poor", "zz", 1)])])
    tasks = [(1, [("poor", "x", 1), ("zz", "x", 1)])]
    assert impl.post_batch(balances, floors, tasks) == (["amount_overflow"], [[], [], [], [], []])


@pytest.mark.parametrize("impl", IMPLS)
def test_post_batch_self_transfer_reads_balances_after_the_leg(impl) -> None:
    results, columns, after = run(impl, {"a": 5}, {"a": 0}, [(1, [("a", "a", 5)])])
    assert results == [None] and after == {"a": 5}
    assert columns[4] == [5, 5]


@pytest.mark.parametrize("impl", IMPLS)
def test_post_batch_missing_account_raises_after_earlier_tasks_posted(impl) -> None:
    balances = {"a": 10, "b": 0}
    with pytest.raises(KeyError, match="zz"):
        impl.post_batch(balances, {"a": 0, "b": 0}, [(1, [("a", "b", 4)]), (2, [("a", "zz", 1)])])
    assert balances == {"a": 6, "b": 4}


# --------------------------------------------------------------------- post_batch: parity

NAMES = ["a", "b", "c", "d", "e", "f"]
near_bounds = st.one_of(st.integers(INT64_MAX - 2**54, INT64_MAX), st.integers(INT64_MIN, INT64_MIN + 2**54))
balance_value = st.one_of(st.integers(-1000, 1000), near_bounds, st.integers(INT64_MIN, INT64_MAX))
floor_value = st.one_of(st.just(INT64_MIN), st.integers(-1000, 1000), near_bounds)
amount = st.one_of(st.integers(1, 1000), st.integers(1, AMOUNT_MAX), st.just(AMOUNT_MAX))
odd_amount = st.one_of(st.integers(-5, 0), st.floats(-10, 10, allow_nan=False), st.just(2**63))
odd_number = st.one_of(st.just(INT64_MAX + 1), st.just(INT64_MIN - 1), st.floats(-1e3, 1e3), st.booleans())


class OneShot(list):
    """Legs to hand over as an iterator, fresh for each implementation (see `fresh`)."""


def fresh(tasks):
    return [(t[0], iter(list(t[1]))) if len(t) == 2 and isinstance(t[1], OneShot) else t for t in tasks]


@st.composite
def batches(draw, odd: bool):
    # Equal strs that are distinct objects must count as one account, as in a dict.
    names = st.sampled_from(NAMES + ["missing"] if odd else NAMES)
    names = st.one_of(names, names.map(lambda s: "".join(list(s))))
    legs = st.lists(st.tuples(names, names, st.one_of(amount, odd_amount) if odd else amount),
                    min_size=0 if odd else 1, max_size=5)
    task = st.tuples(st.integers(0, 10**6), legs)
    if odd:
        legs = st.one_of(legs, legs.map(tuple), legs.map(OneShot), st.lists(st.tuples(names, names)))
        task = st.one_of(st.tuples(st.integers(0, 10**6), legs), task.map(list), st.tuples(st.integers()))
    values = st.one_of(balance_value, odd_number) if odd else balance_value
    floor_values = st.one_of(floor_value, odd_number) if odd else floor_value
    balances = {name: draw(values) for name in NAMES}
    floors = {name: draw(floor_values) for name in NAMES}
    if odd:  # some accounts missing from one dict or the other
        for name in draw(st.lists(st.sampled_from(NAMES), max_size=2)):
            draw(st.sampled_from([balances, floors])).pop(name, None)
    return balances, floors, draw(st.lists(task, max_size=30))


def both(balances, floors, tasks):
    """Each implementation's outcome and the balances it left, from the same start."""
    seen = []
    for impl in (_py, _speedups):
        mine = dict(balances)
        seen.append((outcome(impl.post_batch, mine, floors, fresh(tasks)), mine))
    return seen


@needs_extension
@PARITY
@given(batch=batches(odd=False))
def test_post_batch_parity(batch) -> None:
    (twin, twin_balances), (ext, ext_balances) = both(*batch)
    assert ext == twin
    assert ext_balances == twin_balances
    assert twin[0] == "ok"
    assert all(type(v) is int for column in twin[1][1][2:] for v in column)


@needs_extension
@PARITY
@given(batch=batches(odd=True))
def test_post_batch_parity_odd_input(batch) -> None:
    (twin, twin_balances), (ext, ext_balances) = both(*batch)
    assert ext == twin
    assert ext_balances == twin_balances


@needs_extension
def test_post_batch_non_dict_mappings_use_the_twins_rules() -> None:
    from collections import defaultdict

    for impl in (_py, _speedups):
        balances = defaultdict(int, {"a": 5})
        assert impl.post_batch(balances, defaultdict(int), [(1, [("a", "new", 5)])])[0] == [None]
        assert balances == {"a": 0, "new": 5}
