"""DestinationRule lookup, subsets, and the traffic policy in force for one port and subset.

Lookup follows Istio: the rules visible to the proxy in its own namespace first, then the service's
namespace, then the root namespace; within one namespace an exact host beats a wildcard, and the longest
wildcard wins. A short ``host`` (no dot) means ``HOST.RULE_NAMESPACE.svc.DOMAIN``.

The effective policy of (port, subset) is the rule's ``trafficPolicy``, overridden field by field by its
``portLevelSettings`` for that port, then by the subset's ``trafficPolicy`` and that policy's
``portLevelSettings`` (Istio's precedence). Translation of the fields other than ``tls`` comes with
issue 6; this module already returns the merged policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vmagent.controlplane.config.hosts import config_visible, host_covers, qualify_host
from vmagent.controlplane.model import ConfigObject, Service
from vmagent.controlplane.specs.destinationrule import DestinationRule, TrafficPolicy
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.proxy import MeshOptions


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str]
    traffic_policy: TrafficPolicy


def rule_host(rule: ConfigObject, dns_domain: str) -> str:
    """The rule's ``host`` as a full name (a short name is in the rule's namespace)."""
    return qualify_host(rule.spec_as(DestinationRule).host, rule.namespace, dns_domain)


@dataclass(frozen=True)
class DestinationPolicy:
    """The DestinationRule chosen for one service (or none)."""

    rule: ConfigObject | None = None

    def subsets(self) -> list[Subset]:
        if self.rule is None:
            return []
        out = [
            Subset(s.name, dict(s.labels), s.traffic_policy or TrafficPolicy())
            for s in self.rule.spec_as(DestinationRule).subsets
        ]
        return [s for s in out if s.name]

    def traffic_policy(self, port: int, subset: str = "") -> TrafficPolicy:
        """The merged policy for ``port`` and ``subset`` (``""`` = the service as a whole)."""
        if self.rule is None:
            return TrafficPolicy()
        layers = [self.rule.spec_as(DestinationRule).traffic_policy or TrafficPolicy()]
        for s in self.subsets():
            if subset and s.name == subset:
                layers.append(s.traffic_policy)
        merged = TrafficPolicy()
        for layer in layers:
            merged = merged.overridden(layer)
            for pls in layer.port_level_settings:
                if pls.port.number is not None and pls.port.number == port:
                    merged = merged.overridden(pls)
        return merged


def find_destination_rule(
    service: Service, proxy_ns: str, configs: ConfigLookup, mesh: MeshOptions
) -> DestinationPolicy:
    """The rule for ``service`` as seen from ``proxy_ns``."""
    seen: list[str] = []
    for ns in (proxy_ns, service.namespace, mesh.root_namespace):
        if ns in seen:
            continue
        seen.append(ns)
        best: tuple[int, ConfigObject] | None = None
        for rule in configs.list("DestinationRule", ns):
            if not config_visible(rule, proxy_ns):
                continue
            pattern = rule_host(rule, mesh.dns_domain)
            if not host_covers(pattern, service.hostname):
                continue
            score = 1_000_000 if pattern == service.hostname else len(pattern)
            if best is None or score > best[0]:
                best = (score, rule)
        if best is not None:
            return DestinationPolicy(best[1])
    return DestinationPolicy(None)
