"""Where Kassa reaches into aiokafka: InitProducerId v3, and abandoning a stuck producer.

Teach aiokafka InitProducerId v3, so idempotent producers start against Tansu.

aiokafka 0.14 only speaks InitProducerId v0. Tansu advertises v0..v5 but rejects
v0: it wants the v3 form, which carries the current producer id and epoch (-1 and
-1 for a new producer). Apache Kafka >= 2.5 accepts v3 as well, and aiokafka's
version negotiation still picks v0 for brokers that only know v0, so this is safe
against any broker. The alternative, `enable_idempotence=False`, would let a
retried batch be written twice and reorder events: never do that silently.

Done the way aiokafka defines versions itself (one `RequestStruct` per version, a
`Request` builder over their union) and installed by replacing the builder the
producer's sender uses. `install()` is idempotent; call it before producers start.
"""

from __future__ import annotations

import asyncio
from typing import TypeAlias

import aiokafka.producer.sender as _sender
import aiokafka.protocol.transaction as _transaction
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.transaction import InitProducerIdRequest_v0
from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, Schema, TaggedFields

# A producer without an id asks for a fresh one with id -1, epoch -1 (KIP-360).
NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1


class InitProducerIdResponse_v3(Response):  # noqa: N801 - aiokafka's naming
    API_KEY = 22
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class InitProducerIdRequest_v3(RequestStruct):  # noqa: N801 - aiokafka's naming
    FLEXIBLE_VERSION = True  # request header v2, response header v1
    API_KEY = 22
    API_VERSION = 3
    RESPONSE_TYPE = InitProducerIdResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),  # nullable: None for idempotence only
        ("transaction_timeout_ms", Int32),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


InitProducerIdRequestStruct: TypeAlias = InitProducerIdRequest_v0 | InitProducerIdRequest_v3


class InitProducerIdRequest(Request[InitProducerIdRequestStruct]):
    """Drop-in for aiokafka's builder (same constructor), negotiating v0 or v3."""

    API_KEY = 22

    def __init__(self, transactional_id: str | None, transaction_timeout_ms: int) -> None:
        self._transactional_id = transactional_id
        self._transaction_timeout_ms = transaction_timeout_ms

    def build(
        self, request_struct_class: type[InitProducerIdRequestStruct]
    ) -> InitProducerIdRequestStruct:
        if request_struct_class is InitProducerIdRequest_v3:
            return InitProducerIdRequest_v3(
                self._transactional_id, self._transaction_timeout_ms,
                NO_PRODUCER_ID, NO_PRODUCER_EPOCH, {},
            )
        return InitProducerIdRequest_v0(self._transactional_id, self._transaction_timeout_ms)


def install() -> None:
    """Make aiokafka's producer send InitProducerId v3 when the broker supports it."""
    if _sender.InitProducerIdRequest is InitProducerIdRequest:
        return
    if _native_version_max() >= 3:
        return  # a newer aiokafka speaks v3 itself: keep its own builder
    _sender.InitProducerIdRequest = InitProducerIdRequest
    _transaction.InitProducerIdRequest = InitProducerIdRequest


def installed() -> bool:
    return _sender.InitProducerIdRequest is InitProducerIdRequest


def _native_version_max() -> int:
    native = _transaction.InitProducerIdRequest
    if native is InitProducerIdRequest:
        return 0
    return int(max(c.API_VERSION for c in native._CLASSES))


async def abandon_pending(producer: AIOKafkaProducer) -> None:
    """Make `stop()` return although batches are unacked.

    An idempotent aiokafka producer never expires a batch (it retries until acked),
    so `stop()` on a producer cut off from its broker would wait forever for the
    flush. This does what aiokafka does when its sender task dies: stop the sender,
    then fail every pending batch. Private API, hence the guards. The rows of those
    batches were rolled back and go out again on a fresh producer.
    """
    sender = getattr(producer, "_sender", None)
    accumulator = getattr(producer, "_message_accumulator", None)
    task = getattr(sender, "sender_task", None)
    if task is None or accumulator is None:
        return
    if not task.done():
        task.cancel()
        await asyncio.wait([task])  # its in-flight requests end within request_timeout_ms
    # A batch that was sent, failed and queued again keeps the done-callback that removes
    # it from the pending set; put it back there or that callback raises KeyError.
    for batches in accumulator._batches.values():
        accumulator._pending_batches.update(b for b in batches if b.retry_count > 0)
    accumulator.fail_all(KafkaConnectionError("abandoned by the outbox relay"))
