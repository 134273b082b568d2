"""Schemathesis hooks for tests/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS):
the rules of a valid request that the OpenAPI document states in words only, because JSON
Schema cannot say them or Hypothesis cannot generate from the schema that would, and one
case Schemathesis mislabels."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis.internal import lambda_sources
from schemathesis.core import NOT_SET
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.core.parameters import ParameterLocation

# Python 3.11's ast.parse sometimes fails with "SystemError: AST constructor recursion depth
# mismatch" on Schemathesis's largest module, which Hypothesis parses to describe a lambda
# in a strategy's repr. A description is cosmetic: without one, the lambda's repr.
_describe = lambda_sources.lambda_description


def _lambda_description(f: Any) -> str:
    try:
        return _describe(f)
    except SystemError:
        return repr(f)


lambda_sources.lambda_description = _lambda_description


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    return not _same_account(case.body)


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    return not (isinstance(failure, AcceptedNegativeData) and _negated_nothing(case))


def _same_account(body: Any) -> bool:
    """A transfer, or a leg, from an account to itself is refused (400, docs/api.md), and
    JSON Schema has no way to say that two fields differ: such requests are not sent."""
    if not isinstance(body, dict):
        return False
    legs = body.get("legs") if isinstance(body.get("legs"), list) else []
    return any(isinstance(leg, dict) and leg.get("source") is not None
               and leg.get("source") == leg.get("destination") for leg in [body, *legs])


def _negated_nothing(case: Any) -> bool:
    """Schemathesis (4.32.5) labels some cases negative in which nothing is invalid: a
    reversal whose body, the one negated part, it left out (or made "random bytes" that
    are no bytes at all), an optional body. It then wants them refused; a valid request is
    accepted, and that acceptance is not a failure. (The body is left out after the
    filter_case hooks ran: only the failure can be told apart.)"""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative:
        return False
    negated = {where for where, info in meta.components.items() if info.mode.is_negative}
    if case.body is NOT_SET or (isinstance(case.body, bytes) and not case.body.strip()):
        negated.discard(ParameterLocation.BODY)
    return not negated


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """No string in a body holds NUL (docs/api.md); the document says so with a pattern
    everywhere but inside metadata, free-form JSON (server/http/openapi_shapes.py says why):
    a request meant to be valid gets its NULs there removed."""
    if case.meta is not None and case.meta.generation.mode.is_positive:
        case.body = _without_nul(case.body)
    return case


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value
