"""The shapes that flow from config sources and the registry into translation.

Config objects keep Istio's YAML structure for ``spec`` (validated, defaults not filled in); readers use
its typed view (``view``/``spec_as``, built once per object from :mod:`vmagent.controlplane.specs`) where
the kind has one. The registry flattens ServiceEntry, WorkloadEntry and
(later) Kubernetes Services into ``Service`` and ``Endpoint``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

from vmagent.controlplane.specs import view_of

V = TypeVar("V")


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

    @cached_property
    def view(self) -> object:
        """The typed view of ``spec`` (:mod:`vmagent.controlplane.specs`), built once per object."""
        return view_of(self.kind, self.spec)

    def spec_as(self, cls: type[V]) -> V:
        """``view`` as ``cls`` (e.g. ``ServiceEntry``); TypeError when this object is another kind."""
        view = self.view
        if not isinstance(view, cls):
            raise TypeError(f"{self.kind} {self.namespace}/{self.name} has no {cls.__name__} view")
        return view


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
