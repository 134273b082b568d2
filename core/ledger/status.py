"""The transaction status machine, in one table.

    processing → executing → completed | failed | held | voided
    held → completed (captured) | voided (voided or expired)

`held` is a hold's reservation: final for its own journal's execution, not for the
receipt, which a capture completes or a void (or its expiry) voids. A void journal
itself ends `voided`.
"""

from __future__ import annotations

PROCESSING = "processing"
EXECUTING = "executing"
COMPLETED = "completed"
FAILED = "failed"
HELD = "held"
VOIDED = "voided"

# Allowed moves. Statuses only move forward; a final status never changes.
TRANSITIONS: dict[str, frozenset[str]] = {
    PROCESSING: frozenset({EXECUTING, COMPLETED, FAILED, HELD, VOIDED}),
    EXECUTING: frozenset({COMPLETED, FAILED, HELD, VOIDED}),
    HELD: frozenset({COMPLETED, VOIDED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    VOIDED: frozenset(),
}
# Final: the receipt's status never changes again, so it may be cached anywhere. `held`
# is not: a capture or void (another journal, maybe in another process) ends it.
FINAL = frozenset({COMPLETED, FAILED, VOIDED})
RANK = {PROCESSING: 0, EXECUTING: 1, HELD: 2, COMPLETED: 3, FAILED: 3, VOIDED: 3}


def can_move(current: str | None, new: str) -> bool:
    """Whether a receipt whose known status is `current` may take `new`."""
    if current is None:
        return new in TRANSITIONS
    return new in TRANSITIONS[current]


def is_final(status: str) -> bool:
    return status in FINAL
