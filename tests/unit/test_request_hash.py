"""Idempotency request hashes are stored with keys and compared across releases: a plain
transaction must hash exactly as it did before Transaction grew hold and target fields."""

from __future__ import annotations

from core.ledger.models import Leg, Transaction
from core.pipeline.idempotency import request_hash

# sha256 of the sorted-key JSON of the five-field Transaction, as hashed before holds.
PINNED = {
    "e103ca1b211c14d8fe6a459eee39396da1e5829e6e411f9b5227e2f640453cdb":
        Transaction("transfer", "USD", (Leg("a", "b", 5),), "rent", {"z": 1, "a": [1, 2]}),
    "b896dd7c44fddfe7b657c29a4038a2636f938963bcc4cd20654544ccc3a997ce":
        Transaction("deposit", "USD", (Leg("@world:USD", "b", 7),)),
}


def test_a_plain_transaction_hashes_as_before_holds_existed() -> None:
    for digest, tx in PINNED.items():
        assert request_hash(tx) == digest


def test_a_hold_or_a_target_changes_the_hash() -> None:
    plain = Transaction("transfer", "USD", (Leg("a", "b", 5),))
    held = Transaction("transfer", "USD", (Leg("a", "b", 5),), hold_expires_in_s=60)
    capture = Transaction("capture", "USD", (Leg("a", "b", 5),), target="RCP-X")
    assert len({request_hash(plain), request_hash(held), request_hash(capture)}) == 3
