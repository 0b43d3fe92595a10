"""Views of WorkloadEntry (also ServiceEntry's inline endpoints and a WorkloadGroup's template) and
WorkloadGroup; schemas in :mod:`vmagent.controlplane.config.workload`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class WorkloadEntry:
    address: str = ""
    ports: Mapping[str, int] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str = ""
    locality: str = ""
    weight: int = 0  # 0: not set (Istio's default weight is 1)
    service_account: str = ""


@dataclass(frozen=True)
class HTTPHeader:
    name: str = ""
    value: str = ""


@dataclass(frozen=True)
class HTTPHealthCheckConfig:
    path: str = ""
    port: int = 0
    host: str = ""
    scheme: str = ""
    http_headers: tuple[HTTPHeader, ...] = ()


@dataclass(frozen=True)
class TCPHealthCheckConfig:
    host: str = ""
    port: int = 0


@dataclass(frozen=True)
class ExecHealthCheckConfig:
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class GrpcHealthCheckConfig:
    port: int = 0
    service: str = ""


@dataclass(frozen=True)
class ReadinessProbe:
    initial_delay_seconds: int = 0
    timeout_seconds: int = 0
    period_seconds: int = 0
    success_threshold: int = 0
    failure_threshold: int = 0
    http_get: HTTPHealthCheckConfig | None = None
    tcp_socket: TCPHealthCheckConfig | None = None
    exec: ExecHealthCheckConfig | None = None
    grpc: GrpcHealthCheckConfig | None = None


@dataclass(frozen=True)
class ObjectMeta:
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkloadGroup:
    metadata: ObjectMeta = field(default_factory=ObjectMeta)
    template: WorkloadEntry = field(default_factory=WorkloadEntry)
    probe: ReadinessProbe | None = None
