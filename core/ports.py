"""The ports core talks through; server/ implements them against the real servers."""

from __future__ import annotations

from typing import Protocol

import msgspec


class ReceiptRequest(msgspec.Struct, frozen=True):
    """What the receipt service records for a new receipt."""

    type: str
    currency: str
    amount: int
    accounts: list[str]


class ReceiptStatus(msgspec.Struct, frozen=True):
    code: str
    status: str
    error_code: str | None
    updated_at: str


class ReceiptSource(Protocol):
    async def new_receipt(self, request: ReceiptRequest) -> str:
        """A receipt code, persisted by its source before it returns.

        Raises core.errors.Unavailable when the source is down, slow or its breaker is open.
        """
        ...

    def status_changed(self, code: str, status: str, error_code: str | None) -> None:
        """Record a receipt's new status later, in a batch; never blocks, never raises."""
        ...

    async def get_receipt(self, code: str) -> ReceiptStatus | None:
        """The source's view of a receipt's status, or None if unknown or unreachable."""
        ...


class Notification(msgspec.Struct, frozen=True):
    receipt_code: str
    channel: str  # "email" | "sms" | "push" | "log"
    recipient: str
    subject: str
    body: str


class Notifier(Protocol):
    def notify(self, notification: Notification) -> None:
        """Queue one notification; best effort, never blocks or raises."""
        ...
