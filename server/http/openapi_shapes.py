"""What server/http/openapi.py states beyond the Structs, so that a generator (a client's, a
fuzzer's) knows what is valid: a transaction request as a `oneOf` discriminated by `type`,
the exact form of each listing's cursor, and each operation's id and tag.

A schema-valid request is one the server accepts (tests/test_schemathesis.py runs
Schemathesis's positive_data_acceptance check against it), so what the decoder takes and
the rules across fields refuse must both be said here.
"""

from __future__ import annotations

import string
from typing import Any

from core.ledger.validation import NESTING_MAX

_NULL = {"type": "null"}
# What a generator should name as a source or destination. `@world:<CUR>` is taken too, but
# only that of the request's currency, which JSON Schema cannot say: left out (like source
# equal to destination, refused with 400, which it cannot say either).
ACCOUNT = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$",
           "description": "An account id; also `@world:<CUR>` of the request's currency."}


def _required(schema: dict[str, Any]) -> dict[str, Any]:
    """A property schema without its `null` (msgspec writes `X | None` as anyOf X, null)."""
    options = [s for s in schema.get("anyOf", ()) if s != _NULL]
    return options[0] if len(options) == 1 else schema


def transaction_variants(base: dict[str, Any], name: str, discriminated: bool = True
                         ) -> dict[str, dict[str, Any]]:
    """`base` (the generated schema of TransactionIn or BatchItemIn) as its valid forms:
    `<name>` is a oneOf discriminated by `type` (`<name>Transfers`: a transfer is one of four
    forms, `<name>Withdrawals` one of two); a transfer is one of four (amount, source
    and destination, or legs; held or not), a withdrawal held or not, a deposit never held.
    A field of another form may be present as null (null is "not given")."""
    props = base["properties"]
    common = {k: v for k, v in props.items()
              if k not in ("type", "amount", "source", "destination", "legs", "hold",
                           "hold_expires_in_s")}
    forms = {
        "Transfer": (("amount", "source", "destination"), True),
        "LegsTransfer": (("legs",), True),
        "Deposit": (("amount", "destination"), False),
        "Withdrawal": (("amount", "source"), True),
    }
    out: dict[str, dict[str, Any]] = {}
    for form, (fields, holdable) in forms.items():
        kind = "transfer" if form.endswith("Transfer") else form.lower()
        for held in (False, True) if holdable else (False,):
            own = {k: ACCOUNT if k in ("source", "destination") else _required(props[k])
                   for k in fields}
            others = {k: _NULL for k in ("amount", "source", "destination", "legs") if k not in own}
            hold = ({"hold": {"const": True}, "hold_expires_in_s": props["hold_expires_in_s"]}
                    if held else {"hold": {"anyOf": [{"const": False}, _NULL]},
                                  "hold_expires_in_s": _NULL})
            variant = f"{name}{'Held' if held else ''}{form}"
            out[variant] = {
                "type": "object", "additionalProperties": False,
                "properties": {"type": {"const": kind}, **common, **own, **others, **hold},
                "required": ["type", *(k for k in base["required"] if k != "type"), *fields,
                             *(("hold",) if held else ())]}
    ref = "#/components/schemas/{}".format
    if not discriminated:  # one flat oneOf: a shallower schema for a generator to walk
        out[name] = {"description": base.get("description", ""),
                     "oneOf": [{"$ref": ref(v)} for v in out]}
        return out
    by_type: dict[str, list[str]] = {}
    for variant, schema in out.items():
        by_type.setdefault(schema["properties"]["type"]["const"], []).append(variant)
    for kind, variants in by_type.items():
        if len(variants) > 1:
            out[f"{name}{kind.title()}s"] = {"oneOf": [{"$ref": ref(v)} for v in variants]}
    mapping = {kind: ref(f"{name}{kind.title()}s" if len(vs) > 1 else vs[0])
               for kind, vs in by_type.items()}
    out[name] = {"description": base.get("description", ""),
                 "oneOf": [{"$ref": r} for r in mapping.values()],
                 "discriminator": {"propertyName": "type", "mapping": mapping}}
    return out


# ------------------------------------------------------------------------ cursors

_B64 = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def _cls(values: set[int]) -> str:
    chars = "".join(sorted(_B64[v] for v in values)).replace("-", "\\-")
    return chars if len(values) == 1 else f"[{chars}]"


def _group(first: set[int], second: set[int], third: set[int] | None) -> str:
    """base64url of bytes b1 b2 [b3] drawn from these sets: 4 characters (3 with no b3).
    c1 is b1's top six bits; c2 b1's last two and b2's top four; c3 b2's last four and
    b3's top two; c4 b3's last six: each character depends only on the one before."""
    alternatives = []
    for high in sorted({b >> 4 for b in second}):
        heads: dict[int, set[int]] = {}
        for b1 in first:
            heads.setdefault(b1 >> 2, set()).add(((b1 & 3) << 4) | high)
        head = "|".join(_B64[c1] + _cls(c2) for c1, c2 in sorted(heads.items()))
        lows = {b & 15 for b in second if b >> 4 == high}
        if third is None:
            tail = _cls({low << 2 for low in lows})
        else:
            tail = "(?:" + "|".join(
                _cls({(low << 2) | top for low in lows}) + _cls({b & 63 for b in third if b >> 6 == top})
                for top in sorted({b >> 6 for b in third})) + ")"
        alternatives.append(f"(?:{head}){tail}")
    return "(?:" + "|".join(alternatives) + ")"


def _single(byte_set: set[int]) -> str:
    heads: dict[int, set[int]] = {}
    for b in byte_set:
        heads.setdefault(b >> 2, set()).add((b & 3) << 4)
    return "(?:" + "|".join(_B64[c1] + _cls(c2) for c1, c2 in sorted(heads.items())) + ")"


def cursor_pattern(prefix: str, first: str, alphabet: str, length_max: int) -> str:
    """The exact pattern of base64url (no padding) of `prefix`, a character of `first`
    and up to `length_max` - 1 characters of `alphabet`: the listings' cursors
    (server/adapters/postgres), checked as such by the handlers. `length_max` + 1 must
    leave 2 bytes after whole groups."""
    assert len(prefix) == 1 and (length_max + 1) % 3 == 2
    p, one, chars = {ord(prefix)}, {ord(c) for c in first}, {ord(c) for c in alphabet}
    groups_max = (length_max + 1) // 3 - 1
    return (f"^(?:{_group(p, one, None)}|{_group(p, one, chars)}"
            f"(?:{_group(chars, chars, chars)}){{0,{groups_max}}}"
            f"(?:{_single(chars)}|{_group(chars, chars, None)})?)$")


DIGITS = string.digits
ACCOUNT_ID_CHARS = string.ascii_letters + string.digits + "_@:-"
ID_DIGITS_MAX = 16
# Journal and ledger ids of up to 16 digits (well beyond what a ledger reaches), written
# without leading zeros (ids start at 1).
JOURNAL_CURSOR = cursor_pattern("j", DIGITS[1:], DIGITS, ID_DIGITS_MAX)
LEDGER_CURSOR = cursor_pattern("l", DIGITS[1:], DIGITS, ID_DIGITS_MAX)
ACCOUNT_CURSOR = cursor_pattern("a", ACCOUNT_ID_CHARS, ACCOUNT_ID_CHARS, 64)
# Webhook deliveries' (core/pipeline/webhooks.py `cursor_delivery`), for their document.
DELIVERY_CURSOR = cursor_pattern("d", DIGITS[1:], DIGITS, ID_DIGITS_MAX)

# ------------------------------------------------------------------- operations

# (method, path): (operationId, tag)
OPERATIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("get", "/healthz"): ("getHealth", "operations"),
    ("get", "/readyz"): ("getReadiness", "operations"),
    ("get", "/metrics"): ("getMetrics", "operations"),
    ("get", "/openapi.json"): ("getOpenApi", "operations"),
    ("post", "/v1/accounts"): ("createAccount", "accounts"),
    ("get", "/v1/accounts"): ("listAccounts", "accounts"),
    ("get", "/v1/accounts/{account_id}"): ("getAccount", "accounts"),
    ("patch", "/v1/accounts/{account_id}"): ("updateAccount", "accounts"),
    ("get", "/v1/accounts/{account_id}/entries"): ("listAccountEntries", "accounts"),
    ("get", "/v1/transactions"): ("listTransactions", "transactions"),
    ("post", "/v1/transactions"): ("createTransaction", "transactions"),
    ("post", "/v1/transactions/batch"): ("createTransactionBatch", "transactions"),
    ("get", "/v1/transactions/{receipt_code}"): ("getTransaction", "transactions"),
    ("patch", "/v1/transactions/{receipt_code}"): ("updateTransaction", "transactions"),
    ("get", "/v1/transactions/{receipt_code}/status"): ("getTransactionStatus", "transactions"),
    ("post", "/v1/transactions/{receipt_code}/capture"): ("captureHold", "holds"),
    ("post", "/v1/transactions/{receipt_code}/void"): ("voidHold", "holds"),
    ("post", "/v1/transactions/{receipt_code}/reverse"): ("reverseTransaction", "transactions"),
    ("post", "/v1/webhooks"): ("createWebhook", "webhooks"),
    ("get", "/v1/webhooks"): ("listWebhooks", "webhooks"),
    ("get", "/v1/webhooks/{webhook_id}"): ("getWebhook", "webhooks"),
    ("delete", "/v1/webhooks/{webhook_id}"): ("deleteWebhook", "webhooks"),
    ("get", "/v1/webhooks/{webhook_id}/deliveries"): ("listWebhookDeliveries", "webhooks"),
    ("post", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"):
        ("redeliverWebhookDelivery", "webhooks"),
}
TAGS = [
    {"name": "accounts", "description": "Accounts, their balances and ledger entries."},
    {"name": "transactions", "description": "Posting, reading, listing and reversing."},
    {"name": "holds", "description": "Two-phase transfers: capture or void a hold."},
    {"name": "webhooks", "description": "Endpoints that receive the events, and deliveries."},
    {"name": "operations", "description": "Health, readiness, metrics; no API key."},
]


def name_operations(paths: dict[str, Any]) -> None:
    """Give every operation in OPERATIONS its operationId and tag (tests/test_openapi.py
    checks that none is missing)."""
    for path, item in paths.items():
        for method, op in item.items():
            if (method, path) in OPERATIONS:
                op["operationId"], tag = OPERATIONS[(method, path)]
                op["tags"] = [tag]


# ------------------------------------------------------------------- body strings

# Every string in a body is valid UTF-8 without NUL (docs/api.md): ids and currencies have
# their patterns; every other string gets this one. Metadata is free-form JSON, NESTING_MAX
# levels deep at most counting the body's: its keys get the pattern, its values only these
# words. A schema for values at every depth must be recursive (or one schema per level,
# twice per level when inlined), and Hypothesis fails while describing strategies that
# deep (CPython's "AST constructor recursion depth mismatch").
WITHOUT_NUL = "^[^\\u0000]*$"
JSON_OBJECT = {"type": "object", "propertyNames": {"pattern": WITHOUT_NUL},
               "description": f"Free-form JSON, {NESTING_MAX} levels deep at most counting "
                              "the body's; its strings, keys and values at any depth, "
                              "without NUL."}


def strings_without_nul(schema: dict[str, Any]) -> dict[str, Any]:
    """A request schema with every string without a pattern given the NUL-free one, and
    every free-form object (metadata) the JsonObject schema (changed in place)."""
    if schema.get("type") == "object" and "properties" not in schema:
        return {"$ref": "#/components/schemas/JsonObject"}
    if schema.get("type") == "string" and "pattern" not in schema and "enum" not in schema:
        schema["pattern"] = WITHOUT_NUL
    for key in ("anyOf", "oneOf"):
        if key in schema:
            schema[key] = [strings_without_nul(option) for option in schema[key]]
    for name, prop in schema.get("properties", {}).items():
        schema["properties"][name] = strings_without_nul(prop)
    return schema
