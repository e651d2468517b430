from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Ticket(_message.Message):
    __slots__ = ("number", "expires")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    number: int
    expires: float
    def __init__(self, number: _Optional[int] = ..., expires: _Optional[float] = ...) -> None: ...

class TicketLock(_message.Message):
    __slots__ = ("conversation_id", "tickets")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TICKETS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    tickets: _containers.RepeatedCompositeFieldContainer[Ticket]
    def __init__(self, conversation_id: _Optional[str] = ..., tickets: _Optional[_Iterable[_Union[Ticket, _Mapping]]] = ...) -> None: ...

class GetLockRequest(_message.Message):
    __slots__ = ("conversation_id",)
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    def __init__(self, conversation_id: _Optional[str] = ...) -> None: ...

class GetLockResponse(_message.Message):
    __slots__ = ("lock",)
    LOCK_FIELD_NUMBER: _ClassVar[int]
    lock: TicketLock
    def __init__(self, lock: _Optional[_Union[TicketLock, _Mapping]] = ...) -> None: ...

class SaveLockRequest(_message.Message):
    __slots__ = ("lock",)
    LOCK_FIELD_NUMBER: _ClassVar[int]
    lock: TicketLock
    def __init__(self, lock: _Optional[_Union[TicketLock, _Mapping]] = ...) -> None: ...

class SaveLockResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteLockRequest(_message.Message):
    __slots__ = ("conversation_id",)
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    def __init__(self, conversation_id: _Optional[str] = ...) -> None: ...

class DeleteLockResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class IssueTicketRequest(_message.Message):
    __slots__ = ("conversation_id", "lifetime_seconds")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    lifetime_seconds: float
    def __init__(self, conversation_id: _Optional[str] = ..., lifetime_seconds: _Optional[float] = ...) -> None: ...

class IssueTicketResponse(_message.Message):
    __slots__ = ("ticket", "now_serving")
    TICKET_FIELD_NUMBER: _ClassVar[int]
    NOW_SERVING_FIELD_NUMBER: _ClassVar[int]
    ticket: Ticket
    now_serving: int
    def __init__(self, ticket: _Optional[_Union[Ticket, _Mapping]] = ..., now_serving: _Optional[int] = ...) -> None: ...

class WaitForTicketRequest(_message.Message):
    __slots__ = ("conversation_id", "ticket_number")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TICKET_NUMBER_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    ticket_number: int
    def __init__(self, conversation_id: _Optional[str] = ..., ticket_number: _Optional[int] = ...) -> None: ...

class WaitForTicketResponse(_message.Message):
    __slots__ = ("now_serving", "tickets_ahead", "acquired", "lock")
    NOW_SERVING_FIELD_NUMBER: _ClassVar[int]
    TICKETS_AHEAD_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_FIELD_NUMBER: _ClassVar[int]
    LOCK_FIELD_NUMBER: _ClassVar[int]
    now_serving: int
    tickets_ahead: int
    acquired: bool
    lock: TicketLock
    def __init__(self, now_serving: _Optional[int] = ..., tickets_ahead: _Optional[int] = ..., acquired: _Optional[bool] = ..., lock: _Optional[_Union[TicketLock, _Mapping]] = ...) -> None: ...

class FinishServingRequest(_message.Message):
    __slots__ = ("conversation_id", "ticket_number")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TICKET_NUMBER_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    ticket_number: int
    def __init__(self, conversation_id: _Optional[str] = ..., ticket_number: _Optional[int] = ...) -> None: ...

class FinishServingResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CleanupRequest(_message.Message):
    __slots__ = ("conversation_id", "ticket_number")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TICKET_NUMBER_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    ticket_number: int
    def __init__(self, conversation_id: _Optional[str] = ..., ticket_number: _Optional[int] = ...) -> None: ...

class CleanupResponse(_message.Message):
    __slots__ = ("lock_deleted",)
    LOCK_DELETED_FIELD_NUMBER: _ClassVar[int]
    lock_deleted: bool
    def __init__(self, lock_deleted: _Optional[bool] = ...) -> None: ...

class IsSomeoneWaitingRequest(_message.Message):
    __slots__ = ("conversation_id",)
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    def __init__(self, conversation_id: _Optional[str] = ...) -> None: ...

class IsSomeoneWaitingResponse(_message.Message):
    __slots__ = ("waiting",)
    WAITING_FIELD_NUMBER: _ClassVar[int]
    waiting: bool
    def __init__(self, waiting: _Optional[bool] = ...) -> None: ...

class RefreshTicketRequest(_message.Message):
    __slots__ = ("conversation_id", "ticket_number", "lifetime_seconds")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TICKET_NUMBER_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    ticket_number: int
    lifetime_seconds: float
    def __init__(self, conversation_id: _Optional[str] = ..., ticket_number: _Optional[int] = ..., lifetime_seconds: _Optional[float] = ...) -> None: ...

class RefreshTicketResponse(_message.Message):
    __slots__ = ("ticket",)
    TICKET_FIELD_NUMBER: _ClassVar[int]
    ticket: Ticket
    def __init__(self, ticket: _Optional[_Union[Ticket, _Mapping]] = ...) -> None: ...

class LockRequest(_message.Message):
    __slots__ = ("acquire", "release", "refresh")
    ACQUIRE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    acquire: Acquire
    release: Release
    refresh: Refresh
    def __init__(self, acquire: _Optional[_Union[Acquire, _Mapping]] = ..., release: _Optional[_Union[Release, _Mapping]] = ..., refresh: _Optional[_Union[Refresh, _Mapping]] = ...) -> None: ...

class Acquire(_message.Message):
    __slots__ = ("conversation_id", "lifetime_seconds")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    lifetime_seconds: float
    def __init__(self, conversation_id: _Optional[str] = ..., lifetime_seconds: _Optional[float] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Refresh(_message.Message):
    __slots__ = ("lifetime_seconds",)
    LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    lifetime_seconds: float
    def __init__(self, lifetime_seconds: _Optional[float] = ...) -> None: ...

class LockResponse(_message.Message):
    __slots__ = ("queued", "acquired", "released", "refreshed")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    REFRESHED_FIELD_NUMBER: _ClassVar[int]
    queued: Queued
    acquired: Acquired
    released: Released
    refreshed: Refreshed
    def __init__(self, queued: _Optional[_Union[Queued, _Mapping]] = ..., acquired: _Optional[_Union[Acquired, _Mapping]] = ..., released: _Optional[_Union[Released, _Mapping]] = ..., refreshed: _Optional[_Union[Refreshed, _Mapping]] = ...) -> None: ...

class Queued(_message.Message):
    __slots__ = ("ticket", "now_serving", "tickets_ahead")
    TICKET_FIELD_NUMBER: _ClassVar[int]
    NOW_SERVING_FIELD_NUMBER: _ClassVar[int]
    TICKETS_AHEAD_FIELD_NUMBER: _ClassVar[int]
    ticket: Ticket
    now_serving: int
    tickets_ahead: int
    def __init__(self, ticket: _Optional[_Union[Ticket, _Mapping]] = ..., now_serving: _Optional[int] = ..., tickets_ahead: _Optional[int] = ...) -> None: ...

class Acquired(_message.Message):
    __slots__ = ("ticket",)
    TICKET_FIELD_NUMBER: _ClassVar[int]
    ticket: Ticket
    def __init__(self, ticket: _Optional[_Union[Ticket, _Mapping]] = ...) -> None: ...

class Released(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Refreshed(_message.Message):
    __slots__ = ("ticket",)
    TICKET_FIELD_NUMBER: _ClassVar[int]
    ticket: Ticket
    def __init__(self, ticket: _Optional[_Union[Ticket, _Mapping]] = ...) -> None: ...
