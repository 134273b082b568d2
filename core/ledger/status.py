"""The transaction status machine, in one table: processing → executing → completed | failed."""

from __future__ import annotations

PROCESSING = "processing"
EXECUTING = "executing"
COMPLETED = "completed"
FAILED = "failed"

# Allowed moves. Statuses only move forward; a final status never changes.
TRANSITIONS: dict[str, frozenset[str]] = {
    PROCESSING: frozenset({EXECUTING, COMPLETED, FAILED}),
    EXECUTING: frozenset({COMPLETED, FAILED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
}
FINAL = frozenset({COMPLETED, FAILED})
RANK = {PROCESSING: 0, EXECUTING: 1, COMPLETED: 2, FAILED: 2}


def can_move(current: str | None, new: str) -> bool:
    """Whether a receipt whose known status is `current` may take `new`."""
    if current is None:
        return new in TRANSITIONS
    return new in TRANSITIONS[current]


def is_final(status: str) -> bool:
    return status in FINAL
