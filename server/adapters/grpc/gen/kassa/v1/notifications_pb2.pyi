from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NotificationItem(_message.Message):
    __slots__ = ("receipt_code", "channel", "recipient", "subject", "body")
    RECEIPT_CODE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    receipt_code: str
    channel: str
    recipient: str
    subject: str
    body: str
    def __init__(self, receipt_code: _Optional[str] = ..., channel: _Optional[str] = ..., recipient: _Optional[str] = ..., subject: _Optional[str] = ..., body: _Optional[str] = ...) -> None: ...

class SendNotificationsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[NotificationItem]
    def __init__(self, items: _Optional[_Iterable[_Union[NotificationItem, _Mapping]]] = ...) -> None: ...

class NotificationResult(_message.Message):
    __slots__ = ("delivered", "attempts", "error", "dead_lettered")
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    delivered: bool
    attempts: int
    error: str
    dead_lettered: bool
    def __init__(self, delivered: _Optional[bool] = ..., attempts: _Optional[int] = ..., error: _Optional[str] = ..., dead_lettered: _Optional[bool] = ...) -> None: ...

class SendNotificationsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[NotificationResult]
    def __init__(self, results: _Optional[_Iterable[_Union[NotificationResult, _Mapping]]] = ...) -> None: ...
