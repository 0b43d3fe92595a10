"""The entry point: everything one proxy gets over ADS, as typed Envoy messages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.message import Message

from vmagent.controlplane.model import Service
from vmagent.controlplane.translate import authn, clusters, inbound, listeners, routes
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.endpoints import load_assignment
from vmagent.controlplane.translate.gateway_listeners import gateway_resources
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo
from vmagent.controlplane.translate.security import inbound_security
from vmagent.controlplane.translate.services import visible_services
from vmagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE

Resources = dict[str, dict[str, Any]]


def build_proxy_resources(
    proxy: ProxyInfo, services: Iterable[Service], configs: ConfigLookup, mesh: MeshOptions
) -> Resources:
    """``type URL -> {resource name -> message}`` for CDS, EDS, LDS and RDS (every type present, maybe empty).

    Pure and deterministic: equal inputs give equal messages in equal order. Gateway proxies get the
    outbound clusters and endpoints and the listeners and routes of the Gateways selecting them
    (``gateway_listeners``), nothing of the sidecar's.
    """
    visible = visible_services(services, proxy.namespace)
    out: Resources = {CLUSTER: {}, ENDPOINT: {}, LISTENER: {}, ROUTE: {}}

    def put(type_url: str, name: str, msg: Message) -> None:
        if name in out[type_url]:
            raise ValueError(f"translation produced two {type_url.rsplit('.', 1)[-1]} named {name!r}")
        out[type_url][name] = msg

    for plan in clusters.plan_outbound(visible, proxy, configs, mesh):
        cluster, auto_tls = clusters.outbound_cluster(plan, mesh)
        put(CLUSTER, cluster.name, cluster)
        if plan.is_eds:
            put(
                ENDPOINT,
                plan.name,
                load_assignment(plan.name, plan.service, plan.port, plan.endpoints, auto_tls),
            )
    put(CLUSTER, clusters.passthrough_cluster(mesh).name, clusters.passthrough_cluster(mesh))
    put(CLUSTER, clusters.blackhole_cluster(mesh).name, clusters.blackhole_cluster(mesh))
    if proxy.mode == "gateway":
        gw = gateway_resources(proxy, visible, configs, mesh)
        for lst in gw.listeners:
            put(LISTENER, lst.name, lst)
        for rc in gw.routes:
            put(ROUTE, rc.name, rc)
        return _sorted(out)

    for c in clusters.inbound_passthrough_clusters(proxy, mesh):
        put(CLUSTER, c.name, c)
    for port in inbound.inbound_ports(proxy):
        c = clusters.inbound_cluster(port, proxy, mesh)
        put(CLUSTER, c.name, c)

    put(LISTENER, "virtualOutbound", listeners.virtual_outbound(mesh))
    for plan_port in listeners.plan_ports(visible, proxy, configs, mesh):
        lst = listeners.port_listener(plan_port, mesh)
        put(LISTENER, lst.name, lst)
        if plan_port.http:
            rc = routes.outbound_route_config(plan_port.port, plan_port.http, proxy, mesh, configs, visible)
            put(ROUTE, rc.name, rc)
    security = inbound_security(proxy, configs, mesh)
    # JWKS hosts that no ServiceEntry registers still need a cluster for Envoy to fetch keys through.
    for c in authn.jwks_clusters(security.request_authentications, out[CLUSTER].keys(), mesh):
        put(CLUSTER, c.name, c)
    put(LISTENER, "virtualInbound", inbound.virtual_inbound(proxy, security, mesh))
    return _sorted(out)


def _sorted(resources: Resources) -> Resources:
    return {t: {n: resources[t][n] for n in sorted(resources[t])} for t in sorted(resources)}


def all_messages(resources: Resources) -> list[Message]:
    """Every message of ``resources`` in a flat list (for ``Snapshot.from_messages``)."""
    return [msg for t in sorted(resources) for _, msg in sorted(resources[t].items())]
