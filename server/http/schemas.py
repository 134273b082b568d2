"""Wire shapes: msgspec structs decoded once per request, unknown fields rejected."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from core.ledger.models import AMOUNT_MAX, HOLD_EXPIRES_MAX_S, LEGS_MAX
from core.ledger.validation import DESCRIPTION_MAX

# The request limits, on the Structs that decode requests, so that the generated OpenAPI
# states them and the decoder refuses what breaks them (core/ledger/validation.py checks the
# rules across fields, and the same limits again for callers that skip the decoder).
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3,10}$", description="3 to 10 uppercase letters")]
AccountId = Annotated[str, Meta(pattern=r"^([A-Za-z0-9_-]{1,64}|@world:[A-Z]{3,10})$")]
NewAccountId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Amount = Annotated[int, Meta(ge=1, le=AMOUNT_MAX, description="minor units")]
Limit = Annotated[int, Meta(ge=0, le=AMOUNT_MAX)]
Description = Annotated[str, Meta(max_length=DESCRIPTION_MAX)]
TransactionType = Literal["transfer", "deposit", "withdrawal"]


class Contact(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    email: str | None = None
    phone: str | None = None
    push_token: str | None = None


# Optional fields take null for "not given" (many clients' serialisers write every field of
# a request object), and the generated OpenAPI says so: README, decisions.
class AccountIn(msgspec.Struct, forbid_unknown_fields=True):
    currency: Currency
    id: NewAccountId | None = None
    overdraft_limit: Limit | None = None  # None: 0
    contact: Contact | None = None
    metadata: dict[str, Any] | None = None


class AccountPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Either or both (neither: 400). Metadata is merged (core/ledger/metadata.py)."""

    status: Literal["active", "locked", "closed"] | msgspec.UnsetType = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class TransactionPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Metadata is all of a transaction that can change: any other field is unknown (400)."""

    metadata: dict[str, Any]


class LegIn(msgspec.Struct, forbid_unknown_fields=True, array_like=False):
    source: AccountId
    destination: AccountId
    amount: Amount


class TransactionIn(msgspec.Struct, forbid_unknown_fields=True):
    type: TransactionType
    currency: Currency
    amount: Amount | None = None
    source: AccountId | None = None
    destination: AccountId | None = None
    legs: Annotated[list[LegIn], Meta(min_length=1, max_length=LEGS_MAX)] | None = None
    description: Description | None = None
    metadata: dict[str, Any] | None = None
    # A hold reserves instead of posting (transfers and withdrawals); voided when expired.
    hold: bool | None = None
    hold_expires_in_s: Annotated[int, Meta(ge=1, le=HOLD_EXPIRES_MAX_S)] | None = None


class CaptureIn(msgspec.Struct, forbid_unknown_fields=True):
    amount: Amount | None = None  # default: the whole hold


class ReverseIn(msgspec.Struct, forbid_unknown_fields=True):
    amount: Amount | None = None  # default: what is not reversed yet
    description: Description | None = None


class BatchItemIn(TransactionIn, forbid_unknown_fields=True):
    idempotency_key: str | None = None


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    # Items are decoded one by one: a bad item is refused alone, not the whole batch.
    transactions: list[msgspec.Raw]


class BatchItemsIn(msgspec.Struct, forbid_unknown_fields=True):
    """A batch whose items are all valid, in one decode (the handler's first try; BatchIn
    when it fails, so that each bad item gets its own error). Not in the OpenAPI document:
    BatchIn states the same body."""

    transactions: list[BatchItemIn]


account_in = msgspec.json.Decoder(AccountIn)
capture_in = msgspec.json.Decoder(CaptureIn)
reverse_in = msgspec.json.Decoder(ReverseIn)
account_patch = msgspec.json.Decoder(AccountPatch)
transaction_patch = msgspec.json.Decoder(TransactionPatch)
transaction_in = msgspec.json.Decoder(TransactionIn)
batch_in = msgspec.json.Decoder(BatchIn)
batch_item_in = msgspec.json.Decoder(BatchItemIn)
batch_items_in = msgspec.json.Decoder(BatchItemsIn)
encoder = msgspec.json.Encoder()


# Response shapes, for the OpenAPI document (server/http/openapi.py). The handlers build these
# bodies as dicts (or bytes, on the hot path); these Structs only describe them.

Status = Literal["processing", "executing", "completed", "failed", "held", "voided"]


class ErrorDetail(msgspec.Struct):
    code: str
    message: str
    # A failed transaction's account at fault, when there is one.
    param: str | None = None
    # On a ?wait=true transaction that failed at execution.
    receipt_code: str | None = None


class ErrorBodyOut(msgspec.Struct):
    """Every error answer's `error` (server/http/errors.py `error_dict`)."""

    code: str
    message: str
    # The body field or query parameter at fault (`amount`, `legs[2].source`, `limit`).
    param: str | None
    # The answer's X-Request-Id.
    request_id: str
    # On a ?wait=true transaction that failed at execution.
    receipt_code: str | None = None


class ErrorOut(msgspec.Struct):
    error: ErrorBodyOut


class FailedOut(msgspec.Struct):
    """A ?wait=true transaction that failed at execution (422): the receipt is in both."""

    error: ErrorBodyOut
    receipt_code: str


class AccountOut(msgspec.Struct):
    id: str
    currency: str
    balance: int
    # null: unlimited (the @world:<CUR> system accounts).
    overdraft_limit: int | None
    status: Literal["active", "locked", "closed"]
    created_at: str
    metadata: dict[str, Any]
    # The sum of pending holds with this account as a source, and balance - held.
    held: int
    available: int
    contact: Contact | None = None


class AccountEntryOut(msgspec.Struct):
    receipt_code: str
    journal_id: int
    direction: Literal["debit", "credit"]
    amount: int
    balance_after: int
    created_at: str


class EntriesPage(msgspec.Struct):
    entries: list[AccountEntryOut]
    next_cursor: str | None


class AcceptedOut(msgspec.Struct):
    receipt_code: str
    status: Literal["processing"]
    processing_time: str


class PostingOut(msgspec.Struct):
    account: str
    direction: Literal["debit", "credit"]
    amount: int
    balance_after: int


class LegOut(msgspec.Struct):
    source: str
    destination: str
    amount: int


class TransactionOut(msgspec.Struct):
    receipt_code: str
    status: Status
    type: Literal["transfer", "deposit", "withdrawal", "capture", "void", "reversal"]
    currency: str
    journal_id: int
    # Its money whatever its status: the sum of its legs, and the legs.
    amount: int
    legs: list[LegOut]
    description: str | None
    metadata: dict[str, Any]
    entries: list[PostingOut]
    error: ErrorDetail | None
    created_at: str
    completed_at: str | None
    # Present only where set: what a capture, void or reversal names, an original's
    # completed reversals, a hold's deadline.
    captures: str | None = None
    voids: str | None = None
    reverses: str | None = None
    reversed_by: list[str] | None = None
    hold_expires_at: str | None = None
    # A hold's, whatever its status: its completed capture ([] if none), the void that voided
    # it (null if none), what the capture posted and what was reserved and not posted.
    captured_by: list[str] | None = None
    voided_by: str | None = None
    captured_amount: int | None = None
    released_amount: int | None = None


class StatusOut(msgspec.Struct):
    receipt_code: str
    status: Status
    error: ErrorDetail | None
    updated_at: str


class PendingTransactionOut(StatusOut):
    """GET /v1/transactions/{receipt_code} before the transaction is final."""

    entries: list[PostingOut]
    amount: int
    legs: list[LegOut]


class AccountsPage(msgspec.Struct):
    """GET /v1/accounts: by id, `@world:<CUR>` system accounts included."""

    accounts: list[AccountOut]
    next_cursor: str | None


class AccountAtOut(msgspec.Struct):
    """GET /v1/accounts/{id}?at=: the account with its balance as it stood then."""

    id: str
    currency: str
    balance: int
    overdraft_limit: int | None
    status: Literal["active", "locked", "closed"]
    created_at: str
    metadata: dict[str, Any]
    contact: Contact | None = None


class TransactionsPage(msgspec.Struct):
    """GET /v1/transactions: newest first; each item a TransactionOut or, while it is not
    final, a PendingTransactionOut (server/http/openapi.py states the oneOf)."""

    transactions: list[dict[str, Any]]
    next_cursor: str | None


class HealthOut(msgspec.Struct):
    status: Literal["ok"]


class ReadinessOut(msgspec.Struct):
    """One field per dependency; remote services add their circuit breaker's state."""

    status: Literal["ready", "not_ready"]
    postgres: Literal["ok", "down"]
    redis: Literal["ok", "down", "not_configured"]
    worker_pool: Literal["ok", "full"]
