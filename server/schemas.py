"""Wire shapes: msgspec structs decoded once per request, unknown fields rejected."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class Contact(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    email: str | None = None
    phone: str | None = None
    push_token: str | None = None


class AccountIn(msgspec.Struct, forbid_unknown_fields=True):
    currency: str
    id: str | None = None
    overdraft_limit: int = 0
    contact: Contact | None = None
    metadata: dict[str, Any] | None = None


class AccountPatch(msgspec.Struct, forbid_unknown_fields=True):
    status: Literal["active", "locked", "closed"]


class LegIn(msgspec.Struct, forbid_unknown_fields=True, array_like=False):
    source: str
    destination: str
    amount: int


class TransactionIn(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    currency: str
    amount: int | None = None
    source: str | None = None
    destination: str | None = None
    legs: list[LegIn] | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None


class BatchItemIn(TransactionIn, forbid_unknown_fields=True):
    idempotency_key: str | None = None


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    # Items are decoded one by one: a bad item is refused alone, not the whole batch.
    transactions: list[msgspec.Raw]


account_in = msgspec.json.Decoder(AccountIn)
account_patch = msgspec.json.Decoder(AccountPatch)
transaction_in = msgspec.json.Decoder(TransactionIn)
batch_in = msgspec.json.Decoder(BatchIn)
batch_item_in = msgspec.json.Decoder(BatchItemIn)
encoder = msgspec.json.Encoder()
