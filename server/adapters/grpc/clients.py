"""Clients of the receipt and notification services: the core ports, over gRPC.

Each client owns one channel and one circuit breaker (server/adapters/grpc/calls.py):
the receipt client in receipt_client.py, the notification client in
notification_client.py; this module is their one import for the composition root.

The CLI/lifespan builds them with the service address (`host:port` or `unix:/path`),
calls `start()` inside the running loop and `await close()` on shutdown.
"""

from __future__ import annotations

from server.adapters.grpc.calls import CHANNEL_OPTIONS, CallRefused, guarded
from server.adapters.grpc.notification_client import NotificationClient
from server.adapters.grpc.receipt_client import ReceiptClient

__all__ = ["CHANNEL_OPTIONS", "CallRefused", "NotificationClient", "ReceiptClient",
           "breaker_states", "guarded"]


def breaker_states(*clients: ReceiptClient | NotificationClient) -> dict[str, str]:
    """Breaker name → state, for /readyz."""
    states = {c.breaker.name: c.breaker.state for c in clients}
    states.update({c.read_breaker.name: c.read_breaker.state for c in clients
                   if isinstance(c, ReceiptClient)})
    return states
