"""PeerAuthentication: the effective inbound mutual TLS mode of a workload, per port.

Istio's precedence: a policy selecting the workload (in its namespace) overrides the namespace-wide
policy, which overrides the mesh-wide one (no selector, in the root namespace). A mode of UNSET (or no
``mtls``) inherits from the next level; with nothing set the mode is PERMISSIVE. ``portLevelMtls`` of the
workload policy overrides the mode for single workload ports (UNSET inherits the workload's mode). When
several policies compete at one level, Istio takes the oldest; objects here carry no creation time, so
the first by name wins.

The same module selects the RequestAuthentications and AuthorizationPolicies of a workload (all that
apply are combined, unlike PeerAuthentication): those in the root namespace (mesh-wide, or for the
workloads in any namespace whose labels their ``selector`` matches) and those in the workload's namespace
(namespace-wide, or selecting it). ``InboundSecurity`` carries all three to the inbound listener.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmagent.controlplane.config.hosts import labels_match
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.specs.security import MutualTLS, PeerAuthentication
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo

STRICT = "STRICT"
PERMISSIVE = "PERMISSIVE"
DISABLE = "DISABLE"
_MODES = (STRICT, PERMISSIVE, DISABLE)


@dataclass(frozen=True)
class MtlsPolicy:
    """The workload's mode and the per-port overrides (workload port numbers)."""

    mode: str = PERMISSIVE
    port_modes: Mapping[int, str] = field(default_factory=dict)

    def for_port(self, port: int) -> str:
        return self.port_modes.get(port, self.mode)


@dataclass(frozen=True)
class InboundSecurity(MtlsPolicy):
    """Everything that secures the workload's inbound side: mutual TLS per port (``MtlsPolicy``), the
    RequestAuthentications (jwt_authn) and the AuthorizationPolicies (RBAC) that apply to it, sorted by
    namespace and name."""

    request_authentications: tuple[ConfigObject, ...] = ()
    authorization_policies: tuple[ConfigObject, ...] = ()


def _mode(spec_mtls: MutualTLS | None) -> str | None:
    """The mode in an ``mtls`` block, or None when absent/UNSET (inherit)."""
    if spec_mtls is None:
        return None
    mode = spec_mtls.mode.upper()
    return mode if mode in _MODES else None


def _match_labels(pa: ConfigObject) -> dict[str, str]:
    selector = pa.spec.get("selector")
    if not isinstance(selector, Mapping):
        return {}
    labels = selector.get("matchLabels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}


def _selects(pa: ConfigObject, labels: Mapping[str, str]) -> bool:
    sel = _match_labels(pa)
    return labels_match(sel, labels)


def _has_target_ref(obj: ConfigObject) -> bool:
    spec: Mapping[str, Any] = obj.spec
    return bool(spec.get("targetRef") or spec.get("targetRefs"))


def applicable(kind: str, proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions) -> list[ConfigObject]:
    """The objects of ``kind`` (RequestAuthentication, AuthorizationPolicy) that apply to ``proxy``.

    Root namespace objects apply in every namespace; a ``selector`` must match the workload's labels.
    Objects bound with ``targetRef(s)`` (Kubernetes Gateway API) apply to no VM workload.
    """
    namespaces = [mesh.root_namespace]
    if proxy.namespace != mesh.root_namespace:
        namespaces.append(proxy.namespace)
    out = []
    for ns in namespaces:
        for obj in configs.list(kind, ns):
            if not _has_target_ref(obj) and _selects(obj, proxy.labels):
                out.append(obj)
    return sorted(out, key=lambda o: (o.namespace, o.name))


def inbound_security(proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions) -> InboundSecurity:
    """The workload's mutual TLS modes, RequestAuthentications and AuthorizationPolicies."""
    mtls = effective_mtls(proxy, configs, mesh)
    return InboundSecurity(
        mode=mtls.mode,
        port_modes=mtls.port_modes,
        request_authentications=tuple(applicable("RequestAuthentication", proxy, configs, mesh)),
        authorization_policies=tuple(applicable("AuthorizationPolicy", proxy, configs, mesh)),
    )


def effective_mtls(proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions) -> MtlsPolicy:
    """Resolve the PeerAuthentications that apply to ``proxy``'s workload."""
    mesh_wide = [p for p in configs.list("PeerAuthentication", mesh.root_namespace) if not _match_labels(p)]
    in_ns = configs.list("PeerAuthentication", proxy.namespace)
    namespace_wide = [p for p in in_ns if not _match_labels(p)]
    workload = [p for p in in_ns if _match_labels(p) and _selects(p, proxy.labels)]

    mode = PERMISSIVE
    for level in (mesh_wide, namespace_wide, workload):
        if level:
            mode = _mode(level[0].spec_as(PeerAuthentication).mtls) or mode
    ports: dict[int, str] = {}
    if workload:
        for number, value in workload[0].spec_as(PeerAuthentication).port_level_mtls.items():
            port_mode = _mode(value)
            if port_mode is not None:
                ports[number] = port_mode
    return MtlsPolicy(mode=mode, port_modes=dict(sorted(ports.items())))
