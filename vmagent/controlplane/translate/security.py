"""PeerAuthentication: the effective inbound mutual TLS mode of a workload, per port.

Istio's precedence: a policy selecting the workload (in its namespace) overrides the namespace-wide
policy, which overrides the mesh-wide one (no selector, in the root namespace). A mode of UNSET (or no
``mtls``) inherits from the next level; with nothing set the mode is PERMISSIVE. ``portLevelMtls`` of the
workload policy overrides the mode for single workload ports (UNSET inherits the workload's mode). When
several policies compete at one level, Istio takes the oldest; objects here carry no creation time, so
the first by name wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vmagent.controlplane.model import ConfigObject
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


def _mode(spec_mtls: object) -> str | None:
    """The mode in an ``mtls`` block, or None when absent/UNSET (inherit)."""
    if not isinstance(spec_mtls, Mapping):
        return None
    mode = str(spec_mtls.get("mode", "UNSET")).upper()
    return mode if mode in _MODES else None


def _match_labels(pa: ConfigObject) -> dict[str, str]:
    selector = pa.spec.get("selector")
    if not isinstance(selector, Mapping):
        return {}
    labels = selector.get("matchLabels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}


def _selects(pa: ConfigObject, labels: Mapping[str, str]) -> bool:
    sel = _match_labels(pa)
    return all(labels.get(k) == v for k, v in sel.items())


def effective_mtls(proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions) -> MtlsPolicy:
    """Resolve the PeerAuthentications that apply to ``proxy``'s workload."""
    mesh_wide = [p for p in configs.list("PeerAuthentication", mesh.root_namespace) if not _match_labels(p)]
    in_ns = configs.list("PeerAuthentication", proxy.namespace)
    namespace_wide = [p for p in in_ns if not _match_labels(p)]
    workload = [p for p in in_ns if _match_labels(p) and _selects(p, proxy.labels)]

    mode = PERMISSIVE
    for level in (mesh_wide, namespace_wide, workload):
        if level:
            mode = _mode(level[0].spec.get("mtls")) or mode
    ports: dict[int, str] = {}
    if workload:
        plm = workload[0].spec.get("portLevelMtls")
        if isinstance(plm, Mapping):
            for key, value in plm.items():
                try:
                    number = int(key)
                except (TypeError, ValueError):
                    continue
                port_mode = _mode(value)
                if port_mode is not None:
                    ports[number] = port_mode
    return MtlsPolicy(mode=mode, port_modes=dict(sorted(ports.items())))
