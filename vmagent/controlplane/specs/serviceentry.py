"""View of ServiceEntry; schema in :mod:`vmagent.controlplane.config.serviceentry`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vmagent.controlplane.specs.workload import WorkloadEntry


@dataclass(frozen=True)
class ServicePort:
    number: int = 0
    protocol: str = ""
    name: str = ""
    target_port: int = 0  # 0: not set


@dataclass(frozen=True)
class WorkloadSelector:
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceEntry:
    hosts: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    location: str = "MESH_EXTERNAL"  # Istio's default
    resolution: str = "NONE"  # Istio's default
    endpoints: tuple[WorkloadEntry, ...] = ()
    workload_selector: WorkloadSelector | None = None
    export_to: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()
