"""The OpenAPI document of docs/api.md (served at /openapi.json), generated.

Bodies come from the msgspec Structs in server/http/schemas.py (the request Structs are the
ones that decode requests, so the document cannot drift from them); error statuses come
from server/http/errors.py's one table. What is written here by hand is only which route
answers which statuses and codes, and its headers and parameters; tests/test_openapi.py
checks that every route of server/http/app.py is here and that the document is valid.
"""

from __future__ import annotations

from typing import Any

import msgspec

from server.http import schemas
from server.http.errors import HTTP_STATUS
from server.http.handlers.accounts import PAGE_LIMIT_MAX
from server.http.handlers.transactions import BATCH_MAX
from server.http.openapi_shapes import (
    ACCOUNT,
    ACCOUNT_CURSOR,
    JOURNAL_CURSOR,
    JSON_OBJECT,
    LEDGER_CURSOR,
    TAGS,
    name_operations,
    strings_without_nul,
    transaction_variants,
)
from server.http.openapi_webhooks import webhook_components, webhook_paths

REF = "#/components/schemas/{name}"

# Every response Struct and every request Struct; a union of Structs is a oneOf below.
BODIES: tuple[type[msgspec.Struct], ...] = (
    schemas.AccountIn, schemas.AccountPatch, schemas.TransactionIn, schemas.BatchItemIn,
    schemas.BatchIn, schemas.ErrorOut, schemas.FailedOut, schemas.AccountOut,
    schemas.EntriesPage, schemas.AcceptedOut, schemas.TransactionOut, schemas.StatusOut,
    schemas.PendingTransactionOut, schemas.HealthOut, schemas.ReadinessOut,
    schemas.AccountsPage, schemas.AccountAtOut, schemas.TransactionsPage, schemas.CaptureIn,
    schemas.ReverseIn, schemas.TransactionPatch,
)


# The Structs that decode request bodies (their strings are said to be NUL-free).
REQUESTS: tuple[type[msgspec.Struct], ...] = (
    schemas.AccountIn, schemas.Contact, schemas.AccountPatch, schemas.TransactionPatch,
    schemas.TransactionIn, schemas.BatchItemIn, schemas.LegIn, schemas.CaptureIn,
    schemas.ReverseIn)


def _ref(struct: type[msgspec.Struct]) -> dict[str, str]:
    return {"$ref": REF.format(name=struct.__name__)}


def _one_of(*structs: type[msgspec.Struct]) -> dict[str, Any]:
    return {"oneOf": [_ref(s) for s in structs]}


def _any_of(*structs: type[msgspec.Struct]) -> dict[str, Any]:
    return {"anyOf": [_ref(s) for s in structs]}


def _with_codes(schema: dict[str, Any], codes: tuple[str, ...]) -> dict[str, Any]:
    """An error body whose `error.code` is one of `codes`."""
    return {"allOf": [schema], "properties": {"error": {
        "properties": {"code": {"enum": list(codes)}}}}}


def components() -> dict[str, Any]:
    _, found = msgspec.json.schema_components(BODIES, ref_template=REF)
    for struct in REQUESTS:
        strings_without_nul(found[struct.__name__])
    found["JsonObject"] = JSON_OBJECT
    # A transaction request is one of its forms (server/http/openapi_shapes.py).
    found.update(transaction_variants(found["TransactionIn"], "TransactionIn"))
    found.update(transaction_variants(found["BatchItemIn"], "BatchItemIn", discriminated=False))
    found["LegIn"]["properties"].update(source=ACCOUNT, destination=ACCOUNT)
    # Either or both (handlers/accounts.py); neither is refused.
    found["AccountPatch"]["minProperties"] = 1
    # BatchIn decodes its items one by one (msgspec.Raw) so that a bad item is refused
    # alone, in its result: an item is a BatchItemIn, or anything else refused that way.
    items = found["BatchIn"]["properties"]["transactions"]
    items.update(items={"anyOf": [_ref(schemas.BatchItemIn), {
        "description": "Any other value: refused alone, its result an error."}]},
                 minItems=1, maxItems=BATCH_MAX)
    found["TransactionsPage"]["properties"]["transactions"]["items"] = _one_of(
        schemas.TransactionOut, schemas.PendingTransactionOut)
    found["BatchResults"] = {
        "type": "object", "required": ["results"], "properties": {"results": {
            "type": "array", "description": "one per item, in order",
            "items": _one_of(schemas.AcceptedOut, schemas.TransactionOut, schemas.ErrorOut)}}}
    found.update(webhook_components())
    return dict(sorted(found.items()))


# ------------------------------------------------------------------ headers, parameters

HEADERS = {
    "X-Request-Id": {"description": "The client's X-Request-Id (1..128 visible ASCII "
                                    "characters) or a new one; log lines name it.",
                     "schema": {"type": "string", "minLength": 1, "maxLength": 128}},
    "Location": {"description": "Where the resource or the receipt is read.",
                 "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before trying again.",
                    "schema": {"type": "integer", "minimum": 1}},
    "Idempotent-Replayed": {"description": "`true` on a replay of an earlier answer to the "
                                           "same Idempotency-Key and body (nothing posted).",
                            "schema": {"const": "true"}},
    "WWW-Authenticate": {"description": "On every 401: the scheme to use.",
                         "required": True, "schema": {"const": "Bearer"}},
    "RateLimit-Policy": {"description": "With KASSA_RATE_LIMIT set: the key's quota policy, "
                                        '`"api_key";q=<requests>;w=<seconds>` (IETF '
                                        "draft-ietf-httpapi-ratelimit-headers-11).",
                         "schema": {"type": "string"}},
    "RateLimit": {"description": "With KASSA_RATE_LIMIT set: what is left of the key's quota, "
                                 '`"api_key";r=<requests left>;t=<seconds until it is full '
                                 "again>`.", "schema": {"type": "string"}},
}


def _header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def _param(name: str, where: str, schema: dict[str, Any], description: str,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path",
            "description": description, "schema": schema}


# Any value is accepted: one that is not 1..128 visible ASCII characters is replaced.
REQUEST_ID = _param("X-Request-Id", "header", {"type": "string"},
                    "Names this request in the server's logs; echoed back when it is 1..128 "
                    "visible ASCII characters, else replaced by a new one.")
ACCOUNT_ID = _param("account_id", "path", {"type": "string", "pattern": r"^[A-Za-z0-9_@:-]{1,64}$"},
                    "An account id (`@world:<CUR>` for system accounts).")
RECEIPT = _param("receipt_code", "path",
                 {"type": "string", "pattern": r"^RCP-[0-9]{8}-[0-9A-HJKMNP-TV-Z]{16}$"},
                 "A receipt code.")
IDEMPOTENCY_KEY = _param("Idempotency-Key", "header",
                         {"type": "string", "minLength": 1, "maxLength": 255},
                         "Same key and body: one posting, the original answer replayed.")
WAIT = _param("wait", "query", {"type": "boolean"},
              "`true`: answer when the transaction is final (201, or its 422).")
LIMIT = _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": PAGE_LIMIT_MAX,
                                  "default": 100}, "Page size.")
def _cursor(pattern: str) -> dict[str, Any]:
    return _param("cursor", "query", {"type": "string", "pattern": pattern},
                  "`next_cursor` of the previous page (empty: the first page).")


JOURNAL_PAGE = _cursor(f"^$|{JOURNAL_CURSOR}")
ACCOUNT_PAGE = _cursor(f"^$|{ACCOUNT_CURSOR}")
ENTRY_PAGE = _cursor(f"^$|{LEDGER_CURSOR}")
_TIME = {"type": "string", "format": "date-time"}
AT = _param("at", "query", _TIME, "RFC 3339 instant: answer the balance as it stood then "
            "(held and available omitted).")
# `metadata[<key>]=<value>`, any number: a deepObject query parameter (OpenAPI 3.1). A key
# is not empty; neither holds a NUL (metadata cannot), nor a key a line feed.
METADATA = {**_param("metadata", "query", {
                "type": "object", "propertyNames": {"pattern": r"^[^\n\u0000]+$"},
                "additionalProperties": {"type": "string", "pattern": r"^[^\u0000]*$"}},
                     "`metadata[<key>]=<value>`, any number, all must hold: items whose "
                     "metadata has that key at its top level with exactly that string value."),
            "style": "deepObject", "explode": True}
LIST_FILTERS = (
    _param("account", "query", {"type": "string", "pattern": r"^[A-Za-z0-9_@:-]{1,64}$"},
           "Only transactions with a leg on this account (unknown account: empty list)."),
    _param("status", "query", {"enum": ["processing", "executing", "completed", "failed",
                                        "held", "voided"]}, "Only this status."),
    _param("type", "query", {"enum": ["transfer", "deposit", "withdrawal", "capture", "void",
                                      "reversal"]}, "Only this type."),
    _param("since", "query", _TIME, "Created at or after this RFC 3339 instant."),
    _param("until", "query", _TIME, "Created at or before this RFC 3339 instant."),
    METADATA,
)
ACCOUNT_FILTERS = (
    _param("currency", "query", {"type": "string", "pattern": r"^[A-Z]{3,10}$"},
           "Only accounts of this currency."),
    _param("status", "query", {"enum": ["active", "locked", "closed"]}, "Only this status."),
    METADATA,
)

# ------------------------------------------------------------------------- responses

# Refused before anything is read, for every /v1 route; 503 unavailable when a
# dependency the route needs (PostgreSQL, Redis, the receipt service) is down.
V1_ERRORS = ("invalid_request", "unauthorized", "forbidden", "rate_limited", "unavailable")
BODY_ERRORS = ("unsupported_media_type",)
BUSINESS_ERRORS = ("account_not_found", "account_inactive", "currency_mismatch",
                   "insufficient_funds", "amount_overflow")
TRANSACTION_422 = (*BUSINESS_ERRORS, "idempotency_key_reused")


def _error_responses(codes: tuple[str, ...], body: bool) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(HTTP_STATUS[code], []).append(code)
    out: dict[str, Any] = {}
    for status, status_codes in sorted(by_status.items()):
        schema = _with_codes(_ref(schemas.ErrorOut), tuple(status_codes))
        headers = {"X-Request-Id": _header("X-Request-Id")}
        if status in (429, 503):
            headers["Retry-After"] = _header("Retry-After")
        if status == 401:
            headers["WWW-Authenticate"] = _header("WWW-Authenticate")
        out[str(status)] = {"description": ", ".join(status_codes), "headers": headers,
                            "content": {"application/json": {"schema": schema}}}
    if body:
        out["413"] = {"description": "invalid_request: the body is over KASSA_BODY_SIZE_MAX",
                      "headers": {"X-Request-Id": _header("X-Request-Id")},
                      "content": {"application/json": {"schema": _ref(schemas.ErrorOut)}}}
    return out


def _ok(description: str, schema: dict[str, Any], *headers: str) -> dict[str, Any]:
    return {"description": description,
            "headers": {h: _header(h) for h in ("X-Request-Id", *headers)},
            "content": {"application/json": {"schema": schema}}}


def _op(summary: str, scope: str | None, responses: dict[str, Any], errors: tuple[str, ...] = (),
        body: dict[str, Any] | None = None, params: tuple[dict[str, Any], ...] = ()
        ) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": [REQUEST_ID, *params]}
    if scope is not None:
        op["description"] = f"Needs an API key with scope `{scope}` (or `admin`)."
        op["security"] = [{"bearer": []}]
        errors = V1_ERRORS + errors
    else:
        op["security"] = []
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": body}}}
    op["responses"] = {**responses, **_error_responses(errors, body is not None)}
    return op


def paths() -> dict[str, Any]:
    replay = ("Location", "Idempotent-Replayed")
    accepted = _ok("Accepted: durable, it will end completed or failed.",
                   _ref(schemas.AcceptedOut), *replay)
    return {
        "/healthz": {"get": _op("Liveness", None, {
            "200": _ok("The process runs.", _ref(schemas.HealthOut))})},
        "/readyz": {"get": _op("Readiness", None, {
            "200": _ok("Ready.", _ref(schemas.ReadinessOut)),
            "503": _ok("Not ready.", _ref(schemas.ReadinessOut))})},
        # 401 only with KASSA_METRICS_TOKEN set, 404 only with KASSA_METRICS_PORT set.
        "/metrics": {"get": _op("Prometheus metrics, all worker processes", None, {
            "200": {"description": "Prometheus text format",
                    "headers": {"X-Request-Id": _header("X-Request-Id")},
                    "content": {"text/plain": {"schema": {"type": "string"}}}}},
            ("unauthorized", "not_found"))},
        "/openapi.json": {"get": _op("This document", None, {
            "200": _ok("OpenAPI 3.1", {"type": "object"})})},
        "/v1/accounts": {
            "post": _op("Create an account", "admin",
                        {"201": _ok("Created.", _ref(schemas.AccountOut), "Location")},
                        ("account_exists", *BODY_ERRORS), _ref(schemas.AccountIn)),
            "get": _op("List accounts by id (system accounts included)", "read",
                       {"200": _ok("A page.", _ref(schemas.AccountsPage))},
                       params=(*ACCOUNT_FILTERS, LIMIT, ACCOUNT_PAGE))},
        "/v1/accounts/{account_id}": {
            "parameters": [ACCOUNT_ID],
            "get": _op("Get an account", "read",
                       {"200": _ok("The account; with `at`, its balance then.",
                                   _any_of(schemas.AccountOut, schemas.AccountAtOut))},
                       ("not_found",), params=(AT,)),
            "patch": _op("Change an account's status and/or merge into its metadata", "admin",
                         {"200": _ok("Changed.", _ref(schemas.AccountOut)),
                          "422": _ok("invalid_request: a system account cannot be changed",
                                     _with_codes(_ref(schemas.ErrorOut), ("invalid_request",)))},
                         ("not_found", *BODY_ERRORS), _ref(schemas.AccountPatch))},
        "/v1/accounts/{account_id}/entries": {
            "parameters": [ACCOUNT_ID],
            "get": _op("Ledger entries, newest first", "read",
                       {"200": _ok("A page.", _ref(schemas.EntriesPage))},
                       ("not_found",), params=(LIMIT, ENTRY_PAGE))},
        "/v1/transactions": {"get": _op(
            "List transactions, newest first", "read",
            {"200": _ok("A page.", _ref(schemas.TransactionsPage))},
            params=(*LIST_FILTERS, LIMIT, JOURNAL_PAGE)), "post": _op(
            "Post a transaction", "write",
            {"202": accepted,
             "201": _ok("Completed (wait=true).", _ref(schemas.TransactionOut), *replay),
             "422": _ok("Refused by a business rule at pre-validation (no receipt yet), "
                        "or at execution with wait=true (FailedOut: with its receipt); or "
                        "idempotency_key_reused. " + ", ".join(TRANSACTION_422),
                        _with_codes(_any_of(schemas.ErrorOut, schemas.FailedOut),
                                    TRANSACTION_422), "Idempotent-Replayed")},
            ("idempotency_in_progress", *BODY_ERRORS, "overloaded", "outcome_unknown"),
            _ref(schemas.TransactionIn), (IDEMPOTENCY_KEY, WAIT))},
        "/v1/transactions/batch": {"post": _op(
            "Post 1 to 1,000 independent transactions", "write",
            {"202": _ok("Per-item results: 202 bodies or errors.", REF_BATCH_RESULTS),
             "201": _ok("Per-item results (wait=true): transactions or errors.",
                        REF_BATCH_RESULTS)},
            (*BODY_ERRORS, "overloaded"), _ref(schemas.BatchIn), (WAIT,))},
        "/v1/transactions/{receipt_code}": {
            "parameters": [RECEIPT],
            "get": _op("Get a transaction", "read", {"200": _ok(
                "The transaction; before it is final, its status with no entries.",
                _one_of(schemas.TransactionOut, schemas.PendingTransactionOut))},
                ("not_found",)),
            "patch": _op("Merge into a transaction's metadata (nothing else can change)",
                         "write", {"200": _ok(
                             "The transaction as GET answers it, after the merge.",
                             _one_of(schemas.TransactionOut, schemas.PendingTransactionOut))},
                         ("not_found", *BODY_ERRORS), _ref(schemas.TransactionPatch))},
        "/v1/transactions/{receipt_code}/status": {
            "parameters": [RECEIPT],
            "get": _op("Get a transaction's status", "read",
                       {"200": _ok("The status.", _ref(schemas.StatusOut))}, ("not_found",))},
        "/v1/transactions/{receipt_code}/capture": _linked(
            "Capture a pending hold, all of it or part (the rest is released)",
            schemas.CaptureIn, ("hold_not_pending",)),
        "/v1/transactions/{receipt_code}/void": _linked(
            "Void a pending hold", None, ("hold_not_pending",)),
        "/v1/transactions/{receipt_code}/reverse": _linked(
            "Reverse a completed transaction, all of it or part (single-leg)",
            schemas.ReverseIn, ("reversal_exceeds_original",)),
        **webhook_paths(),
    }


def _linked(summary: str, body: type[msgspec.Struct] | None, conflicts: tuple[str, ...]
            ) -> dict[str, Any]:
    """A capture, void or reversal: a new transaction naming the one in the path."""
    accepted = _ok("Accepted: a receipt of its own, processing.", _ref(schemas.AcceptedOut),
                   "Location", "Idempotent-Replayed")
    op = _op(
        summary, "write",
        {"202": accepted,
         "201": _ok("Finished (wait=true).", _ref(schemas.TransactionOut),
                    "Location", "Idempotent-Replayed"),
         "422": _ok("Refused by a business rule at pre-validation, or at execution with "
                    "wait=true (FailedOut: with its receipt); invalid_request: the transaction "
                    "named is not one this applies to (not a hold, not reversible, an amount "
                    "over it).", _with_codes(_any_of(schemas.ErrorOut, schemas.FailedOut),
                                             (*TRANSACTION_422, "invalid_request")))},
        ("not_found", "idempotency_in_progress", *conflicts, *BODY_ERRORS, "overloaded",
         "outcome_unknown"),
        _ref(body) if body is not None else None, (IDEMPOTENCY_KEY, WAIT))
    if body is not None:
        op["requestBody"]["required"] = False  # every field has a default
    return {"parameters": [RECEIPT], "post": op}


REF_BATCH_RESULTS = {"$ref": REF.format(name="BatchResults")}

# Every code of the table but a method that a path does not have (405, not per route);
# a defect (500 `internal`) is not in the table.
UNDOCUMENTED_CODES = ("method_not_allowed",)


def _rate_limited(paths: dict[str, Any]) -> None:
    """Every answer to a keyed request may carry the rate limit headers."""
    for item in paths.values():
        for method, op in item.items():
            if method != "parameters" and op["security"]:
                for response in op["responses"].values():
                    response["headers"].update(
                        {h: _header(h) for h in ("RateLimit-Policy", "RateLimit")})


def document() -> dict[str, Any]:
    documented = paths()
    name_operations(documented)
    _rate_limited(documented)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kassa", "version": "1",
                 "description": "A double-entry ledger behind an HTTP API. Every error body "
                                "is ErrorOut; every response carries X-Request-Id. A query "
                                "parameter an operation does not list is refused (400)."},
        "tags": TAGS,
        "paths": documented,
        "components": {"schemas": components(), "headers": HEADERS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


OPENAPI: dict[str, Any] = document()
