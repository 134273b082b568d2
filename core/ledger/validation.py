"""Request rules that need no data: shapes, ranges, and normalisation to legs."""

from __future__ import annotations

import re
from typing import Any

from core.ledger.errors import HoldWithoutBalance, InvalidRequest
from core.ledger.models import AMOUNT_MAX, LEGS_MAX, WORLD_PREFIX, Leg, Transaction, world_account

CURRENCY = re.compile(r"[A-Z]{3,10}")
ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# What a URL may name: an account id, the system accounts included; a receipt code.
ACCOUNT_REF = re.compile(r"[A-Za-z0-9_@:-]{1,64}")
RECEIPT_CODE = re.compile(r"RCP-[0-9]{8}-[0-9A-HJKMNP-TV-Z]{16}")
LIMIT = re.compile(r"[0-9]{1,10}")
NESTING_MAX = 32  # JSON levels, the outermost object being level 1
DESCRIPTION_MAX = 1024
TYPES = ("transfer", "deposit", "withdrawal")


def check_currency(currency: str, param: str = "currency") -> str:
    if not CURRENCY.fullmatch(currency):
        raise InvalidRequest(f"currency {currency!r} must be 3 to 10 uppercase letters",
                             param=param)
    return currency


def check_account_id(account_id: str, currency: str | None = None, param: str = "id") -> str:
    if ACCOUNT_ID.fullmatch(account_id):
        return account_id
    if currency is not None and account_id == world_account(currency):
        return account_id
    if account_id.startswith(WORLD_PREFIX):
        raise InvalidRequest(f"{account_id!r} is not the system account of this currency",
                             param=param)
    raise InvalidRequest(f"account id {account_id!r} must match [A-Za-z0-9_-]{{1,64}}",
                         param=param)


def check_account_ref(account_id: str, param: str | None = None) -> str:
    """An account id as a URL may name it (`@world:<CUR>` included); `param` names the
    query parameter it came in (None: the path)."""
    if not ACCOUNT_REF.fullmatch(account_id):
        raise InvalidRequest("account id must match [A-Za-z0-9_@:-]{1,64}", param=param)
    return account_id


def check_receipt_code(code: str) -> str:
    if not RECEIPT_CODE.fullmatch(code):
        raise InvalidRequest("receipt code must look like RCP-YYYYMMDD-<16 Crockford characters>")
    return code


def check_limit(raw: str, limit_max: int) -> int:
    """A page size of 1 to `limit_max`, in ASCII digits only."""
    if not LIMIT.fullmatch(raw) or not 1 <= int(raw) <= limit_max:
        raise InvalidRequest(f"limit must be an integer from 1 to {limit_max}", param="limit")
    return int(raw)


def check_json_value(value: Any, level: int, strings: bool) -> None:
    """Refuse a decoded JSON value nested deeper than NESTING_MAX (`level` is its own
    level) and, when `strings`, any string or key in it holding NUL. Decoders have already
    refused invalid UTF-8 and lone surrogates; a NUL can only come from a \\u0000 escape,
    so callers pass `strings` only when the raw body holds one."""
    if isinstance(value, str):
        if strings and "\x00" in value:
            raise InvalidRequest("strings must not contain NUL characters")
        return
    if not isinstance(value, (dict, list)):
        return
    if level > NESTING_MAX:
        raise InvalidRequest(f"JSON is nested deeper than {NESTING_MAX} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if strings and "\x00" in key:
                raise InvalidRequest("strings must not contain NUL characters")
            check_json_value(item, level + 1, strings)
    else:
        for item in value:
            check_json_value(item, level + 1, strings)


def check_amount(amount: int, what: str = "amount") -> int:
    if not 1 <= amount <= AMOUNT_MAX:
        raise InvalidRequest(f"{what} must be an integer from 1 to 2**53-1 minor units",
                             param=what)
    return amount


def _leg(source: str | None, destination: str | None, amount: int | None, currency: str,
         at: str = "") -> Leg:
    """One leg; `at` is where it is in the body (`legs[2].`, or nothing for a single leg)."""
    if source is None or destination is None or amount is None:
        missing = "source" if source is None else "destination" if destination is None else "amount"
        raise InvalidRequest("a transfer needs source, destination and amount, or legs",
                             param=at + missing)
    leg = Leg(check_account_id(source, currency, at + "source"),
              check_account_id(destination, currency, at + "destination"),
              check_amount(amount, at + "amount"))
    if leg.source == leg.destination:
        raise InvalidRequest("source and destination must differ", param=at + "destination")
    return leg


def normalize_transaction(
    type: str,
    currency: str,
    *,
    amount: int | None = None,
    source: str | None = None,
    destination: str | None = None,
    legs: list[tuple[str, str, int]] | None = None,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Transaction:
    """Check a transaction request and express every form of it as legs."""
    if type not in TYPES:
        raise InvalidRequest(f"type must be one of {', '.join(TYPES)}", param="type")
    check_currency(currency)
    if description is not None and len(description) > DESCRIPTION_MAX:
        raise InvalidRequest(f"description is longer than {DESCRIPTION_MAX} characters",
                             param="description")
    if legs is not None:
        if type != "transfer" or amount is not None or source is not None or destination is not None:
            raise InvalidRequest("legs replace amount, source and destination, for transfers only",
                                 param="legs")
        if not 1 <= len(legs) <= LEGS_MAX:
            raise InvalidRequest(f"a transaction has 1 to {LEGS_MAX} legs", param="legs")
        normalized = tuple(_leg(s, d, a, currency, f"legs[{i}].") for i, (s, d, a) in enumerate(legs))
    elif type == "deposit":
        if source is not None:
            raise InvalidRequest("a deposit has a destination only", param="source")
        normalized = (_leg(world_account(currency), destination, amount, currency),)
    elif type == "withdrawal":
        if destination is not None:
            raise InvalidRequest("a withdrawal has a source only", param="destination")
        normalized = (_leg(source, world_account(currency), amount, currency),)
    else:
        normalized = (_leg(source, destination, amount, currency),)
    return Transaction(type, currency, normalized, description, metadata or {})


def hold_source_error(tx: Transaction) -> HoldWithoutBalance | None:
    """A hold reserves part of each source's balance: `@world:<CUR>` has none to reserve (it
    has no floor, its balance being minus all money deposited), so it is never the source of
    a hold (400 `invalid_request`). A rule on the request alone, kept here; pre-validation
    (core/ledger/decide.py) applies it to every submission, single or batch item, before
    anything is written, and the decision refuses a hold from an account without a floor
    that got past it (core/ledger/linked.py)."""
    if tx.hold_expires_in_s is None:
        return None
    for leg in tx.legs:
        if leg.source.startswith(WORLD_PREFIX):
            return HoldWithoutBalance(f"{leg.source} cannot be the source of a hold: a system "
                                      "account has no balance to reserve")
    return None


def check_overdraft_limit(limit: int) -> int:
    if not 0 <= limit <= AMOUNT_MAX:
        raise InvalidRequest("overdraft_limit must be an integer from 0 to 2**53-1",
                             param="overdraft_limit")
    return limit
