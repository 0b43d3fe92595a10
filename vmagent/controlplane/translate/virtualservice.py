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
from typing import Any

from vmagent.controlplane.config.hosts import config_visible, host_covers, qualify_host
from vmagent.controlplane.model import ConfigObject, Service
from vmagent.controlplane.translate import names
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.destination import find_destination_rule
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo

MESH_GATEWAY = "mesh"


def _d(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _l(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def vs_gateways(vs: ConfigObject) -> list[str]:
    """The VirtualService's gateways, each ``mesh`` or ``NAMESPACE/NAME`` (a bare name is in its namespace)."""
    return [_qualify(str(g), vs.namespace) for g in _l(vs.spec.get("gateways"))] or [MESH_GATEWAY]


def _qualify(gateway: str, namespace: str) -> str:
    return gateway if gateway == MESH_GATEWAY or "/" in gateway else f"{namespace}/{gateway}"


def vs_hosts(vs: ConfigObject, dns_domain: str) -> list[str]:
    return [qualify_host(str(h), vs.namespace, dns_domain) for h in _l(vs.spec.get("hosts"))]


@dataclass(frozen=True)
class Destination:
    """A resolved route destination: the cluster, its weight and the per-destination headers."""

    cluster: str
    host: str
    port: int
    subset: str
    weight: int
    headers: Mapping[str, Any]


@dataclass(frozen=True)
class RouteContext:
    """Everything route translation reads for one proxy and one listener port."""

    proxy: ProxyInfo
    mesh: MeshOptions
    configs: ConfigLookup
    services: Mapping[str, Service]  # visible services by hostname
    port: int
    gateway: str = MESH_GATEWAY  # "mesh" for sidecars, "NAMESPACE/NAME" for a Gateway's routes

    def destination(self, vs: ConfigObject, dest: Mapping[str, Any], weight: int = 100) -> Destination:
        d = _d(dest.get("destination")) if "destination" in dest else dict(dest)
        host = qualify_host(str(d.get("host", "")), vs.namespace, self.mesh.dns_domain)
        subset = str(d.get("subset") or "")
        number = _d(d.get("port")).get("number")
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
            _d(dest.get("headers")),
        )

    def destinations(self, vs: ConfigObject, route: Sequence[Any]) -> list[Destination]:
        """Weighted destinations of a ``route`` list; weight-0 entries are left out (Istio does too)."""
        out = []
        for r in route:
            rd = _d(r)
            weight = rd.get("weight")
            w = 100 if weight is None and len(route) == 1 else int(weight or 0)
            if w > 0 or len(route) == 1:
                out.append(self.destination(vs, rd, max(w, 1)))
        return out

    def policy(self, dest: Destination) -> dict[str, Any]:
        """The DestinationRule policy in force for ``dest`` (empty when its host is unknown)."""
        svc = self.services.get(dest.host)
        if svc is None:
            return {}
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


def _source_ok(match: Mapping[str, Any], proxy: ProxyInfo) -> bool:
    labels = {str(k): str(v) for k, v in _d(match.get("sourceLabels")).items()}
    if any(proxy.labels.get(k) != v for k, v in labels.items()):
        return False
    ns = match.get("sourceNamespace")
    return not ns or ns == proxy.namespace


def match_applies(
    vs: ConfigObject, match: Mapping[str, Any], proxy: ProxyInfo, port: int, gateway: str = MESH_GATEWAY
) -> bool:
    """Whether one match (HTTP, TCP or TLS) is in force on ``proxy`` for ``port``, as a sidecar
    (``gateway="mesh"``) or as the Gateway ``NAMESPACE/NAME``."""
    gateways = [_qualify(str(g), vs.namespace) for g in _l(match.get("gateways"))] or vs_gateways(vs)
    if gateway not in gateways:
        return False
    if match.get("port") is not None and int(match["port"]) != port:
        return False
    return _source_ok(match, proxy)


def applicable_matches(
    vs: ConfigObject, route: Mapping[str, Any], proxy: ProxyInfo, port: int, gateway: str = MESH_GATEWAY
) -> list[dict[str, Any]] | None:
    """The route's matches in force (``[{}]`` = everything), or None when the route does not apply."""
    matches = [_d(m) for m in _l(route.get("match"))]
    if not matches:
        return [{}] if gateway in vs_gateways(vs) else None
    kept = [m for m in matches if match_applies(vs, m, proxy, port, gateway)]
    return kept or None


def tcp_destinations(vs: ConfigObject | None, ctx: RouteContext) -> list[Destination] | None:
    """The destinations of the first ``tcp`` route in force, or None (use the service's own cluster)."""
    if vs is None:
        return None
    for r in _l(vs.spec.get("tcp")):
        rd = _d(r)
        if applicable_matches(vs, rd, ctx.proxy, ctx.port, ctx.gateway) is None:
            continue
        if any(_d(m).get("destinationSubnets") for m in _l(rd.get("match"))):
            continue  # destination subnets are not matched on (documented limit)
        dests = ctx.destinations(vs, _l(rd.get("route")))
        if dests:
            return dests
    return None


def tls_routes(vs: ConfigObject | None, ctx: RouteContext) -> list[tuple[list[str], list[Destination]]]:
    """``(sniHosts, destinations)`` for each ``tls`` match in force, in order."""
    if vs is None:
        return []
    out = []
    for r in _l(vs.spec.get("tls")):
        rd = _d(r)
        dests = ctx.destinations(vs, _l(rd.get("route")))
        for m in _l(rd.get("match")):
            md = _d(m)
            if dests and match_applies(vs, md, ctx.proxy, ctx.port, ctx.gateway):
                out.append(([str(h) for h in _l(md.get("sniHosts"))], dests))
    return out
