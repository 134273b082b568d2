"""The gRPC services' doors: loopback only unless TLS and a token are set; a token, once
set, is required from every caller but health probes; TLS clients verify the server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.kit.code_cipher import CodeCipher
from server.adapters.grpc.clients import CHANNEL_OPTIONS, ReceiptClient
from server.adapters.grpc.gen.kassa.v1 import receipts_pb2 as pb
from server.adapters.grpc.gen.kassa.v1 import receipts_pb2_grpc as pb_grpc
from server.adapters.grpc.security import GrpcSecurity, InsecureListen
from server.services.grpc_server import start_server, stop_server
from server.services.receipts import service as receipt_service

pytestmark = pytest.mark.timeout(60)
CODE = "RCP-20261202-0000000000000000"


def self_signed(folder: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (openssl from Debian)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Another certificate for the same address, which the server's is not."""
    return self_signed(tmp_path_factory.mktemp("other"))[0]


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def serve(db: asyncpg.Pool, security: GrpcSecurity) -> tuple[Any, int, Any]:
    servicer = receipt_service.ReceiptServicer(db)
    return await start_server(lambda s: pb_grpc.add_ReceiptServiceServicer_to_server(servicer, s),
                              "kassa.v1.ReceiptService", "127.0.0.1:0", security)


async def lookup(security: GrpcSecurity, port: int) -> pb.GetReceiptResponse:
    async with security.channel(f"127.0.0.1:{port}", CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.ReceiptServiceStub(channel)
        return await stub.GetReceipt(pb.GetReceiptRequest(code=CODE), timeout=5)


def test_listening_beyond_loopback_needs_tls_and_a_token(certificate: tuple[str, str]) -> None:
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(InsecureListen, match="KASSA_GRPC_TOKEN"):
            GrpcSecurity(token="t").check_listen(host)
    GrpcSecurity(token="t", cert_file=certificate[0], key_file=certificate[1]).check_listen("0.0.0.0")
    for host in ("127.0.0.1", "localhost", "::1", "unix:/tmp/kassa.sock"):
        GrpcSecurity().check_listen(host)


def test_the_cli_refuses_a_public_address_in_one_line(pg_dsn: str) -> None:
    env = {**os.environ, "KASSA_DATABASE_URL": pg_dsn}
    done = subprocess.run([sys.executable, "-m", "server.process.cli", "receipt-service", "--host",
                           "0.0.0.0", "--port", "0"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "KASSA_GRPC_TLS_CERT" in done.stderr


async def test_a_token_is_required_except_for_health_probes(db: asyncpg.Pool) -> None:
    server, port, checker = await serve(db, GrpcSecurity(token="s3cret"))
    try:
        for wrong in (GrpcSecurity(), GrpcSecurity(token="guess")):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await lookup(wrong, port)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not (await lookup(GrpcSecurity(token="s3cret"), port)).found
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            probe = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert probe.status == health_pb2.HealthCheckResponse.SERVING
        client = ReceiptClient(f"127.0.0.1:{port}", cipher=CodeCipher(b"grpc security secret"),
                               security=GrpcSecurity(token="s3cret"))
        client.start()
        try:
            assert await client.get_receipt(CODE) is None
            assert client.breaker.state == "closed"
        finally:
            await client.close()
    finally:
        await stop_server(server, checker)


async def test_tls_clients_verify_the_server(db: asyncpg.Pool, certificate: tuple[str, str],
                                             stranger: str) -> None:
    cert, key = certificate
    secure = GrpcSecurity(token="s3cret", cert_file=cert, key_file=key)
    server, port, checker = await serve(db, secure)
    try:
        assert not (await lookup(GrpcSecurity(token="s3cret", ca_file=cert), port)).found
        with pytest.raises(grpc.aio.AioRpcError):
            await lookup(GrpcSecurity(token="s3cret"), port)  # plaintext to a TLS port
        with pytest.raises(grpc.aio.AioRpcError) as untrusted:
            await lookup(GrpcSecurity(token="s3cret", ca_file=stranger), port)
        assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await stop_server(server, checker)
