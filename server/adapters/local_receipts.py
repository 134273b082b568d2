"""core.pipeline.ports.ReceiptSource without a receipt service (plain gunicorn): codes made in this
process from node id + pid + time + sequence (native.receipt_codes, the process layout,
which can never equal a code of a reserved block), hidden by the keyed bijection every
process shares (core/kit/code_cipher.py); no receipt records are kept."""

from __future__ import annotations

import os
import time

import native
from core.kit.code_cipher import CodeCipher
from core.pipeline.ports import ReceiptRecord, ReceiptStatus


class LocalReceiptSource:
    def __init__(self, node_id: int, cipher: CodeCipher) -> None:
        self.node_id = node_id  # leased (server/adapters/postgres/nodes.py); replaced if the lease is lost
        self._hide = cipher.hide_all
        self._last_ms = 0
        self._last_seq = 0

    async def next_codes(self, count: int) -> list[str]:
        codes, self._last_ms, self._last_seq = native.receipt_codes(
            self.node_id, os.getpid(), self._last_ms, self._last_seq, time.time_ns() // 1_000_000,
            count)
        return self._hide(codes)

    def register(self, receipts: list[ReceiptRecord]) -> None:
        pass

    async def get_receipt(self, code: str) -> ReceiptStatus | None:
        return None
