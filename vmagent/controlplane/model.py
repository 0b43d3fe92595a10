"""The shapes that flow from config sources and the registry into translation.

Config objects keep Istio's YAML structure for ``spec`` (validated, defaults not filled in), so that the
translator reads fields under the names users write. The registry flattens ServiceEntry, WorkloadEntry and
(later) Kubernetes Services into ``Service`` and ``Endpoint``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ConfigObject:
    """One validated Istio object."""

    kind: str  # e.g. "VirtualService"
    api_version: str  # e.g. "networking.istio.io/v1"
    namespace: str
    name: str
    spec: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    source: str = ""  # file path, "store" or "kube", for error messages
    status: dict[str, Any] = field(default_factory=dict)  # e.g. WorkloadEntry conditions (Healthy)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class Port:
    number: int
    protocol: str  # HTTP, HTTP2, GRPC, HTTPS, TLS, TCP, MONGO, ...
    name: str
    target_port: int | None = None


@dataclass(frozen=True)
class Endpoint:
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # port name -> workload port
    weight: int = 1
    locality: str = ""
    network: str = ""
    service_account: str = ""  # full SPIFFE id or "" when unknown
    healthy: bool = True
    workload_name: str = ""  # WorkloadEntry name, when the endpoint comes from one
    namespace: str = ""


@dataclass(frozen=True)
class Service:
    hostname: str  # FQDN, e.g. api.demo.svc.cluster.local
    namespace: str
    ports: tuple[Port, ...]
    addresses: tuple[str, ...] = ()
    resolution: str = "STATIC"  # STATIC, DNS, DNS_ROUND_ROBIN, NONE
    location: str = "MESH_INTERNAL"  # or MESH_EXTERNAL
    endpoints: tuple[Endpoint, ...] = ()
    export_to: tuple[str, ...] = ("*",)
    source: str = ""
