from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Register(_message.Message):
    __slots__ = ("namespace", "group", "address", "labels", "ports", "network", "locality", "hostname", "weight")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class PortsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    LOCALITY_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    group: str
    address: str
    labels: _containers.ScalarMap[str, str]
    ports: _containers.ScalarMap[str, int]
    network: str
    locality: str
    hostname: str
    weight: int
    def __init__(self, namespace: _Optional[str] = ..., group: _Optional[str] = ..., address: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., ports: _Optional[_Mapping[str, int]] = ..., network: _Optional[str] = ..., locality: _Optional[str] = ..., hostname: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class HealthReport(_message.Message):
    __slots__ = ("seq", "healthy", "message")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    healthy: bool
    message: str
    def __init__(self, seq: _Optional[int] = ..., healthy: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class Leave(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("register", "health", "heartbeat", "leave")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    register: Register
    health: HealthReport
    heartbeat: Heartbeat
    leave: Leave
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., health: _Optional[_Union[HealthReport, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., leave: _Optional[_Union[Leave, _Mapping]] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("entry_name", "heartbeat_interval_seconds")
    ENTRY_NAME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    entry_name: str
    heartbeat_interval_seconds: int
    def __init__(self, entry_name: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class Addresses(_message.Message):
    __slots__ = ("addresses",)
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class NameTable(_message.Message):
    __slots__ = ("hosts",)
    class HostsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Addresses
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Addresses, _Mapping]] = ...) -> None: ...
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.MessageMap[str, Addresses]
    def __init__(self, hosts: _Optional[_Mapping[str, Addresses]] = ...) -> None: ...

class LeaveConfirmed(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Error(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("registered", "ack", "name_table", "leave_confirmed", "error")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NAME_TABLE_FIELD_NUMBER: _ClassVar[int]
    LEAVE_CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    ack: Ack
    name_table: NameTable
    leave_confirmed: LeaveConfirmed
    error: Error
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., name_table: _Optional[_Union[NameTable, _Mapping]] = ..., leave_confirmed: _Optional[_Union[LeaveConfirmed, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
