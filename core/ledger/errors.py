"""Expected conditions, as typed errors with a stable `code` and a `retriable` flag.

Broken invariants are not here: those are bugs and fail loudly with assert.
server/http/errors.py maps each code to its HTTP status in one table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.kit.rate_limit import Quota


class KassaError(Exception):
    code = "internal"
    retriable = False

    def __init__(self, message: str, *, retry_after_s: int | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.param = param  # what is at fault: a body field, or the account a rule refused


class InvalidRequest(KassaError):
    code = "invalid_request"


class NotFound(KassaError):
    code = "not_found"


class AccountExists(KassaError):
    code = "account_exists"


class IdempotencyInProgress(KassaError):
    code = "idempotency_in_progress"
    retriable = True


class IdempotencyKeyReused(KassaError):
    code = "idempotency_key_reused"


class BusinessRuleError(KassaError):
    """A transaction refused by a ledger rule (422); it carries the receipt once one exists."""

    receipt_code: str | None = None


class AccountNotFound(BusinessRuleError):
    code = "account_not_found"


class AccountInactive(BusinessRuleError):
    code = "account_inactive"


class CurrencyMismatch(BusinessRuleError):
    code = "currency_mismatch"


class InsufficientFunds(BusinessRuleError):
    code = "insufficient_funds"


class AmountOverflow(BusinessRuleError):
    code = "amount_overflow"


class HoldNotPending(BusinessRuleError):
    """A capture or void of a hold already captured, voided or expired (409)."""

    code = "hold_not_pending"


class ReversalExceedsOriginal(BusinessRuleError):
    """Reversals of one journal would add up to more than its amount (409)."""

    code = "reversal_exceeds_original"


class WrongTarget(BusinessRuleError):
    """A well-formed capture, void or reversal that the transaction it names refuses: not a
    hold, an amount over it, part of a multi-leg one (422 `invalid_request`: the request is
    valid on its own, as the OpenAPI document says; the named journal's state is not)."""

    code = "invalid_request"


class NotReversible(WrongTarget):
    """A reversal of a journal that is not a completed transfer, deposit, withdrawal or
    capture (422 `invalid_request`)."""


class HoldWithoutBalance(BusinessRuleError):
    """A hold whose source is a system account (`@world:<CUR>`): it has no balance to
    reserve, so its `held` could only grow without bound (400 `invalid_request` before
    acceptance; a journal that got past that fails with it)."""

    code = "invalid_request"


class CaptureOutsideHold(BusinessRuleError):
    """A capture whose legs are not the hold's, or not within them (never built by the
    API; decided as a failure rather than trusted)."""

    code = "invalid_request"


class RateLimited(KassaError):
    code = "rate_limited"
    retriable = True

    def __init__(self, message: str, *, retry_after_s: int | None = None,
                 quota: Quota | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.quota = quota  # the key's bucket, for the RateLimit answer headers


class Overloaded(KassaError):
    """Refused before anything was written: a queue or batcher is full, or we are stopping."""

    code = "overloaded"
    retriable = True


class Unavailable(KassaError):
    """A required dependency is down, timed out, or its circuit breaker is open."""

    code = "unavailable"
    retriable = True


BUSINESS_ERRORS: dict[str, type[BusinessRuleError]] = {
    cls.code: cls
    for cls in (AccountNotFound, AccountInactive, CurrencyMismatch, InsufficientFunds, AmountOverflow)
}


def business_error(code: str, message: str) -> BusinessRuleError:
    """Rebuild a business error from its stored code (journals keep code and message)."""
    return BUSINESS_ERRORS[code](message)


class TransientConflict(KassaError):
    """A deadlock or serialization failure: the whole database transaction may be retried."""

    code = "transient_conflict"
    retriable = True


class Rejected(InvalidRequest):
    """The database refused this item's data (bad text, out of range, a constraint).

    Raised for a whole group; the pipeline splits the group until the refused items
    stand alone, so only they get this error and the others are applied.
    """


class CommitUnknown(KassaError):
    """The connection failed after COMMIT was sent: the group may or may not have landed.

    Core finds out on another connection; `session` is the adapter's handle on the old
    database session (to fence it first), or None.
    """

    code = "outcome_unknown"
    retriable = True

    def __init__(self, message: str, *, session: object | None = None) -> None:
        super().__init__(message, retry_after_s=1)
        self.session = session


class OutcomeUnknown(KassaError):
    """Whether a request was accepted could not be found out in time (503; retry with the
    same Idempotency-Key, then it is applied exactly once)."""

    code = "outcome_unknown"
    retriable = True
