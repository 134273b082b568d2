"""Metadata edits: a PATCH's `metadata` merged into the stored object (accounts and
transactions alike), and the limits the result must obey.

The merge is JSON Merge Patch (RFC 7396): a key set to null is removed, an object is merged
key by key into the stored object under the same key, anything else replaces what was there.
The result must be what a creation could have carried: nested no deeper than a body allows
(NESTING_MAX, the metadata being a body's field) and, encoded, small enough to fit in a body
by itself (`{"metadata":<it>}` within KASSA_BODY_SIZE_MAX). Both hold for each side, and a
merge never nests deeper than its sides, but it can grow: so the size is checked here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from core.ledger.errors import InvalidRequest
from core.ledger.validation import check_json_value

# What an edit does to the stored object, given it (applied under the row's lock).
MetadataEdit = Callable[[dict[str, Any]], dict[str, Any]]

METADATA_LEVEL = 2  # {"metadata": {...}}: the object is a body's level 2
_WRAPPER_BYTES = len(b'{"metadata":}')
_encoder = msgspec.json.Encoder()


def merge_patch(stored: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7396 of `patch` onto `stored`; neither is changed."""
    merged = dict(stored)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            below = merged.get(key)
            merged[key] = merge_patch(below if isinstance(below, dict) else {}, value)
        else:
            merged[key] = value
    return merged


def metadata_edit(patch: dict[str, Any], body_size_max: int) -> MetadataEdit:
    """The edit that merges `patch` and refuses (InvalidRequest, param `metadata`) a result
    over the limits."""
    def edit(stored: dict[str, Any]) -> dict[str, Any]:
        merged = merge_patch(stored, patch)
        check_json_value(merged, METADATA_LEVEL, False)
        size = len(_encoder.encode(merged)) + _WRAPPER_BYTES
        if size > body_size_max:
            raise InvalidRequest(
                f"metadata would be {size - _WRAPPER_BYTES} bytes as JSON: more than a request"
                f" body of {body_size_max} bytes can carry", param="metadata")
        return merged

    return edit
