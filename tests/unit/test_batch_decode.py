"""POST /v1/transactions/batch's body: one typed decode when every item is valid, item by
item otherwise, with the same transactions and per-item errors either way."""

from __future__ import annotations

import msgspec
import pytest

from core.ledger.errors import InvalidRequest, KassaError
from server.http.handlers.common import decode
from server.http.handlers.transactions import BATCH_MAX, parse_item, parse_items
from server.http.schemas import batch_in

TRANSFER = b'{"type":"transfer","amount":%d,"currency":"USD","source":"a","destination":"b"}'
DEPOSIT = (b'{"type":"deposit","amount":5,"currency":"USD","destination":"a",'
           b'"idempotency_key":"k1","metadata":{"n":[[1]]}}')


def body(*items: bytes) -> bytes:
    return b'{"transactions":[' + b",".join(items) + b"]}"


def item_by_item(raw: bytes) -> list[object]:
    return [parse_item(r) for r in decode(batch_in, raw).transactions]


def test_a_valid_batch_decodes_as_item_by_item() -> None:
    raw = body(TRANSFER % 1, DEPOSIT, TRANSFER % 3)
    assert parse_items(raw) == item_by_item(raw)
    (tx, key), _, _ = parse_items(raw)  # type: ignore[misc]
    assert tx.amount == 1 and key is None


@pytest.mark.parametrize("bad", [
    b'{"type":"transfer","amount":0,"currency":"USD","source":"a","destination":"b"}',
    b'{"type":"transfer","amount":1,"currency":"USD","source":"a","destination":"b","x":1}',
    b'{"type":"transfer","amount":1,"currency":"USD","source":"a","destination":"a"}',
    b'{"type":"deposit","amount":1,"currency":"USD","destination":"a","metadata":{"k":'
    + b"[" * 29 + b"]" * 29 + b"}}",
], ids=["decoder", "unknown-field", "rule", "too-deep"])
def test_a_bad_item_is_refused_alone(bad: bytes) -> None:
    raw = body(TRANSFER % 1, bad, TRANSFER % 2)
    items = parse_items(raw)
    assert isinstance(items[1], InvalidRequest) and not isinstance(items[0], KassaError)
    assert [type(i) for i in items] == [type(i) for i in item_by_item(raw)]
    assert str(items[1]) == str(item_by_item(raw)[1])


def test_the_item_count_is_bounded_on_both_paths() -> None:
    for raw in (body(), body(*[TRANSFER % 1] * (BATCH_MAX + 1)),
                body(*[TRANSFER % 1] * BATCH_MAX, b"{}")):
        with pytest.raises(InvalidRequest, match="a batch holds"):
            parse_items(raw)
    with pytest.raises(InvalidRequest):
        parse_items(b'{"transactions": 1}')
    assert len(parse_items(msgspec.json.encode({"transactions": [msgspec.json.decode(
        TRANSFER % 1)] * BATCH_MAX}))) == BATCH_MAX
