"""From a connected proxy and the registry's services to the proxy's xDS snapshot."""

from __future__ import annotations

from typing import Any

from vmagent.common.errors import ConfigError
from vmagent.controlplane.config import ConfigSet
from vmagent.controlplane.model import Service
from vmagent.controlplane.proxies import ConnectedProxy
from vmagent.controlplane.registry import find_workload_group
from vmagent.controlplane.translate import (
    MeshOptions,
    ProxyInfo,
    all_messages,
    build_name_table,
    build_proxy_resources,
    workload_ports,
)
from vmagent.controlplane.xds.snapshot import Snapshot


def mesh_options(trust_domain: str, mesh_config: dict[str, Any], source: str = "mesh config") -> MeshOptions:
    """Istio MeshConfig fields we honour: ``outboundTrafficPolicy.mode``, ``rootNamespace``."""
    policy = (mesh_config.get("outboundTrafficPolicy") or {}).get("mode", "ALLOW_ANY")
    if policy not in ("ALLOW_ANY", "REGISTRY_ONLY"):
        raise ConfigError(
            f"{source}: outboundTrafficPolicy.mode: {policy!r} is not ALLOW_ANY or REGISTRY_ONLY"
        )
    root_ns = mesh_config.get("rootNamespace", "istio-system")
    if not isinstance(root_ns, str) or not root_ns:
        raise ConfigError(f"{source}: rootNamespace: expected a namespace name")
    unknown = set(mesh_config) - {"outboundTrafficPolicy", "rootNamespace"}
    if unknown:
        raise ConfigError(
            f"{source}: {sorted(unknown)[0]}: unknown field (known: outboundTrafficPolicy, rootNamespace)"
        )
    return MeshOptions(trust_domain=trust_domain, root_namespace=root_ns, outbound_traffic_policy=policy)


class Translator:
    """``translator(proxy, services) -> Snapshot`` for the MeshController."""

    def __init__(self, configs: ConfigSet, mesh: MeshOptions) -> None:
        self._configs = configs
        self.mesh = mesh

    def proxy_info(self, proxy: ConnectedProxy, services: list[Service]) -> ProxyInfo:
        group = find_workload_group(self._configs, proxy.namespace, proxy.workload_name)
        named = ((group.spec.get("template") or {}).get("ports") if group else None) or {}
        return ProxyInfo(
            namespace=proxy.namespace,
            labels=proxy.labels,
            ip_addresses=(proxy.ip,),
            identity=proxy.identity.uri,
            ports=workload_ports(
                services, proxy.namespace, "", (proxy.ip,), {str(k): int(v) for k, v in named.items()}
            ),
            mode="gateway" if proxy.gateway else "sidecar",
            name=proxy.key,
        )

    def __call__(self, proxy: ConnectedProxy, services: list[Service]) -> Snapshot:
        info = self.proxy_info(proxy, services)
        resources = build_proxy_resources(info, services, self._configs.snapshot(), self.mesh)
        return Snapshot.from_messages(all_messages(resources))

    def name_table(self, services: list[Service], namespace: str) -> dict[str, list[str]]:
        return build_name_table(services, namespace)
