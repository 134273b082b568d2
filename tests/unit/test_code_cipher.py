"""core/kit/code_cipher.py: a keyed bijection of code values that leaves no trace of the
counter's order."""

from __future__ import annotations

import re
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import native
from core.kit.code_cipher import CodeCipher
from native import _py

CODE = re.compile(r"^RCP-\d{8}-[0-9A-HJKMNP-TV-Z]{16}$")
NOW_MS = 1_796_601_600_000  # 2026-12-07
secrets = st.binary(min_size=16, max_size=64)
values = st.integers(0, (1 << 80) - 1)


def value_of(code: str) -> int:
    value = 0
    for char in code.split("-")[2]:
        value = value * 32 + _py.CROCKFORD.index(char)
    return value


def differing(a: str, b: str) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


@settings(max_examples=40, deadline=None)
@given(secret=secrets, half_bits=st.integers(2, 6))
def test_a_bijection_on_a_reduced_domain(secret: bytes, half_bits: int) -> None:
    """The same rounds on 2**(2*half_bits) values: every value is hit once, and undone."""
    cipher = CodeCipher(secret, half_bits=half_bits)
    domain = range(1 << 2 * half_bits)
    images = [cipher.hide_value(v) for v in domain]
    assert sorted(images) == list(domain)
    assert [cipher.reveal_value(w) for w in images] == list(domain)


@settings(max_examples=300, deadline=None)
@given(secret=secrets, value=values)
def test_the_full_domain_round_trips(secret: bytes, value: int) -> None:
    cipher = CodeCipher(secret)
    hidden = cipher.hide_value(value)
    assert 0 <= hidden < 1 << 80 and cipher.reveal_value(hidden) == value
    code = "RCP-20261207-" + _py._crockford(value)
    assert cipher.hide(code) == "RCP-20261207-" + _py._crockford(hidden)
    assert cipher.reveal(cipher.hide(code)) == code


@pytest.mark.parametrize("make", [
    pytest.param(lambda: native.block_codes(2, 0, 4000, NOW_MS)
                 + native.block_codes(3, 0, 4000, NOW_MS), id="block layout"),
    pytest.param(lambda: native.receipt_codes(7, 4242, 0, 0, NOW_MS, 8000)[0], id="process layout"),
])
def test_consecutive_codes_are_not_neighbours(make) -> None:  # type: ignore[no-untyped-def]
    plain = make()
    assert max(differing(a, b) for a, b in zip(plain, plain[1:], strict=False)) <= 4
    hidden = CodeCipher(b"a secret of 16 bytes").hide_all(plain)
    assert len(set(hidden)) == len(plain) and all(CODE.match(c) for c in hidden)
    assert [c[:13] for c in hidden] == [c[:13] for c in plain], "the date is kept"
    # 16 random characters differ in 15.5 places on average; neighbours in 1 or 2.
    distances = [differing(a[13:], b[13:]) for a, b in zip(hidden, hidden[1:], strict=False)]
    assert statistics.mean(distances) > 14.5 and min(distances) >= 7
    # Order tells nothing: about half of the steps go down, and no long run goes one way.
    ups = [a < b for a, b in zip(hidden, hidden[1:], strict=False)]
    assert 0.45 < sum(ups) / len(ups) < 0.55
    numbers = [value_of(c) for c in hidden]
    steps = list(zip(numbers, numbers[1:], strict=False))
    assert statistics.median(abs(b - a) for a, b in steps) > 1 << 70, "steps span the space"
    # Each bit of the value flips about half the time from one code to the next.
    flips = [sum((a ^ b) >> bit & 1 for a, b in steps) for bit in range(80)]
    assert all(0.45 < f / len(steps) < 0.55 for f in flips), flips


def test_the_secret_decides_every_code() -> None:
    plain = native.block_codes(1, 0, 1000, NOW_MS)
    one, other = CodeCipher(b"0123456789abcdef"), CodeCipher(b"0123456789abcdeg")
    assert one.hide_all(plain) == CodeCipher(b"0123456789abcdef").hide_all(plain)
    assert not set(one.hide_all(plain)) & set(other.hide_all(plain))
    with pytest.raises(AssertionError):
        CodeCipher(b"too short")
