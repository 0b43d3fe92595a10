"""From a connected proxy and the registry's services to the proxy's xDS snapshot."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from vmagent.common import constants
from vmagent.common.errors import ConfigError
from vmagent.controlplane.config import ConfigSet
from vmagent.controlplane.config.snapshot import ConfigSnapshot
from vmagent.controlplane.model import Service
from vmagent.controlplane.proxies import ConnectedProxy
from vmagent.controlplane.registry.services import find_workload_group
from vmagent.controlplane.translate import (
    MeshOptions,
    ProxyInfo,
    all_messages,
    build_name_table,
    workload_ports,
)
from vmagent.controlplane.translate.accesslog import MESH_FIELDS, parse_access_log
from vmagent.controlplane.translate.build import (
    OutboundKey,
    Resources,
    build_inbound_resources,
    build_outbound_resources,
    label_keys_read,
    outbound_key,
    translation_key,
    with_labels_read,
)
from vmagent.controlplane.translate.requestmetrics import parse_metrics_enabled
from vmagent.controlplane.translate.tracing_config import parse_mesh_tracing
from vmagent.controlplane.xds.snapshot import Packer, Snapshot


def mesh_options(trust_domain: str, mesh_config: dict[str, Any], source: str = "mesh config") -> MeshOptions:
    """Istio MeshConfig fields we honour: ``outboundTrafficPolicy.mode``, ``rootNamespace``, the access-log
    fields, ``defaultProviders``, and for tracing ``extensionProviders``, ``defaultConfig.tracing`` and
    ``enableTracing``."""
    policy = (mesh_config.get("outboundTrafficPolicy") or {}).get("mode", "ALLOW_ANY")
    if policy not in ("ALLOW_ANY", "REGISTRY_ONLY"):
        raise ConfigError(
            f"{source}: outboundTrafficPolicy.mode: {policy!r} is not ALLOW_ANY or REGISTRY_ONLY"
        )
    root_ns = mesh_config.get("rootNamespace", "istio-system")
    if not isinstance(root_ns, str) or not root_ns:
        raise ConfigError(f"{source}: rootNamespace: expected a namespace name")
    known = {
        "outboundTrafficPolicy", "rootNamespace", "defaultProviders", "extensionProviders", "defaultConfig",
        "enableTracing", *MESH_FIELDS,
    }  # fmt: skip
    unknown = set(mesh_config) - known
    if unknown:
        raise ConfigError(
            f"{source}: {sorted(unknown)[0]}: unknown field (known: {', '.join(sorted(known))})"
        )
    return MeshOptions(
        trust_domain=trust_domain,
        root_namespace=root_ns,
        outbound_traffic_policy=policy,
        access_log=parse_access_log(mesh_config, source),
        request_metrics=parse_metrics_enabled(mesh_config, source),
        tracing=parse_mesh_tracing(mesh_config, source),
    )


@dataclass
class _Inputs:
    """One set of translation inputs and what was built from it (shared by every proxy translated with it)."""

    services: list[Service]
    configs: ConfigSnapshot
    packer: Packer = field(default_factory=Packer)
    by_address: dict[str, list[Service]] = field(default_factory=dict)
    outbound: dict[OutboundKey, Resources] = field(default_factory=dict)
    snapshots: dict[Hashable, Snapshot] = field(default_factory=dict)
    label_keys: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.label_keys = label_keys_read(self.configs)
        for svc in self.services:
            for address in {ep.address for ep in svc.endpoints}:
                self.by_address.setdefault(address, []).append(svc)

    def matches(self, services: list[Service], configs: ConfigSnapshot) -> bool:
        """The same config snapshot and equal services (a C-speed identity check while the registry
        hands out the same Service objects, i.e. until it changes)."""
        return configs is self.configs and services == self.services


class Translator:
    """``translator(proxy, services) -> Snapshot`` for the MeshController.

    Proxies whose :func:`translation_key` is equal (e.g. the VMs of one WorkloadGroup) get one shared
    ``Snapshot``, built once per set of inputs (config snapshot and registry services); proxies that
    share only the :func:`outbound_key` (namespace, labels, mode) share the outbound resources, their
    packed form and versions, and build only the inbound half. The result is what
    ``build_proxy_resources`` gives for each proxy. Thread-safe.
    """

    # Input sets kept: a push round and a connecting proxy may briefly see different inputs.
    KEEP_INPUTS = 2

    def __init__(self, configs: ConfigSet, mesh: MeshOptions) -> None:
        self._configs = configs
        self.mesh = mesh
        self._lock = threading.Lock()
        self._inputs: list[_Inputs] = []  # most recent first

    def proxy_info(
        self, proxy: ConnectedProxy, services: list[Service], configs: ConfigSnapshot | None = None
    ) -> ProxyInfo:
        """What translation needs to know about ``proxy`` (its ports from ``services`` and its group)."""
        view = configs if configs is not None else self._configs.snapshot()
        group = find_workload_group(view, proxy.namespace, proxy.workload_name)
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
            access_log_service=proxy.metadata.get("VMAGENT_ALS") == constants.ALS_CLUSTER,
        )

    def _current(self, services: list[Service]) -> _Inputs:
        configs = self._configs.snapshot()
        with self._lock:
            for inputs in self._inputs:
                if inputs.matches(services, configs):
                    return inputs
        fresh = _Inputs(list(services), configs)
        with self._lock:
            self._inputs = [fresh, *self._inputs][: self.KEEP_INPUTS]
        return fresh

    def __call__(self, proxy: ConnectedProxy, services: list[Service]) -> Snapshot:
        inputs = self._current(services)
        # Only the services with an endpoint at the proxy's address can give it inbound ports.
        info = self.proxy_info(proxy, inputs.by_address.get(proxy.ip, []), inputs.configs)
        # Labels no config selects on (e.g. a per-VM registration label) must not split the sharing.
        info = with_labels_read(info, inputs.label_keys)
        key = translation_key(info)
        snap = inputs.snapshots.get(key)
        if snap is not None:
            return snap
        okey = outbound_key(info)
        outbound = inputs.outbound.get(okey)
        if outbound is None:
            built = build_outbound_resources(info, inputs.services, inputs.configs, self.mesh)
            outbound = inputs.outbound.setdefault(okey, built)
        resources = build_inbound_resources(info, outbound, inputs.configs, self.mesh)
        return inputs.snapshots.setdefault(
            key, Snapshot.from_messages(all_messages(resources), inputs.packer)
        )

    def name_table(self, services: list[Service], namespace: str) -> dict[str, list[str]]:
        return build_name_table(services, namespace)
