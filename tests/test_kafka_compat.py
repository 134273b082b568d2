"""InitProducerId v3 for aiokafka: exact wire bytes, and idempotent producers against Tansu."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError
from aiokafka.producer import sender
from aiokafka.protocol.api import Request
from aiokafka.protocol.transaction import InitProducerIdRequest_v0

from server.adapters.kafka import compat
from tests.fixtures.kafka import KafkaBroker

pytestmark = pytest.mark.timeout(30)

TANSU_VERSIONS = {22: (0, 5)}


def wire(request: Request[compat.InitProducerIdRequestStruct], versions: dict[int, tuple[int, int]]) -> bytes:
    struct = request.prepare(versions)
    header = struct.build_request_header(correlation_id=7, client_id="kassa")
    return header.encode() + struct.encode()


def test_v3_request_bytes_without_transactional_id() -> None:
    got = wire(compat.InitProducerIdRequest(None, 60_000), TANSU_VERSIONS)
    assert got == bytes.fromhex(
        "0016" "0003" "00000007" "0005") + b"kassa" + bytes.fromhex(
        "00"                    # request header v2: empty tagged fields
        "00"                    # transactional_id: compact nullable string, null
        "0000ea60"              # transaction_timeout_ms = 60000
        "ffffffffffffffff"      # producer_id = -1
        "ffff"                  # producer_epoch = -1
        "00"                    # tagged fields
    )


def test_v3_request_bytes_with_transactional_id() -> None:
    got = wire(compat.InitProducerIdRequest("tx-1", 1_000), TANSU_VERSIONS)
    body = got[len(got) - 20:]
    # compact string: unsigned varint length + 1 (5), then the utf-8 bytes
    assert body == b"\x05tx-1" + bytes.fromhex("000003e8" + "ff" * 8 + "ffff" + "00")


def test_old_broker_still_gets_v0() -> None:
    got = wire(compat.InitProducerIdRequest("tx", 1_000), {22: (0, 2)})
    assert got == bytes.fromhex("0016" "0000" "00000007" "0005") + b"kassa" + bytes.fromhex(
        "0002") + b"tx" + bytes.fromhex("000003e8")


def test_v3_response_decodes() -> None:
    struct = compat.InitProducerIdRequest(None, 1).prepare(TANSU_VERSIONS)
    raw = bytes.fromhex("00000007" "00" "00000000" "0000" "000000000000002a" "0003" "00")
    header = struct.parse_response_header(raw[:5])
    resp = struct.RESPONSE_TYPE.decode(raw[5:])
    assert header.correlation_id == 7
    assert (resp.error_code, resp.producer_id, resp.producer_epoch) == (0, 42, 3)


def test_install_is_idempotent() -> None:
    compat.install()
    compat.install()
    assert compat.installed()
    assert sender.InitProducerIdRequest is compat.InitProducerIdRequest


class _OnlyV0(Request[InitProducerIdRequest_v0]):
    API_KEY = 22

    def build(self, request_struct_class: type[InitProducerIdRequest_v0]) -> InitProducerIdRequest_v0:
        return request_struct_class(None, 60_000)


async def test_tansu_rejects_v0_and_accepts_v3(kafka_broker: KafkaBroker) -> None:
    """Why the shim exists: the same broker answers v0 with an error and v3 with an id."""
    conn = await create_conn("127.0.0.1", kafka_broker.port)
    try:
        v0 = await conn.send(_OnlyV0())
        v3 = await conn.send(compat.InitProducerIdRequest(None, 60_000))
    finally:
        conn.close()
    assert v0.error_code != 0
    assert (v3.error_code, v3.producer_epoch) == (0, 0) and v3.producer_id >= 0


async def test_idempotent_producer_starts_and_sends(kafka_broker: KafkaBroker) -> None:
    compat.install()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all",
                                enable_idempotence=True)
    await asyncio.wait_for(producer.start(), 10)
    try:
        sent = [await producer.send_and_wait("compat", f"v{i}".encode(), key=b"k") for i in range(3)]
        pid = producer._txn_manager.producer_id  # -1 unless InitProducerId succeeded
    finally:
        await producer.stop()
    assert pid >= 0
    assert [m.offset for m in sent] == [0, 1, 2]
    assert await _read_all(kafka_broker.bootstrap, "compat", 3) == [b"v0", b"v1", b"v2"]


async def _read_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        values: list[bytes] = []
        async with asyncio.timeout(10):
            async for msg in consumer:
                assert msg.value is not None
                values.append(msg.value)
                if len(values) == count:
                    return values
    finally:
        await consumer.stop()
    return values


async def test_abandon_pending_lets_a_cut_off_producer_stop(kafka_broker: KafkaBroker) -> None:
    """An idempotent producer retries forever; without abandon_pending, stop() never returns."""
    compat.install()
    loop_errors: list[dict[str, object]] = []  # errors in aiokafka's callbacks land here
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all",
                                enable_idempotence=True, request_timeout_ms=1_000)
    await producer.start()
    await producer.send_and_wait("compat", b"first")
    kafka_broker.stop()
    pending = await producer.send("compat", b"never acked")
    await asyncio.sleep(1.5)  # sent, failed, queued again at least once
    assert not pending.done()
    async with asyncio.timeout(3):
        await compat.abandon_pending(producer)
        await producer.stop()
    assert isinstance(pending.exception(), KafkaConnectionError)
    assert producer._sender.sender_task.done()
    await asyncio.sleep(0.05)  # let the batch callbacks run
    assert loop_errors == []
