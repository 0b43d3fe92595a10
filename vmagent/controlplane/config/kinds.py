"""The supported Istio kinds: API group, accepted versions and the spec schema of each."""

from __future__ import annotations

from dataclasses import dataclass

from vmagent.controlplane.config.destinationrule import DESTINATION_RULE
from vmagent.controlplane.config.envoyfilter import ENVOY_FILTER
from vmagent.controlplane.config.gateway import GATEWAY
from vmagent.controlplane.config.security import (
    AUTHORIZATION_POLICY,
    PEER_AUTHENTICATION,
    REQUEST_AUTHENTICATION,
)
from vmagent.controlplane.config.serviceentry import SERVICE_ENTRY
from vmagent.controlplane.config.sidecar import SIDECAR
from vmagent.controlplane.config.telemetry import TELEMETRY
from vmagent.controlplane.config.types import Msg
from vmagent.controlplane.config.virtualservice import VIRTUAL_SERVICE
from vmagent.controlplane.config.wasmplugin import WASM_PLUGIN
from vmagent.controlplane.config.workload import WORKLOAD_ENTRY, WORKLOAD_GROUP

NETWORKING = "networking.istio.io"
SECURITY = "security.istio.io"
TELEMETRY_GROUP = "telemetry.istio.io"
EXTENSIONS = "extensions.istio.io"


@dataclass(frozen=True)
class KindInfo:
    kind: str
    group: str
    versions: tuple[str, ...]
    spec: Msg

    @property
    def api_versions(self) -> tuple[str, ...]:
        return tuple(f"{self.group}/{v}" for v in self.versions)


_NET = ("v1alpha3", "v1beta1", "v1")
_SEC = ("v1beta1", "v1")

KINDS: dict[str, KindInfo] = {
    k.kind: k
    for k in (
        KindInfo("VirtualService", NETWORKING, _NET, VIRTUAL_SERVICE),
        KindInfo("DestinationRule", NETWORKING, _NET, DESTINATION_RULE),
        KindInfo("ServiceEntry", NETWORKING, _NET, SERVICE_ENTRY),
        KindInfo("Gateway", NETWORKING, _NET, GATEWAY),
        KindInfo("WorkloadEntry", NETWORKING, _NET, WORKLOAD_ENTRY),
        KindInfo("WorkloadGroup", NETWORKING, _NET, WORKLOAD_GROUP),
        KindInfo("Sidecar", NETWORKING, _NET, SIDECAR),
        KindInfo("EnvoyFilter", NETWORKING, ("v1alpha3",), ENVOY_FILTER),
        KindInfo("PeerAuthentication", SECURITY, _SEC, PEER_AUTHENTICATION),
        KindInfo("RequestAuthentication", SECURITY, _SEC, REQUEST_AUTHENTICATION),
        KindInfo("AuthorizationPolicy", SECURITY, _SEC, AUTHORIZATION_POLICY),
        KindInfo("Telemetry", TELEMETRY_GROUP, ("v1alpha1", "v1"), TELEMETRY),
        KindInfo("WasmPlugin", EXTENSIONS, ("v1alpha1",), WASM_PLUGIN),
    )
}
