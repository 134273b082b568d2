from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReserveCodesRequest(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class ReserveCodesResponse(_message.Message):
    __slots__ = ("block", "count")
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    block: int
    count: int
    def __init__(self, block: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ReceiptRecord(_message.Message):
    __slots__ = ("code", "type", "currency", "amount", "account_ids", "status", "error_code")
    CODE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_IDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    code: str
    type: str
    currency: str
    amount: int
    account_ids: _containers.RepeatedScalarFieldContainer[str]
    status: str
    error_code: str
    def __init__(self, code: _Optional[str] = ..., type: _Optional[str] = ..., currency: _Optional[str] = ..., amount: _Optional[int] = ..., account_ids: _Optional[_Iterable[str]] = ..., status: _Optional[str] = ..., error_code: _Optional[str] = ...) -> None: ...

class RegisterReceiptsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ReceiptRecord]
    def __init__(self, items: _Optional[_Iterable[_Union[ReceiptRecord, _Mapping]]] = ...) -> None: ...

class RefusedItem(_message.Message):
    __slots__ = ("index", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    error: ItemError
    def __init__(self, index: _Optional[int] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class RegisterReceiptsResponse(_message.Message):
    __slots__ = ("refused",)
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    refused: _containers.RepeatedCompositeFieldContainer[RefusedItem]
    def __init__(self, refused: _Optional[_Iterable[_Union[RefusedItem, _Mapping]]] = ...) -> None: ...

class GetReceiptRequest(_message.Message):
    __slots__ = ("code",)
    CODE_FIELD_NUMBER: _ClassVar[int]
    code: str
    def __init__(self, code: _Optional[str] = ...) -> None: ...

class GetReceiptResponse(_message.Message):
    __slots__ = ("found", "code", "status", "error_code", "updated_at")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    found: bool
    code: str
    status: str
    error_code: str
    updated_at: str
    def __init__(self, found: _Optional[bool] = ..., code: _Optional[str] = ..., status: _Optional[str] = ..., error_code: _Optional[str] = ..., updated_at: _Optional[str] = ...) -> None: ...
