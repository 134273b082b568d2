"""core/ledger/metadata.py: JSON Merge Patch (RFC 7396) and the limits of the result."""

from __future__ import annotations

from typing import Any

import pytest

from core.ledger.errors import InvalidRequest
from core.ledger.metadata import merge_patch, metadata_edit

# RFC 7396, Appendix A, those whose target and patch are objects (metadata always is).
RFC_EXAMPLES: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("stored", "patch", "merged"), RFC_EXAMPLES)
def test_rfc_7396_examples(stored: dict[str, Any], patch: dict[str, Any],
                           merged: dict[str, Any]) -> None:
    before = repr(stored), repr(patch)
    assert merge_patch(stored, patch) == merged
    assert (repr(stored), repr(patch)) == before, "neither side is changed"


def test_the_result_must_fit_in_a_body_by_itself() -> None:
    fits = {"k": "x" * 80}  # {"metadata":{"k":"xxx…"}}: 13 + 88 bytes
    assert metadata_edit(fits, 101)({}) == fits
    with pytest.raises(InvalidRequest) as refused:
        metadata_edit(fits, 100)({})
    assert refused.value.param == "metadata"
    with pytest.raises(InvalidRequest):  # each side fits; together they do not
        metadata_edit({"b": "y" * 40}, 101)({"a": "x" * 40})
    assert metadata_edit({"a": None, "b": "y" * 40}, 101)({"a": "x" * 40}) == {"b": "y" * 40}
