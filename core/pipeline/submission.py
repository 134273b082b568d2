"""What a client submits and what happened to it, in the ledger's terms.

The HTTP layer maps these to status codes and bodies (server/http/handlers/answers.py);
core says only whether the transaction was accepted and still runs, finished here with an
outcome, or was a repeat of an earlier request under the same Idempotency-Key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.ledger.decide import Outcome
from core.ledger.models import Transaction


@dataclass(frozen=True, slots=True)
class Submission:
    transaction: Transaction
    scope: str  # whose idempotency keys these are (core/pipeline/idempotency.py: scope_of)
    idempotency_key: str | None = None
    request_hash: str | None = None
    wait: bool = False
    # Whether the Redis fast path may answer repeats. The server's own keys (hold expiry)
    # skip it: a marker left by a process that died would refuse every sweep for its
    # lifetime, while the database's unique key alone decides them just as surely.
    cached_key: bool = True


@dataclass(frozen=True, slots=True)
class Accepted:
    """Recorded durably and not (yet) finished as far as this answer knows: the client
    polls the receipt. A repeat of an accepted-only request is `replayed`; when the first
    answer was stored as bytes by an earlier version, `stored_answer` holds them, opaque."""

    receipt_code: str
    processing_time: str
    replayed: bool = False
    stored_answer: bytes | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """Decided in this process while the client waited: the outcome is in memory, so the
    answer needs no read that could fail after the transaction was posted."""

    replayed: ClassVar[bool] = False

    receipt_code: str
    processing_time: str
    outcome: Outcome
    transaction: Transaction


@dataclass(frozen=True, slots=True)
class Replayed:
    """A repeat of a request whose client waited for the outcome: the answer is the
    journal as it stands now (finished, or still processing)."""

    replayed: ClassVar[bool] = True

    receipt_code: str
    processing_time: str


Submitted = Accepted | Finished | Replayed


def format_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}ms"
