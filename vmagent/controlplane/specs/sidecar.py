"""View of networking.istio.io Sidecar; schema in :mod:`vmagent.controlplane.config.sidecar` (the
fields vmagent refuses are kept as the validated mappings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vmagent.controlplane.specs.serviceentry import WorkloadSelector


@dataclass(frozen=True)
class IstioEgressListener:
    hosts: tuple[str, ...] = ()
    port: Mapping[str, str] = field(default_factory=dict)
    bind: str = ""
    capture_mode: str = ""


@dataclass(frozen=True)
class Sidecar:
    workload_selector: WorkloadSelector | None = None
    egress: tuple[IstioEgressListener, ...] = ()
    ingress: tuple[Mapping[str, str], ...] = ()
    outbound_traffic_policy: Mapping[str, str] = field(default_factory=dict)
    inbound_connection_pool: Mapping[str, str] = field(default_factory=dict)
