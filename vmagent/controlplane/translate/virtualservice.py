"""Which VirtualService routes a service for one sidecar, and where its destinations go.

Selection (Istio's semantics for sidecars):

* A VirtualService applies to sidecars when its ``gateways`` is empty or names ``mesh``; it must be
  visible from the proxy's namespace (``exportTo``).
* ``hosts`` are resolved like Istio: a short name (no dot) is ``NAME.VS_NAMESPACE.svc.DOMAIN``, FQDNs
  stay, ``*.suffix`` and ``*`` are wildcards. For one service, a VirtualService naming its exact host
  wins over wildcards, the longest wildcard over shorter ones; equal candidates are ordered by the
  proxy's namespace, the service's namespace, then namespace and name (Istio uses creation time; the
  objects here carry none). Only the chosen VirtualService routes the service; hosts that match no
  service get no virtual host.
* A match applies to a sidecar when its ``gateways`` (or, when empty, the VirtualService's) include
  ``mesh``, its ``port`` is the listener port, its ``sourceLabels`` are all among the proxy's labels and
  its ``sourceNamespace`` (if any) is the proxy's. A route whose matches all drop out is dropped; a
  route without matches matches everything.

Destinations: ``host`` is resolved as above; the port is ``destination.port.number``, else the service's
only port, else the listener port; the cluster is ``outbound|PORT|SUBSET|HOST``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from vmagent.controlplane.config.hosts import config_visible, host_covers, qualify_host
from vmagent.controlplane.model import ConfigObject, Service
from vmagent.controlplane.specs import virtualservice as vsspec
from vmagent.controlplane.specs.destinationrule import TrafficPolicy
from vmagent.controlplane.translate import names
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.destination import find_destination_rule
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo

MESH_GATEWAY = "mesh"


def vs_gateways(vs: ConfigObject) -> list[str]:
    """The VirtualService's gateways, each ``mesh`` or ``NAMESPACE/NAME`` (a bare name is in its namespace)."""
    return [_qualify(g, vs.namespace) for g in vs.spec_as(vsspec.VirtualService).gateways] or [MESH_GATEWAY]


def _qualify(gateway: str, namespace: str) -> str:
    return gateway if gateway == MESH_GATEWAY or "/" in gateway else f"{namespace}/{gateway}"


def vs_hosts(vs: ConfigObject, dns_domain: str) -> list[str]:
    return [qualify_host(h, vs.namespace, dns_domain) for h in vs.spec_as(vsspec.VirtualService).hosts]


@dataclass(frozen=True)
class Destination:
    """A resolved route destination: the cluster, its weight and the per-destination headers."""

    cluster: str
    host: str
    port: int
    subset: str
    weight: int
    headers: vsspec.Headers | None


@dataclass(frozen=True)
class RouteContext:
    """Everything route translation reads for one proxy and one listener port."""

    proxy: ProxyInfo
    mesh: MeshOptions
    configs: ConfigLookup
    services: Mapping[str, Service]  # visible services by hostname
    port: int
    gateway: str = MESH_GATEWAY  # "mesh" for sidecars, "NAMESPACE/NAME" for a Gateway's routes

    def destination(
        self,
        vs: ConfigObject,
        d: vsspec.Destination,
        weight: int = 100,
        headers: vsspec.Headers | None = None,
    ) -> Destination:
        host = qualify_host(d.host, vs.namespace, self.mesh.dns_domain)
        subset = d.subset
        number = d.port.number if d.port is not None else None
        svc = self.services.get(host)
        if number is None:
            ports = sorted({p.number for p in svc.ports}) if svc is not None else []
            number = ports[0] if len(ports) == 1 else self.port
        return Destination(
            names.outbound_cluster(int(number), host, subset),
            host,
            int(number),
            subset,
            weight,
            headers,
        )

    def destinations(
        self, vs: ConfigObject, route: Sequence[vsspec.HTTPRouteDestination | vsspec.RouteDestination]
    ) -> list[Destination]:
        """Weighted destinations of a ``route`` list; weight-0 entries are left out (Istio does too)."""
        out = []
        for r in route:
            weight = r.weight
            w = 100 if weight is None and len(route) == 1 else int(weight or 0)
            if w > 0 or len(route) == 1:
                headers = r.headers if isinstance(r, vsspec.HTTPRouteDestination) else None
                out.append(self.destination(vs, r.destination, max(w, 1), headers))
        return out

    def policy(self, dest: Destination) -> TrafficPolicy:
        """The DestinationRule policy in force for ``dest`` (empty when its host is unknown)."""
        svc = self.services.get(dest.host)
        if svc is None:
            return TrafficPolicy()
        rule = find_destination_rule(svc, self.proxy.namespace, self.configs, self.mesh)
        return rule.traffic_policy(dest.port, dest.subset)


def select_virtual_service(
    service: Service, proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions
) -> ConfigObject | None:
    """The VirtualService that routes ``service`` for the sidecar ``proxy``, or None."""
    best: tuple[tuple[int, int, int, str, str], ConfigObject] | None = None
    for vs in configs.list("VirtualService"):
        if MESH_GATEWAY not in vs_gateways(vs) or not config_visible(vs, proxy.namespace):
            continue
        scores = [
            1_000_000 if h == service.hostname else len(h)
            for h in vs_hosts(vs, mesh.dns_domain)
            if host_covers(h, service.hostname)
        ]
        if not scores:
            continue
        key = (
            -max(scores),
            vs.namespace != proxy.namespace,
            vs.namespace != service.namespace,
            vs.namespace,
            vs.name,
        )
        if best is None or key < best[0]:
            best = (key, vs)
    return best[1] if best is not None else None


class Match(Protocol):
    """What HTTP, TLS and TCP matches share: the fields that decide whether they are in force."""

    @property
    def gateways(self) -> tuple[str, ...]: ...

    @property
    def port(self) -> int | None: ...

    @property
    def source_labels(self) -> Mapping[str, str]: ...

    @property
    def source_namespace(self) -> str: ...


M = TypeVar("M", bound=Match)


def _source_ok(match: Match, proxy: ProxyInfo) -> bool:
    if any(proxy.labels.get(k) != v for k, v in match.source_labels.items()):
        return False
    ns = match.source_namespace
    return not ns or ns == proxy.namespace


def match_applies(
    vs: ConfigObject, match: Match, proxy: ProxyInfo, port: int, gateway: str = MESH_GATEWAY
) -> bool:
    """Whether one match (HTTP, TCP or TLS) is in force on ``proxy`` for ``port``, as a sidecar
    (``gateway="mesh"``) or as the Gateway ``NAMESPACE/NAME``."""
    gateways = [_qualify(g, vs.namespace) for g in match.gateways] or vs_gateways(vs)
    if gateway not in gateways:
        return False
    if match.port is not None and match.port != port:
        return False
    return _source_ok(match, proxy)


def applicable_matches(
    vs: ConfigObject,
    matches: Sequence[M],
    everything: M,
    proxy: ProxyInfo,
    port: int,
    gateway: str = MESH_GATEWAY,
) -> list[M] | None:
    """A route's ``matches`` in force (``[everything]`` when it has none), or None when the route does
    not apply."""
    if not matches:
        return [everything] if gateway in vs_gateways(vs) else None
    kept = [m for m in matches if match_applies(vs, m, proxy, port, gateway)]
    return kept or None


def tcp_destinations(vs: ConfigObject | None, ctx: RouteContext) -> list[Destination] | None:
    """The destinations of the first ``tcp`` route in force, or None (use the service's own cluster)."""
    if vs is None:
        return None
    for r in vs.spec_as(vsspec.VirtualService).tcp:
        if (
            applicable_matches(vs, r.match, vsspec.L4MatchAttributes(), ctx.proxy, ctx.port, ctx.gateway)
            is None
        ):
            continue
        if any(m.destination_subnets for m in r.match):
            continue  # destination subnets are not matched on (documented limit)
        dests = ctx.destinations(vs, r.route)
        if dests:
            return dests
    return None


def tls_routes(vs: ConfigObject | None, ctx: RouteContext) -> list[tuple[list[str], list[Destination]]]:
    """``(sniHosts, destinations)`` for each ``tls`` match in force, in order."""
    if vs is None:
        return []
    out = []
    for r in vs.spec_as(vsspec.VirtualService).tls:
        dests = ctx.destinations(vs, r.route)
        for m in r.match:
            if dests and match_applies(vs, m, ctx.proxy, ctx.port, ctx.gateway):
                out.append((list(m.sni_hosts), dests))
    return out
