"""A keyed bijection of receipt code values, so that codes issued one after the other are not
neighbours.

Codes are made from counters (block number and offset, or time and sequence: native/_py.py),
which are unique but ordered: `…G000000000002000`, `…2001`, `…4000` would tell a client the
server's volume. `CodeCipher.hide` maps the 80-bit value of such a code through a permutation
of all 2**80 values, keyed by a secret that every process shares (table receipt_code_key,
migration 012). A permutation maps distinct values to distinct values, so uniqueness is kept
exactly; without the secret, one code says nothing about another.

The permutation is a balanced Feistel network on two 40-bit halves: ROUNDS rounds, even ones
`left ^= F(right, k_i)`, odd ones `right ^= F(left, k_i)`. Any F gives a bijection (a round is
undone by the same XOR), so F only has to mix: the middle 40 bits of the square of
`half ^ k_i` (nonlinear; every input bit reaches them), plus a second round key. It is a keyed
scrambler, not a vetted block cipher (a pure-Python AES-based FF1 would cost tens of µs a
code, a BLAKE2b round function 3 µs); this costs under 2 µs of CPU a code (1.85 µs on the
shared test machine; bench/native.py).

Pure: no I/O. The secret comes from the composition root (server/process/runtime.py).
"""

from __future__ import annotations

import hashlib

ROUNDS = 8
HALF_BITS = 40  # 16 Crockford characters hold 80 bits
SECRET_BYTES_MIN = 16
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Crockford's characters as the digits int(…, 32) reads (bytes.translate: one C loop).
_TO_DIGITS = bytes.maketrans(CROCKFORD.encode(), b"0123456789ABCDEFGHIJKLMNOPQRSTUV")
_PAIRS = [CROCKFORD[i >> 5] + CROCKFORD[i & 31] for i in range(1024)]  # 10 bits, 2 characters
_PREFIX = len("RCP-YYYYMMDD-")
_MASK40 = (1 << HALF_BITS) - 1


class CodeCipher:
    """Hides and reveals receipt codes `RCP-YYYYMMDD-<16 Crockford characters>`: the date is
    kept, the 80-bit value goes through the keyed permutation (or back)."""

    def __init__(self, secret: bytes, *, half_bits: int = HALF_BITS) -> None:
        """`half_bits` below 40 makes a permutation of a smaller domain (2**(2*half_bits)
        values) with the same rounds, for tests that walk the whole domain (values only)."""
        assert len(secret) >= SECRET_BYTES_MIN, "the receipt code secret is too short"
        assert 2 <= half_bits <= HALF_BITS
        mask = (1 << half_bits) - 1
        # Per round: a key XORed into F's input and a key added to its output.
        self._keys = [(int.from_bytes(derived[:8], "little") & mask,
                       int.from_bytes(derived[8:], "little") & mask)
                      for derived in (_round_key(secret, i) for i in range(ROUNDS))]
        self._flat_keys = tuple(k for pair in self._keys for k in pair)
        self._half_bits = half_bits
        self._mask = mask
        self._middle = half_bits // 2  # the square has 2 * half_bits bits: keep the middle

    def reveal_value(self, value: int) -> int:
        mask, middle = self._mask, self._middle
        left, right = value >> self._half_bits & mask, value & mask
        for i in reversed(range(ROUNDS)):  # _forward's rounds, last first
            k_in, k_out = self._keys[i]
            if i % 2:
                x = left ^ k_in
                right ^= (x * x >> middle) + k_out & mask
            else:
                x = right ^ k_in
                left ^= (x * x >> middle) + k_out & mask
        return left << self._half_bits | right

    def hide(self, code: str) -> str:
        return self.hide_all([code])[0]

    def reveal(self, code: str) -> str:
        """The code as its counter made it (for tests, and operators holding the secret)."""
        value = self.reveal_value(int(code[_PREFIX:].encode().translate(_TO_DIGITS), 32))
        return code[:_PREFIX] + _crockford(value >> HALF_BITS, value & _MASK40)

    def hide_value(self, value: int) -> int:
        left, right = self._forward(value >> self._half_bits & self._mask, value & self._mask)
        return left << self._half_bits | right

    def _forward(self, left: int, right: int) -> tuple[int, int]:
        m, s = self._mask, self._middle
        for i, (k_in, k_out) in enumerate(self._keys):  # even rounds change left, odd right
            if i % 2:
                x = left ^ k_in
                right ^= (x * x >> s) + k_out & m
            else:
                x = right ^ k_in
                left ^= (x * x >> s) + k_out & m
        return left, right

    def hide_all(self, codes: list[str]) -> list[str]:
        """`hide` of each code. The rounds are _forward's, written out with the parsing and
        formatting in one loop: calls, the round loop and its unpacking would cost half as
        much again, and this runs once per code issued (tests check the two agree)."""
        assert self._half_bits == HALF_BITS, "codes hold 80-bit values"
        m, s, digits, prefix, p = _MASK40, HALF_BITS // 2, _TO_DIGITS, _PREFIX, _PAIRS
        a0, b0, a1, b1, a2, b2, a3, b3, a4, b4, a5, b5, a6, b6, a7, b7 = self._flat_keys
        hidden = []
        for code in codes:
            value = int(code[prefix:].encode().translate(digits), 32)
            left, right = value >> 40, value & m
            x = right ^ a0
            left ^= (x * x >> s) + b0 & m
            x = left ^ a1
            right ^= (x * x >> s) + b1 & m
            x = right ^ a2
            left ^= (x * x >> s) + b2 & m
            x = left ^ a3
            right ^= (x * x >> s) + b3 & m
            x = right ^ a4
            left ^= (x * x >> s) + b4 & m
            x = left ^ a5
            right ^= (x * x >> s) + b5 & m
            x = right ^ a6
            left ^= (x * x >> s) + b6 & m
            x = left ^ a7
            right ^= (x * x >> s) + b7 & m
            hidden.append(
                f"{code[:prefix]}{p[left >> 30]}{p[left >> 20 & 1023]}{p[left >> 10 & 1023]}"
                f"{p[left & 1023]}{p[right >> 30]}{p[right >> 20 & 1023]}{p[right >> 10 & 1023]}"
                f"{p[right & 1023]}")
        return hidden


def _round_key(secret: bytes, round_no: int) -> bytes:
    """16 bytes for round `round_no`, from the secret (BLAKE2b keyed by it)."""
    return hashlib.blake2b(bytes([round_no]), key=secret[:64], digest_size=16,
                           person=b"kassa.receipts").digest()


def _crockford(high: int, low: int) -> str:
    """Two 40-bit halves as 16 Crockford characters, most significant first."""
    p = _PAIRS
    return (f"{p[high >> 30]}{p[high >> 20 & 1023]}{p[high >> 10 & 1023]}{p[high & 1023]}"
            f"{p[low >> 30]}{p[low >> 20 & 1023]}{p[low >> 10 & 1023]}{p[low & 1023]}")
