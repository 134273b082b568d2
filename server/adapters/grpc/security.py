"""Who may call the gRPC services: loopback by default; beyond it, TLS and a shared token.

The services carry receipts and contacts. On 127.0.0.1 (or a unix socket) only processes
of the host reach them; a service that listens on any other address refuses to start
unless it has a certificate, its key and a token (`KASSA_GRPC_TLS_CERT`, `KASSA_GRPC_TLS_KEY`,
`KASSA_GRPC_TOKEN`). A token, once set, is required on loopback too, from every caller but
the standard health service (probes). Clients send it as `authorization: Bearer <token>`
and verify the server against `KASSA_GRPC_TLS_CA` (or the certificate itself) when TLS is on.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from server.process.settings import Settings
from server.tracing import grpc_context

HEALTH_PREFIX = "/grpc.health.v1.Health/"


class InsecureListen(Exception):
    """Listening beyond loopback without TLS and a token: a configuration error."""


def is_loopback(host: str) -> bool:
    if host.startswith("unix:") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class GrpcSecurity:
    token: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> GrpcSecurity:
        return cls(settings.grpc_token, settings.grpc_tls_cert, settings.grpc_tls_key,
                   settings.grpc_tls_ca)

    @property
    def tls(self) -> bool:
        return bool(self.cert_file and self.key_file)

    def check_listen(self, host: str) -> None:
        if not is_loopback(host) and not (self.tls and self.token):
            raise InsecureListen(
                f"gRPC services listen on {host} only with TLS and a token: set "
                "KASSA_GRPC_TLS_CERT, KASSA_GRPC_TLS_KEY and KASSA_GRPC_TOKEN (or listen on 127.0.0.1)")

    # ---- server side -------------------------------------------------------------------

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [TokenCheck(self.token)] if self.token else []

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        if not self.tls:
            return server.add_insecure_port(address)
        assert self.cert_file and self.key_file
        credentials = grpc.ssl_server_credentials(
            [(Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())])
        return server.add_secure_port(address, credentials)

    # ---- client side -------------------------------------------------------------------

    def channel(self, address: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        interceptors = [*([TokenSend(self.token)] if self.token else []),
                        *grpc_context.client_interceptors()] or None
        if not self.tls and not self.ca_file:
            return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
        root = Path(self.ca_file or self.cert_file or "").read_bytes()
        return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root),
                                       options=options, interceptors=interceptors)


class TokenCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, token: str | None) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(HEALTH_PREFIX):
            return await continuation(details)
        sent = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(sent).encode(), self._expected):
            return await continuation(details)
        return grpc.unary_unary_rpc_method_handler(_refuse)


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid token is required")


class TokenSend(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return await continuation(details._replace(metadata=metadata), request)
