"""Routes of the VirtualServices bound to a gateway server, through the sidecar's route translation.

A gateway routes with the same code as a sidecar (``httproute.virtual_service_routes``,
``virtualservice.tcp_destinations`` and ``tls_routes``), with the route context's ``gateway`` set to the
server's Gateway (``NAMESPACE/NAME``): a match is in force when its ``gateways`` (or the VirtualService's)
name that Gateway and its ``port`` is the server's port; ``sourceLabels`` are checked against the
gateway proxy's own labels, as Istio does.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.route.v3 import route_components_pb2 as rc

from vmagent.controlplane.model import ConfigObject, Service
from vmagent.controlplane.translate import filters, names
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.gateway import Server
from vmagent.controlplane.translate.httproute import virtual_service_routes
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo
from vmagent.controlplane.translate.virtualservice import (
    Destination,
    RouteContext,
    tcp_destinations,
    tls_routes,
)


def route_context(
    server: Server, proxy: ProxyInfo, services: Sequence[Service], configs: ConfigLookup, mesh: MeshOptions
) -> RouteContext:
    """The route context of ``server``: its port, its Gateway, the proxy's visible services."""
    return RouteContext(
        proxy=proxy,
        mesh=mesh,
        configs=configs,
        services={s.hostname: s for s in services},
        port=server.port,
        gateway=server.gateway_ref,
    )


def http_routes(vs: ConfigObject, ctx: RouteContext) -> list[rc.Route]:
    """The routes of ``vs``'s ``http`` section in force on the context's Gateway and port, in order."""
    return virtual_service_routes(vs, ctx)


def tcp_filter(dests: Sequence[Destination], stat_prefix: str) -> lc.Filter:
    """tcp_proxy to the destinations (weighted when there are several)."""
    return filters.tcp_proxy(dests[0].cluster, stat_prefix, weighted=[(d.cluster, d.weight) for d in dests])


def first_tcp_route(vss: Sequence[ConfigObject], ctx: RouteContext) -> lc.Filter:
    """tcp_proxy for the first ``tcp`` route in force among ``vss``; the black hole when there is none."""
    for vs in vss:
        dests = tcp_destinations(vs, ctx)
        if dests:
            return tcp_filter(dests, f"outbound_0.0.0.0_{ctx.port}")
    return filters.tcp_proxy(names.BLACKHOLE_CLUSTER)


def sni_routes(vs: ConfigObject, ctx: RouteContext) -> list[tuple[list[str], list[Destination]]]:
    """``(sniHosts, destinations)`` of ``vs``'s ``tls`` routes in force on the context's Gateway."""
    return tls_routes(vs, ctx)
