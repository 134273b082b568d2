"""The OpenAPI document of API.md (served at /openapi.json)."""

from __future__ import annotations

from typing import Any


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = _json(_ref("Error"), "error")
AMOUNT = {"type": "integer", "minimum": 1, "maximum": 2**53 - 1}
CURRENCY = {"type": "string", "pattern": "^[A-Z]{3,10}$"}
ERRORS = {str(c): ERROR for c in (400, 401, 403, 404, 409, 422, 429, 503)}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "receipt_code": {"type": "string"}}}}},
    "AccountIn": {"type": "object", "additionalProperties": False, "required": ["currency"],
                  "properties": {
                      "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                      "currency": CURRENCY,
                      "overdraft_limit": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
                      "contact": {"type": "object", "additionalProperties": False, "properties": {
                          "email": {"type": "string"}, "phone": {"type": "string"},
                          "push_token": {"type": "string"}}},
                      "metadata": {"type": "object"}}},
    "Account": {"type": "object", "properties": {
        "id": {"type": "string"}, "currency": CURRENCY, "balance": {"type": "integer"},
        "overdraft_limit": {"type": ["integer", "null"]},
        "status": {"enum": ["active", "locked", "closed"]},
        "created_at": {"type": "string", "format": "date-time"}, "metadata": {"type": "object"}}},
    "Leg": {"type": "object", "additionalProperties": False,
            "required": ["source", "destination", "amount"],
            "properties": {"source": {"type": "string"}, "destination": {"type": "string"},
                           "amount": AMOUNT}},
    "TransactionIn": {"type": "object", "additionalProperties": False,
                      "required": ["type", "currency"], "properties": {
                          "type": {"enum": ["transfer", "deposit", "withdrawal"]},
                          "currency": CURRENCY, "amount": AMOUNT,
                          "source": {"type": "string"}, "destination": {"type": "string"},
                          "legs": {"type": "array", "minItems": 1, "maxItems": 64,
                                   "items": _ref("Leg")},
                          "description": {"type": "string", "maxLength": 1024},
                          "metadata": {"type": "object"}}},
    "Accepted": {"type": "object", "properties": {
        "receipt_code": {"type": "string", "pattern": "^RCP-[0-9]{8}-[0-9A-HJKMNP-TV-Z]{16}$"},
        "status": {"const": "processing"}, "processing_time": {"type": "string"}}},
    "Entry": {"type": "object", "properties": {
        "account": {"type": "string"}, "direction": {"enum": ["debit", "credit"]},
        "amount": {"type": "integer"}, "balance_after": {"type": "integer"}}},
    "Transaction": {"type": "object", "properties": {
        "receipt_code": {"type": "string"}, "status": {"type": "string"},
        "type": {"type": "string"}, "currency": {"type": "string"},
        "journal_id": {"type": "integer"}, "description": {"type": ["string", "null"]},
        "metadata": {"type": "object"}, "entries": {"type": "array", "items": _ref("Entry")},
        "created_at": {"type": "string"}, "completed_at": {"type": ["string", "null"]}}},
    "Status": {"type": "object", "properties": {
        "receipt_code": {"type": "string"},
        "status": {"enum": ["processing", "executing", "completed", "failed"]},
        "error": {"oneOf": [{"type": "null"}, {"type": "object"}]},
        "updated_at": {"type": "string"}}},
}

_AUTH = [{"bearer": []}]
_ACCOUNT_ID = [{"name": "account_id", "in": "path", "required": True, "schema": {"type": "string"}}]
_RECEIPT = [{"name": "receipt_code", "in": "path", "required": True, "schema": {"type": "string"}}]
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255}}
_WAIT = {"name": "wait", "in": "query", "required": False, "schema": {"type": "boolean"}}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "security": _AUTH, "responses": {**responses, **ERRORS}, **extra}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


PATHS: dict[str, Any] = {
    "/v1/accounts": {"post": _op("Create an account", {"201": _json(_ref("Account"), "created")},
                                 requestBody=_body(_ref("AccountIn")))},
    "/v1/accounts/{account_id}": {
        "parameters": _ACCOUNT_ID,
        "get": _op("Get an account", {"200": _json(_ref("Account"), "the account")}),
        "patch": _op("Change an account's status", {"200": _json(_ref("Account"), "changed")},
                     requestBody=_body({"type": "object", "required": ["status"],
                                        "properties": {"status": {"enum": ["active", "locked", "closed"]}}}))},
    "/v1/accounts/{account_id}/entries": {
        "parameters": _ACCOUNT_ID,
        "get": _op("Ledger entries, newest first", {"200": _json({"type": "object"}, "a page")},
                   parameters=[{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                               {"name": "cursor", "in": "query", "schema": {"type": "string"}}])},
    "/v1/transactions": {"post": _op(
        "Post a transaction", {"202": _json(_ref("Accepted"), "accepted, durable"),
                               "201": _json(_ref("Transaction"), "completed (wait=true)")},
        parameters=[_IDEMPOTENCY, _WAIT], requestBody=_body(_ref("TransactionIn")))},
    "/v1/transactions/batch": {"post": _op(
        "Post up to 1,000 transactions", {"202": _json({"type": "object"}, "per-item results"),
                                          "201": _json({"type": "object"}, "per-item results")},
        parameters=[_WAIT], requestBody=_body({"type": "object", "required": ["transactions"],
                                               "properties": {"transactions": {
                                                   "type": "array", "minItems": 1, "maxItems": 1000,
                                                   "items": _ref("TransactionIn")}}}))},
    "/v1/transactions/{receipt_code}": {
        "parameters": _RECEIPT,
        "get": _op("Get a transaction", {"200": _json(_ref("Transaction"), "the transaction")})},
    "/v1/transactions/{receipt_code}/status": {
        "parameters": _RECEIPT,
        "get": _op("Get a transaction's status", {"200": _json(_ref("Status"), "the status")})},
    "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
    "/readyz": {"get": {"summary": "Readiness", "responses": {"200": {"description": "ready"},
                                                              "503": {"description": "not ready"}}}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Kassa", "version": "1"},
    "paths": PATHS,
    "components": {"schemas": SCHEMAS,
                   "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
}
