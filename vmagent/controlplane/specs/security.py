"""Views of the security.istio.io kinds; schemas in :mod:`vmagent.controlplane.config.security`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vmagent.controlplane.specs.common import WorkloadSelector


@dataclass(frozen=True)
class MutualTLS:
    mode: str = "UNSET"


@dataclass(frozen=True)
class PeerAuthentication:
    selector: WorkloadSelector | None = None
    mtls: MutualTLS | None = None
    port_level_mtls: Mapping[int, MutualTLS] = field(default_factory=dict)
