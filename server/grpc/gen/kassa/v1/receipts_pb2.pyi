from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class NewReceipt(_message.Message):
    __slots__ = ("type", "currency", "amount", "account_ids")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_IDS_FIELD_NUMBER: _ClassVar[int]
    type: str
    currency: str
    amount: int
    account_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, type: _Optional[str] = ..., currency: _Optional[str] = ..., amount: _Optional[int] = ..., account_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateReceiptsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[NewReceipt]
    def __init__(self, items: _Optional[_Iterable[_Union[NewReceipt, _Mapping]]] = ...) -> None: ...

class CreateReceiptResult(_message.Message):
    __slots__ = ("code", "error")
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    code: str
    error: ItemError
    def __init__(self, code: _Optional[str] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class CreateReceiptsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CreateReceiptResult]
    def __init__(self, results: _Optional[_Iterable[_Union[CreateReceiptResult, _Mapping]]] = ...) -> None: ...

class StatusUpdate(_message.Message):
    __slots__ = ("code", "status", "error_code")
    CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    code: str
    status: str
    error_code: str
    def __init__(self, code: _Optional[str] = ..., status: _Optional[str] = ..., error_code: _Optional[str] = ...) -> None: ...

class UpdateReceiptStatusesRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[StatusUpdate]
    def __init__(self, items: _Optional[_Iterable[_Union[StatusUpdate, _Mapping]]] = ...) -> None: ...

class UpdateReceiptStatusResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: ItemError
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class UpdateReceiptStatusesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UpdateReceiptStatusResult]
    def __init__(self, results: _Optional[_Iterable[_Union[UpdateReceiptStatusResult, _Mapping]]] = ...) -> None: ...

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
