# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled versions of native/_py.py: the same results and errors, faster.

Each function runs a C fast path on the inputs the ledger really passes (exact ints
within int64, str account ids, plain dicts, lists and tuples) and hands anything
else to the pure-Python twin. The hand-off happens before any side effect of the
unit it covers (the whole call, or one task of a batch), so odd inputs get the
twin's behaviour, exceptions and partial updates included, by construction.
"""

import datetime as dt

from cpython.exc cimport PyErr_Occurred
from cpython.ref cimport PyObject
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint64_t
from libc.string cimport memcpy

from native import _py


cdef extern from "Python.h":
    # Declared on borrowed pointers so the hot loops do no reference counting.
    bint PyLong_CheckExact(PyObject* o)
    bint PyUnicode_CheckExact(PyObject* o)
    bint PyTuple_CheckExact(PyObject* o)
    bint PyList_CheckExact(PyObject* o)
    Py_ssize_t PySequence_Fast_GET_SIZE(PyObject* o)
    PyObject* PySequence_Fast_GET_ITEM(PyObject* o, Py_ssize_t i)
    # NULL with no error set for a missing key: exact str keys hash and compare safely.
    PyObject* PyDict_GetItemWithError(object d, PyObject* key)
    int PyDict_SetItem(object d, PyObject* key, object value) except -1
    # Called on exact ints and strs only, where they cannot fail.
    long long PyLong_AsLongLongAndOverflow(PyObject* o, int* overflow)
    Py_hash_t PyObject_Hash(PyObject* o)
    int PyUnicode_Compare(PyObject* a, PyObject* b)


# ---------------------------------------------------------------- receipt codes

cdef const char* CROCKFORD = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
cdef int64_t EPOCH_MS = _py.EPOCH_MS
cdef int64_t SEQ_MAX = _py.SEQ_MAX
cdef int64_t NODE_MASK = (1 << _py.NODE_BITS) - 1
cdef int64_t PROC_MASK = (1 << _py.PID_BITS) - 1
cdef int64_t MS_PER_DAY = 86_400_000
# The civil-from-days path covers 1970-01-01 up to the end of year 9999, where the
# twin's datetime stops; other instants take the twin's datetime code (and errors).
cdef int64_t DAY_FAST_END_MS = 253_402_300_800_000
cdef int64_t BLOCK_NO_MAX = _py.BLOCK_NO_MAX
cdef int64_t BLOCK_SPAN = _py.BLOCK_SPAN
# State values within +-2**61 leave room for `ms + 1` over any feasible count.
cdef int64_t STATE_ABS_MAX = 1LL << 61


cdef inline bint _state_value(object x, int64_t* out) noexcept:
    """Store an exact int within +-STATE_ABS_MAX in *out; False for anything else."""
    cdef int overflow = 0
    cdef PyObject* p = <PyObject*>x
    if not PyLong_CheckExact(p):
        return False
    out[0] = PyLong_AsLongLongAndOverflow(p, &overflow)
    return overflow == 0 and -STATE_ABS_MAX <= out[0] <= STATE_ABS_MAX


cdef void _fill_value(char* out, int64_t ms, uint64_t node, uint64_t proc,
                      int64_t seq) noexcept nogil:
    """The 16 Crockford characters of the 80-bit code value, as the twin computes them.

    The twin's Python ints are two's complement with infinite sign extension, and it
    only reads bits 0..79, so wrapping arithmetic in two 64-bit halves is exact even
    for instants before EPOCH_MS or beyond 41 bits, and for a negative sequence.
    """
    cdef uint64_t d = <uint64_t>(ms - EPOCH_MS)
    cdef uint64_t lo = (d << 39) | (node << 29) | (proc << 7) | <uint64_t>seq
    cdef uint64_t hi = (d >> 25) & 0xFFFF
    if seq < 0:
        hi = 0xFFFF
    hi &= 0x7FFF  # bit 79 tells the layouts apart: clear in this one (_py.BLOCK_FLAG)
    _fill_crockford(out, hi, lo)


cdef void _fill_crockford(char* out, uint64_t hi, uint64_t lo) noexcept nogil:
    """16 Crockford characters of the 80-bit value hi (bits 64..79) : lo (bits 0..63)."""
    cdef int k, shift
    cdef uint64_t v
    for k in range(16):
        shift = 75 - 5 * k
        if shift >= 64:
            v = hi >> (shift - 64)
        elif shift > 59:
            v = (lo >> shift) | (hi << (64 - shift))
        else:
            v = lo >> shift
        out[k] = CROCKFORD[v & 31]


cdef inline void _digits(char* out, int64_t value, int width) noexcept nogil:
    cdef int i
    for i in range(width - 1, -1, -1):
        out[i] = <char>(48 + value % 10)
        value //= 10


cdef void _fill_date(char* out, int64_t days) noexcept nogil:
    """YYYYMMDD of `days` >= 0 since 1970-01-01 (H. Hinnant's civil_from_days)."""
    cdef int64_t z = days + 719_468  # days since 0000-03-01, so leap days come last
    cdef int64_t era = z // 146_097
    cdef int64_t doe = z - era * 146_097
    cdef int64_t yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    cdef int64_t doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef int64_t mp = (5 * doy + 2) // 153
    cdef int64_t day = doy - (153 * mp + 2) // 5 + 1
    cdef int64_t month = mp + 3 if mp < 10 else mp - 9
    _digits(out, yoe + era * 400 + (month <= 2), 4)
    _digits(out + 4, month, 2)
    _digits(out + 6, day, 2)


def receipt_codes(node_id, pid, last_ms, last_seq, now_ms, count):
    """See native._py.receipt_codes."""
    cdef int64_t ms, seq, now, n, i, day = -1
    cdef char buf[29]
    if not (PyLong_CheckExact(<PyObject*>node_id) and PyLong_CheckExact(<PyObject*>pid)
            and _state_value(last_ms, &ms) and _state_value(last_seq, &seq)
            and _state_value(now_ms, &now) and _state_value(count, &n)):
        return _py.receipt_codes(node_id, pid, last_ms, last_seq, now_ms, count)
    cdef uint64_t node = <uint64_t>(<int64_t>(node_id & NODE_MASK))
    cdef uint64_t proc = <uint64_t>(<int64_t>(pid & PROC_MASK))
    memcpy(buf, b"RCP-00000000-", 13)
    cdef list codes = []
    for i in range(n):
        if now > ms:
            ms, seq = now, 0
        else:
            seq += 1
            if seq > SEQ_MAX:
                ms, seq = ms + 1, 0
        _fill_value(buf + 13, ms, node, proc, seq)
        if 0 <= ms < DAY_FAST_END_MS:
            if ms // MS_PER_DAY != day:
                day = ms // MS_PER_DAY
                _fill_date(buf + 4, day)
            codes.append(buf[:29].decode("ascii"))
        else:
            day = -1  # buf's date is stale now
            text = dt.datetime.fromtimestamp(<object>ms / 1000, tz=dt.UTC).strftime("%Y%m%d")
            codes.append(f"RCP-{text}-{buf[13:29].decode('ascii')}")
    return codes, ms, seq


def block_codes(block_no, first, count, now_ms):
    """See native._py.block_codes."""
    cdef int64_t block, start, n, now, i
    if not (_state_value(block_no, &block) and _state_value(first, &start)
            and _state_value(count, &n) and _state_value(now_ms, &now)):
        return _py.block_codes(block_no, first, count, now_ms)
    if not (0 <= block <= BLOCK_NO_MAX and 0 <= start and 0 <= n and start + n <= BLOCK_SPAN
            and 0 <= now < DAY_FAST_END_MS):
        return _py.block_codes(block_no, first, count, now_ms)  # its error, or its date code
    cdef char buf[29]
    memcpy(buf, b"RCP-00000000-", 13)
    _fill_date(buf + 4, now // MS_PER_DAY)
    # The value is 1 | block (63 bits) | offset (16 bits): bits 64..79 hold the flag and
    # the block's top 15 bits, bits 0..63 the rest of the block and the offset.
    cdef uint64_t hi = 0x8000 | (<uint64_t>block >> 48)
    cdef uint64_t base = <uint64_t>block << 16
    cdef list codes = []
    for i in range(start, start + n):
        _fill_crockford(buf + 13, hi, base | <uint64_t>i)
        codes.append(buf[:29].decode("ascii"))
    return codes


# ------------------------------------------------------------------- post batch

cdef enum:
    LEGS_FAST_MAX = 64  # core.ledger.models.LEGS_MAX; longer tasks go to the twin
    SLOTS_MAX = 2 * LEGS_FAST_MAX
    DELEGATE = -1
    POSTED = 0
    INSUFFICIENT = 1
    OVERFLOW = 2

cdef object ERROR_CODES = (None, "insufficient_funds", "amount_overflow")
cdef object DEBIT = _py.DEBIT
cdef object CREDIT = _py.CREDIT


cdef struct Trial:
    # One slot per distinct account of a task, in the twin's `trial` dict order.
    int n_slots
    PyObject* key[SLOTS_MAX]
    Py_hash_t hashes[SLOTS_MAX]
    int64_t before[SLOTS_MAX]
    int64_t value[SLOTS_MAX]
    # The legs decided so far, borrowed from the task (which the caller holds).
    int n_legs
    int src[LEGS_FAST_MAX]
    int dst[LEGS_FAST_MAX]
    int64_t amount[LEGS_FAST_MAX]
    PyObject* leg[LEGS_FAST_MAX]


cdef inline bint _int64(PyObject* p, int64_t* out) noexcept:
    """Store an exact int within int64 in *out; False for anything else."""
    cdef int overflow = 0
    if p == NULL or not PyLong_CheckExact(p):
        return False
    out[0] = PyLong_AsLongLongAndOverflow(p, &overflow)
    return overflow == 0


cdef int _slot(Trial* t, dict balances, PyObject* account) except -2:
    """Index of `account` in the trial, adding it with its balance; -1 to delegate."""
    cdef Py_hash_t h
    cdef int i
    cdef PyObject* found
    if not PyUnicode_CheckExact(account):
        return -1
    h = PyObject_Hash(account)
    for i in range(t.n_slots):
        if t.key[i] == account or (
                t.hashes[i] == h and PyUnicode_Compare(t.key[i], account) == 0):
            return i
    i = t.n_slots
    found = PyDict_GetItemWithError(balances, account)
    if found == NULL and PyErr_Occurred():
        return -2
    if not _int64(found, &t.before[i]):
        return -1  # missing (KeyError) or not an int64: the twin decides
    t.key[i] = account
    t.hashes[i] = h
    t.value[i] = t.before[i]
    t.n_slots += 1
    return i


cdef int _decide(Trial* t, dict balances, dict floors, PyObject* legs) except -2:
    """The twin's trial for one task, without side effects: POSTED, an error, or DELEGATE."""
    cdef Py_ssize_t n
    cdef PyObject* leg
    cdef PyObject* found
    cdef int64_t a, floor
    cdef int i, s, d
    cdef bint src_overflow
    if not (PyList_CheckExact(legs) or PyTuple_CheckExact(legs)):
        return DELEGATE  # e.g. an iterator, which the twin reads twice
    n = PySequence_Fast_GET_SIZE(legs)
    if n > LEGS_FAST_MAX:
        return DELEGATE
    t.n_slots, t.n_legs = 0, 0
    for i in range(n):
        leg = PySequence_Fast_GET_ITEM(legs, i)
        if not ((PyTuple_CheckExact(leg) or PyList_CheckExact(leg))
                and PySequence_Fast_GET_SIZE(leg) == 3):
            return DELEGATE
        # Amounts below 0 could push a balance out of int64 unnoticed, as in the twin.
        if not _int64(PySequence_Fast_GET_ITEM(leg, 2), &a) or a < 0:
            return DELEGATE
        s = _slot(t, balances, PySequence_Fast_GET_ITEM(leg, 0))
        if s < 0:
            return DELEGATE
        src_overflow = t.value[s] < INT64_MIN + a
        if not src_overflow:
            t.value[s] -= a
        # The twin reads the destination's balance even when the source overflowed.
        d = _slot(t, balances, PySequence_Fast_GET_ITEM(leg, 1))
        if d < 0:
            return DELEGATE
        if src_overflow or t.value[d] > INT64_MAX - a:
            return OVERFLOW
        t.value[d] += a
        t.src[i] = s
        t.dst[i] = d
        t.amount[i] = a
        t.leg[i] = leg
        t.n_legs += 1
    for s in range(t.n_slots):
        found = PyDict_GetItemWithError(floors, t.key[s])
        if found == NULL and PyErr_Occurred():
            return -2
        if not _int64(found, &floor):
            return DELEGATE
        if t.value[s] < floor and t.value[s] < t.before[s]:
            return INSUFFICIENT
    return POSTED


cdef int _post(Trial* t, dict balances, object journal_id, list columns) except -1:
    """Apply a decided task leg by leg, as the twin does, and append its ledger rows."""
    cdef list journal_ids = columns[0], account_ids = columns[1]
    cdef list directions = columns[2], amounts = columns[3], after = columns[4]
    cdef int i, s, d
    cdef PyObject* leg
    cdef object src_after, dst_after
    for i in range(t.n_legs):
        s = t.src[i]
        d = t.dst[i]
        leg = t.leg[i]
        t.before[s] -= t.amount[i]
        src_after = t.before[s]
        PyDict_SetItem(balances, PySequence_Fast_GET_ITEM(leg, 0), src_after)
        t.before[d] += t.amount[i]
        dst_after = t.before[d]
        PyDict_SetItem(balances, PySequence_Fast_GET_ITEM(leg, 1), dst_after)
        if s == d:
            src_after = dst_after  # the twin reads both balances after both updates
        journal_ids.append(journal_id)
        journal_ids.append(journal_id)
        account_ids.append(<object>PySequence_Fast_GET_ITEM(leg, 0))
        account_ids.append(<object>PySequence_Fast_GET_ITEM(leg, 1))
        directions.append(DEBIT)
        directions.append(CREDIT)
        amounts.append(<object>PySequence_Fast_GET_ITEM(leg, 2))
        amounts.append(<object>PySequence_Fast_GET_ITEM(leg, 2))
        after.append(src_after)
        after.append(dst_after)
    return 0


def post_batch(balances, floors, tasks):
    """See native._py.post_batch."""
    cdef Trial t
    cdef int outcome
    cdef PyObject* p
    cdef list results = []
    cdef list columns = [[], [], [], [], []]
    if type(balances) is not dict or type(floors) is not dict:
        return _py.post_batch(balances, floors, tasks)
    for task in tasks:
        p = <PyObject*>task
        outcome = DELEGATE
        if (PyTuple_CheckExact(p) or PyList_CheckExact(p)) and PySequence_Fast_GET_SIZE(p) == 2:
            outcome = _decide(&t, balances, floors, PySequence_Fast_GET_ITEM(p, 1))
        if outcome == DELEGATE:
            # The twin's batch is its tasks one after another, state only in `balances`.
            one_results, one_columns = _py.post_batch(balances, floors, [task])
            results += one_results
            for column, more in zip(columns, one_columns):
                column += more
            continue
        results.append(ERROR_CODES[outcome])
        if outcome == POSTED:
            _post(&t, balances, <object>PySequence_Fast_GET_ITEM(p, 0), columns)
    return results, columns
