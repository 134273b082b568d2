"""Tracing end to end (issue 22, 1): `kassa serve` with OTEL_* set exports OTLP/HTTP to a
receiver started here; one request's trace runs through the group commit, the receipt
service (another process) and the Kafka record's header, and its log lines name it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import ADMIN_KEY, new_database
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.kassa_server import start_kassa
from tests.fixtures.servers import PostgresServer, RedisServer, free_port
from tests.load import SERVE_ENV

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TOPIC = "kassa.transactions"


class Receiver:
    """An OTLP/HTTP trace receiver: every span it was sent, with its service's name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Span]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                with receiver._lock:
                    for resource in request.resource_spans:
                        service = next(a.value.string_value for a in resource.resource.attributes
                                       if a.key == "service.name")
                        receiver.spans += [(service, s) for scope in resource.scope_spans
                                           for s in scope.spans]
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def of_trace(self, trace_id: str) -> list[tuple[str, Span]]:
        with self._lock:
            return [(service, s) for service, s in self.spans if s.trace_id.hex() == trace_id]

    def linking(self, span_id: str) -> list[tuple[str, Span]]:
        with self._lock:
            return [(service, s) for service, s in self.spans
                    if any(link.span_id.hex() == span_id for link in s.links)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


async def until(check: object, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not seen in time"
        await asyncio.sleep(0.05)


async def kafka_traceparent(bootstrap: str, receipt_code: str, timeout_s: float = 30) -> str:
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=f"t{time.time_ns()}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                for messages in (await consumer.getmany(timeout_ms=300)).values():
                    for m in messages:
                        if m.key.decode() == receipt_code:
                            return dict(m.headers)["traceparent"].decode()
    finally:
        await consumer.stop()


async def test_one_trace_from_http_through_the_group_commit_grpc_and_kafka(
        pg_server: PostgresServer, redis_server: RedisServer, kafka_broker: KafkaBroker,
        receiver: Receiver) -> None:
    kassa = start_kassa({
        **SERVE_ENV, "KASSA_DATABASE_URL": await new_database(pg_server),
        "KASSA_REDIS_URL": redis_server.url, "KASSA_KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
        "KASSA_LOG_FORMAT": "json", "KASSA_LOG_LEVEL": "info",
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50"}, workers=1)
    try:
        async with httpx.AsyncClient(base_url=kassa.url, timeout=10,
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            r = await http.post("/v1/accounts", json={"id": "alice", "currency": "USD"})
            assert r.status_code == 201, r.text
            # The one journal of this ledger, so every batch that carries it is its own.
            r = await http.post("/v1/transactions?wait=true", json={
                "type": "deposit", "currency": "USD", "destination": "alice", "amount": 500},
                headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"})
            assert r.status_code == 201, r.text
        code = r.json()["receipt_code"]

        def server_span() -> Span | None:
            return next((s for _, s in receiver.of_trace(TRACE_ID)
                         if s.kind == Span.SPAN_KIND_SERVER and s.parent_span_id.hex() == CALLER_SPAN),
                        None)

        await until(lambda: server_span() is not None)
        request = server_span()
        assert request is not None and request.name == "POST /v1/transactions"
        request_id = request.span_id.hex()
        await until(lambda: any(s.name == "kassa.group_commit" for _, s in receiver.linking(request_id)))

        def receipt_service_span() -> list[tuple[str, Span]]:
            return [(service, s) for service, s in receiver.of_trace(TRACE_ID)
                    if s.name == "kassa.v1.ReceiptService/RegisterReceipts"]

        await until(lambda: {s.kind for _, s in receipt_service_span()}
                    == {Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_SERVER})
        services = {s.kind: service for service, s in receipt_service_span()}
        assert services[Span.SPAN_KIND_SERVER] != services[Span.SPAN_KIND_CLIENT], \
            "the service side span comes from the receipt service's own process"

        header = await kafka_traceparent(kafka_broker.bootstrap, code)
        assert header == f"00-{TRACE_ID}-{request_id}-01", "a consumer continues the request's trace"

        await until(lambda: any(s.name == "kassa.relay.publish" for _, s in receiver.of_trace(TRACE_ID)))
        lines = [json.loads(line) for line in kassa.log().splitlines() if line.startswith("{")]
        traced = [line for line in lines if line.get("trace_id") == TRACE_ID]
        assert any("[TRANSACTION START]" in line["message"] for line in traced), lines[-5:]
        assert all(len(line["span_id"]) == 16 for line in traced)
    finally:
        kassa.stop()
