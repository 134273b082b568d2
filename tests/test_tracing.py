"""Tracing (issue 22, 1) read from the SDK's in-memory exporter, with the real adapters: the
app on a real PostgreSQL, Redis and Kafka-protocol broker in this process, the receipt
service over real gRPC. The end-to-end test through `kassa serve` and OTLP is
tests/test_tracing_e2e.py."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from core.kit.request_context import TRACEPARENT
from core.pipeline.ports import Notification, ReceiptRecord
from server.adapters.grpc.notification_client import NotificationClient
from server.adapters.grpc.receipt_client import ReceiptRegistrar
from server.adapters.webhooks.sender import Attempt, SenderOptions, WebhookSender
from server.process.logs import JsonFormatter, RequestIdFilter
from server.services.notifications import service as notification_service
from server.services.notifications.delivery import NotificationConfig
from server.services.receipts import service as receipt_service
from server.tracing import setup, spans
from tests.conftest import ADMIN_KEY, make_settings
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.servers import free_port
from tests.grpc_helpers import serving
from tests.webhook_receiver import spawn

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TOPIC = "kassa.traced"


def traceparent(trace_id: str = TRACE_ID, span_id: str = CLIENT_SPAN, sampled: bool = True) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, every span kept in memory; off again afterwards."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    spans.use(provider)
    try:
        yield memory
    finally:
        spans.use(None)
        provider.shutdown()


async def traced_app(pg_dsn: str, redis_url: str, **overrides: object
                     ) -> tuple[httpx.AsyncClient, Any]:
    """The app as server/process/asgi.py builds it, with these settings (tracing as the
    process has it when the runtime is built)."""
    from server.process.asgi import create_app
    from server.process.runtime import build_runtime

    app = create_app()
    runtime = await build_runtime(make_settings(pg_dsn, redis_url, **overrides))
    app.state.runtime = runtime
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kassa",
                               headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    return client, runtime


@pytest.fixture
async def app(exporter: InMemorySpanExporter, pg_dsn: str, redis_url: str,
              kafka_broker: KafkaBroker) -> AsyncIterator[httpx.AsyncClient]:
    # A long flush interval: requests sent together share one group commit.
    client, runtime = await traced_app(pg_dsn, redis_url, accept_flush_interval_ms=100,
                                       kafka_bootstrap_servers=kafka_broker.bootstrap,
                                       kafka_topic=TOPIC)
    async with client:
        await open_accounts(client)
        exporter.clear()
        yield client
    await runtime.stop()


async def open_accounts(client: httpx.AsyncClient) -> None:
    for account in ("alice", "bob"):
        r = await client.post("/v1/accounts", json={"id": account, "currency": "USD"})
        assert r.status_code == 201, r.text
    r = await client.post("/v1/transactions?wait=true", json={
        "type": "deposit", "currency": "USD", "destination": "alice", "amount": 10_000})
    assert r.status_code == 201, r.text


def transfer(client: httpx.AsyncClient, tp: str | None, key: str | None = None
             ) -> Any:
    headers = {"traceparent": tp} if tp else {}
    if key:
        headers["Idempotency-Key"] = key
    return client.post("/v1/transactions?wait=true", headers=headers, json={
        "type": "transfer", "currency": "USD", "source": "alice", "destination": "bob",
        "amount": 100})


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


async def stored_traceparent(dsn: str, receipt_code: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        value: str | None = await conn.fetchval(
            "SELECT traceparent FROM journals WHERE external_ref = $1", receipt_code)
        return value
    finally:
        await conn.close()


async def kafka_headers(bootstrap: str, receipt_codes: set[str], timeout_s: float = 20
                        ) -> dict[str, dict[str, bytes]]:
    """Each receipt's Kafka record headers, read as a consumer would."""
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=f"t{time.time_ns()}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    seen: dict[str, dict[str, bytes]] = {}
    try:
        async with asyncio.timeout(timeout_s):
            while not receipt_codes <= seen.keys():
                for messages in (await consumer.getmany(timeout_ms=300)).values():
                    for m in messages:
                        seen[m.key.decode()] = dict(m.headers)
    finally:
        await consumer.stop()
    return seen


async def until_span(exporter: InMemorySpanExporter, name: str, timeout_s: float = 10
                     ) -> list[ReadableSpan]:
    async with asyncio.timeout(timeout_s):
        while not (found := named(exporter, name)):
            await asyncio.sleep(0.02)
    return found


async def test_one_trace_from_the_request_through_the_group_commit_to_the_kafka_record(
        app: httpx.AsyncClient, exporter: InMemorySpanExporter, pg_dsn: str,
        kafka_broker: KafkaBroker) -> None:
    r = await transfer(app, traceparent(), key="traced-1")
    assert r.status_code == 201, r.text
    code = r.json()["receipt_code"]

    [server] = named(exporter, "POST /v1/transactions")
    trace_id, server_id = hex_ids(server)
    assert (trace_id, parent_id(server), server.kind) == (TRACE_ID, CLIENT_SPAN, SpanKind.SERVER)
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 201
    [admission] = named(exporter, "kassa.admission")
    assert hex_ids(admission)[0] == TRACE_ID and parent_id(admission) == server_id
    redis_calls = [s for s in exporter.get_finished_spans() if s.name == "redis idempotency"]
    assert redis_calls and all(parent_id(s) == server_id for s in redis_calls)
    assert all(s.kind == SpanKind.CLIENT for s in redis_calls)

    [commit] = named(exporter, "kassa.group_commit")
    assert [f"{link.context.span_id:016x}" for link in commit.links] == [server_id]
    assert hex_ids(commit)[0] == TRACE_ID  # the child of its first sampled request
    [executor] = named(exporter, "kassa.executor.batch")  # apply at accept: in the commit
    assert parent_id(executor) == hex_ids(commit)[1]

    stored = await stored_traceparent(pg_dsn, code)
    assert stored == traceparent(TRACE_ID, server_id)
    headers = await kafka_headers(kafka_broker.bootstrap, {code})
    assert headers[code]["traceparent"].decode() == stored, "a consumer continues the trace"
    await until_span(exporter, "kassa.relay.publish")
    # The accounts' deposit may share the relay's batch: the span linking this request is
    # the child of this request's context when it is the batch's first.
    [publish] = [s for s in named(exporter, "kassa.relay.publish")
                 if server_id in {f"{link.context.span_id:016x}" for link in s.links}]
    assert publish.kind == SpanKind.PRODUCER
    assert len(publish.links) > 1 or (hex_ids(publish)[0], parent_id(publish)) == (
        TRACE_ID, server_id)


async def test_one_group_commit_span_links_every_request_it_carries(
        app: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    traces = [f"{n:032x}" for n in range(1, 4)]
    replies = await asyncio.gather(*(transfer(app, traceparent(t)) for t in traces))
    assert [r.status_code for r in replies] == [201] * 3
    servers = {hex_ids(s)[0]: hex_ids(s)[1] for s in named(exporter, "POST /v1/transactions")}
    assert servers.keys() == set(traces)
    commits = named(exporter, "kassa.group_commit")
    assert len(commits) == 1, "one span per batch commit, not one per request"
    linked = {(f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}")
              for link in commits[0].links}
    assert linked == set(servers.items())


async def test_an_unsampled_request_makes_no_batch_span_and_stores_its_traceparent(
        app: httpx.AsyncClient, exporter: InMemorySpanExporter, pg_dsn: str) -> None:
    r = await transfer(app, traceparent(sampled=False))
    assert r.status_code == 201, r.text
    # (The accounts' deposit, sampled, may still be published meanwhile: not in this trace.)
    ours = [s for s in exporter.get_finished_spans() if hex_ids(s)[0] == TRACE_ID
            or any(f"{link.context.trace_id:032x}" == TRACE_ID for link in s.links)]
    assert not ours, "the client said: not sampled"
    stored = await stored_traceparent(pg_dsn, r.json()["receipt_code"])
    assert stored is not None and stored.startswith(f"00-{TRACE_ID}-") and stored.endswith("-00")


async def test_tracing_off_builds_no_span_and_stores_null(
        pg_dsn: str, redis_url: str, kafka_broker: KafkaBroker) -> None:
    assert not spans.ENABLED
    client, runtime = await traced_app(pg_dsn, redis_url,
                                       kafka_bootstrap_servers=kafka_broker.bootstrap)
    try:
        async with client:
            await open_accounts(client)
            r = await transfer(client, traceparent())
            assert r.status_code == 201, r.text
            assert "traceparent" not in r.headers
            assert await stored_traceparent(pg_dsn, r.json()["receipt_code"]) is None
    finally:
        await runtime.stop()


async def test_a_grpc_call_carries_the_trace_to_the_receipt_service(
        exporter: InMemorySpanExporter, pg_dsn: str) -> None:
    port = free_port()
    async with serving(receipt_service.serve(port, pg_dsn), f"127.0.0.1:{port}"):
        registrar = ReceiptRegistrar(f"127.0.0.1:{port}")
        try:
            with spans.batch("kassa.relay.receipts", [traceparent()]) as batch:
                assert batch is not None
                await registrar.register([ReceiptRecord(
                    "RCP-20261207-0000000000000001", "deposit", "USD", 5, ["alice"],
                    "completed", None)])
        finally:
            await registrar.close()
    calls = named(exporter, "kassa.v1.ReceiptService/RegisterReceipts")
    [client] = [s for s in calls if s.kind == SpanKind.CLIENT]
    servers = [s for s in calls if s.kind == SpanKind.SERVER]
    assert parent_id(client) == hex_ids(batch)[1]
    assert len(servers) == 1, "the service continues the caller's trace"
    assert hex_ids(servers[0])[0] == TRACE_ID and parent_id(servers[0]) == hex_ids(client)[1]


async def test_a_notification_batch_carries_the_trace_to_the_notification_service(
        exporter: InMemorySpanExporter, pg_dsn: str) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    async with serving(notification_service.serve(port, pg_dsn, NotificationConfig()), address):
        client = NotificationClient(address, flush_interval_ms=10)
        client.start()
        try:
            client.notify(Notification("RCP-1", "log", "x", "Paid", "10.00 USD", traceparent()))
            await until_span(exporter, "kassa.notifications.send")
        finally:
            await client.close()
    [send] = named(exporter, "kassa.notifications.send")
    calls = [s for s in exporter.get_finished_spans() if s.name.startswith(
        "kassa.v1.NotificationService/")]
    assert {s.kind for s in calls} == {SpanKind.CLIENT, SpanKind.SERVER}
    assert all(hex_ids(s)[0] == TRACE_ID for s in [send, *calls])
    assert (parent_id(send), [f"{link.context.span_id:016x}" for link in send.links]) == (
        CLIENT_SPAN, [CLIENT_SPAN])


async def test_a_webhook_delivery_is_a_client_span_in_its_journals_trace(
        exporter: InMemorySpanExporter) -> None:
    port = free_port()
    receiver = spawn(port)
    sender = WebhookSender(SenderOptions())
    try:
        outcome = await sender._attempt(Attempt(
            None, f"http://127.0.0.1:{port}/hook", "whsec_" + "A" * 32, "RCP-1", b"{}", 1, 60.0,
            traceparent()))
    finally:
        if sender._http is not None:  # its kept-alive connection
            await sender._http.aclose()
        receiver.terminate()
        receiver.wait()
    assert outcome[:3] == (True, None, 204)
    [span] = named(exporter, "kassa.webhook.deliver")
    assert (hex_ids(span)[0], parent_id(span), span.kind) == (TRACE_ID, CLIENT_SPAN,
                                                            SpanKind.CLIENT)
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 204


def test_json_log_lines_carry_trace_and_span_ids_inside_a_span(
        exporter: InMemorySpanExporter) -> None:
    def line() -> dict[str, Any]:
        record = logging.LogRecord("kassa.test", logging.INFO, __file__, 1, "hello", (), None)
        RequestIdFilter().filter(record)
        decoded: dict[str, Any] = json.loads(JsonFormatter().format(record))
        return decoded

    assert "trace_id" not in line()
    with spans.http_request("GET", "/healthz", [(b"traceparent", traceparent().encode())]) as span:
        inside = line()
        assert TRACEPARENT.get() == spans.traceparent_of(span)
    assert (inside["trace_id"], inside["span_id"]) == hex_ids(named(exporter, "GET /healthz")[0])
    assert TRACEPARENT.get() is None


@pytest.mark.parametrize(("env", "names"), [
    ({}, []),
    ({"OTEL_TRACES_EXPORTER": "none"}, []),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
])
def test_tracing_is_off_unless_otel_traces_exporter_names_an_exporter(
        env: dict[str, str], names: list[str]) -> None:
    assert setup.exporter_names(env) == names


@pytest.mark.parametrize("env", [
    {"OTEL_TRACES_EXPORTER": "zipkin"},
    {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
])
def test_an_exporter_kassa_cannot_honour_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(setup.TracingConfigError):
        setup.exporter_names(env)


def test_a_batch_span_links_each_sampled_request_once(exporter: InMemorySpanExporter) -> None:
    other = traceparent(f"{7:032x}")
    items = [traceparent(), None, traceparent(sampled=False), traceparent(), other, "junk"]
    with spans.batch("kassa.relay.publish", items) as span:
        assert span is not None
    with spans.batch("kassa.relay.publish", [None, traceparent(sampled=False)]) as none:
        assert none is None, "no sampled item: no span"
    [published] = named(exporter, "kassa.relay.publish")
    assert [f"{link.context.trace_id:032x}" for link in published.links] == [TRACE_ID, f"{7:032x}"]
    assert (hex_ids(published)[0], parent_id(published)) == (TRACE_ID, CLIENT_SPAN)


def test_a_request_left_out_of_the_sample_builds_no_span_but_carries_a_traceparent(
        ) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    spans.use(provider)
    try:
        tp = spans.unsampled([(b"host", b"kassa")])
        assert tp is not None and spans.span_context(tp) is not None and tp.endswith("-00")
        token = TRACEPARENT.set(tp)
        try:
            assert spans.log_ids() == (tp[3:35], tp[36:52])
            with spans.PipelineSpans().step("kassa.admission"), spans.in_trace("redis", "x"):
                pass
        finally:
            TRACEPARENT.reset(token)
        sampled = [(b"traceparent", traceparent().encode())]
        assert spans.unsampled(sampled) is None, "a sampled parent decides (parent-based)"
        with spans.http_request("POST", "/v1/transactions", sampled):
            pass
        tp = spans.unsampled([(b"traceparent", traceparent(sampled=False).encode())])
        assert tp is not None and tp.startswith(f"00-{TRACE_ID}-") and tp.endswith("-00")
    finally:
        spans.use(None)
    assert [s.name for s in memory.get_finished_spans()] == ["POST /v1/transactions"]


@pytest.mark.parametrize(("value", "sampled"), [
    (traceparent(), True), (traceparent(sampled=False), False), (None, False),
    ("00-short-01", False)])
def test_a_stored_traceparent_says_whether_it_was_sampled(value: str | None, sampled: bool) -> None:
    assert spans.is_sampled(value) is sampled
