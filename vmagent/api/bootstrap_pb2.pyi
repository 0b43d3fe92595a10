from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("csr", "validity_duration", "hostname")
    CSR_FIELD_NUMBER: _ClassVar[int]
    VALIDITY_DURATION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    csr: str
    validity_duration: int
    hostname: str
    def __init__(self, csr: _Optional[str] = ..., validity_duration: _Optional[int] = ..., hostname: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("cert_chain", "root_cert", "trust_domain", "namespace", "group", "service_account", "workload_group_json", "mtls_port", "mesh_config_json")
    CERT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    ROOT_CERT_FIELD_NUMBER: _ClassVar[int]
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_GROUP_JSON_FIELD_NUMBER: _ClassVar[int]
    MTLS_PORT_FIELD_NUMBER: _ClassVar[int]
    MESH_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    cert_chain: _containers.RepeatedScalarFieldContainer[str]
    root_cert: str
    trust_domain: str
    namespace: str
    group: str
    service_account: str
    workload_group_json: str
    mtls_port: int
    mesh_config_json: str
    def __init__(self, cert_chain: _Optional[_Iterable[str]] = ..., root_cert: _Optional[str] = ..., trust_domain: _Optional[str] = ..., namespace: _Optional[str] = ..., group: _Optional[str] = ..., service_account: _Optional[str] = ..., workload_group_json: _Optional[str] = ..., mtls_port: _Optional[int] = ..., mesh_config_json: _Optional[str] = ...) -> None: ...
