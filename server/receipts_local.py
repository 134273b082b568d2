"""Receipt codes made in this process (no receipt service): node id + pid + time + sequence."""

from __future__ import annotations

import os
import time

import native
from core.ports import ReceiptRequest, ReceiptStatus


class LocalReceiptSource:
    def __init__(self, node_id: int) -> None:
        self._node_id = node_id
        self._last_ms = 0
        self._last_seq = 0

    def next_codes(self, count: int) -> list[str]:
        codes, self._last_ms, self._last_seq = native.receipt_codes(
            self._node_id, os.getpid(), self._last_ms, self._last_seq, int(time.time() * 1000), count)
        return codes

    async def new_receipt(self, request: ReceiptRequest) -> str:
        return self.next_codes(1)[0]

    def status_changed(self, code: str, status: str, error_code: str | None) -> None:
        pass

    async def get_receipt(self, code: str) -> ReceiptStatus | None:
        return None
