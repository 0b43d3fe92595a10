"""Outbound HTTP routes: one RouteConfiguration per port (named by the port number).

Each HTTP service on the port gets a virtual host ``HOST:PORT`` whose domains are the host, its short
names (see ``names.host_domains``) and the service's VIPs, each with and without ``:PORT``; its default
route sends everything to ``outbound|PORT||HOST`` with Istio's default retries, preceded by its twin for
the idempotent methods that also retries resets (``failover.idempotent_reset_retry``). A domain claimed
by an earlier virtual host (services in hostname order) is not repeated, since Envoy refuses duplicates. Unknown hosts fall to the ``*``
virtual host: ``allow_any`` (to PassthroughCluster) with ALLOW_ANY, ``block_all`` (502) with
REGISTRY_ONLY, as in Istio.

When a VirtualService routes the service (``virtualservice.select_virtual_service``), its HTTP routes in
force on this proxy and port replace the default route (``httproute``); as in Istio, a request that
matches none of them gets 404. A VirtualService without HTTP routes in force leaves the default route.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from vmagent.controlplane.model import Port, Service
from vmagent.controlplane.specs.virtualservice import VirtualService
from vmagent.controlplane.translate import names
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.destination import find_destination_rule
from vmagent.controlplane.translate.failover import idempotent_reset_retry
from vmagent.controlplane.translate.httproute import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_ON,
    default_retry_policy,
    virtual_service_routes,
)
from vmagent.controlplane.translate.protos import boolean, duration
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo
from vmagent.controlplane.translate.trafficpolicy import route_hash_policy
from vmagent.controlplane.translate.virtualservice import RouteContext, select_virtual_service

__all__ = ["DEFAULT_RETRIES", "DEFAULT_RETRY_ON", "default_route", "outbound_route_config", "service_routes"]


def default_route(cluster: str, hash_policy: Sequence[rc.RouteAction.HashPolicy] = ()) -> rc.Route:
    """Everything to ``cluster``, with no overall timeout (Envoy's default of 15 s is not Istio's) and
    Istio's default retries; ``hash_policy`` from a consistent-hash DestinationRule (then retries do
    not move to another host, as in Istio)."""
    return rc.Route(
        name="default",
        match=rc.RouteMatch(prefix="/"),
        route=rc.RouteAction(
            cluster=cluster,
            timeout=duration(0),
            retry_policy=default_retry_policy(consistent_hash=bool(hash_policy)),
            hash_policy=list(hash_policy),
        ),
    )


def service_routes(
    service: Service,
    port: Port,
    proxy: ProxyInfo | None = None,
    mesh: MeshOptions | None = None,
    configs: ConfigLookup | None = None,
    services: Mapping[str, Service] | None = None,
) -> list[rc.Route]:
    """The routes of one service's virtual host: its VirtualService's, else the default route."""
    cluster = names.outbound_cluster(port.number, service.hostname)
    if proxy is None or mesh is None or configs is None:
        return idempotent_reset_retry(default_route(cluster), DEFAULT_RETRY_ON)
    vs = select_virtual_service(service, proxy, configs, mesh)
    if vs is not None:
        ctx = RouteContext(proxy, mesh, configs, services or {service.hostname: service}, port.number)
        routes = virtual_service_routes(vs, ctx)
        if routes or vs.spec_as(VirtualService).http:
            return routes or [_not_found()]
    rule = find_destination_rule(service, proxy.namespace, configs, mesh)
    route = default_route(cluster, route_hash_policy(rule.traffic_policy(port.number)))
    return idempotent_reset_retry(route, DEFAULT_RETRY_ON)


def _not_found() -> rc.Route:
    """A VirtualService whose HTTP routes are all out of force here: nothing matches (404, as Istio)."""
    return rc.Route(
        name="no_route", match=rc.RouteMatch(prefix="/"), direct_response=rc.DirectResponseAction(status=404)
    )


def catch_all_host(mesh: MeshOptions) -> rc.VirtualHost:
    if mesh.outbound_traffic_policy == "REGISTRY_ONLY":
        return rc.VirtualHost(
            name="block_all",
            domains=["*"],
            routes=[
                rc.Route(
                    name="block_all",
                    match=rc.RouteMatch(prefix="/"),
                    direct_response=rc.DirectResponseAction(status=502),
                )
            ],
        )
    route = rc.Route(
        name="allow_any",
        match=rc.RouteMatch(prefix="/"),
        route=rc.RouteAction(cluster=names.PASSTHROUGH_CLUSTER, timeout=duration(0)),
    )
    return rc.VirtualHost(name="allow_any", domains=["*"], routes=[route])


def vip_domains(service: Service, port: int) -> list[str]:
    out = []
    for vip in service.addresses:
        ip = names.ip_of(vip)
        if ip is None:
            continue
        text = f"[{ip}]" if ip.version == 6 else str(ip)
        out += [str(ip), f"{text}:{port}"]
    return out


def outbound_route_config(
    port: int,
    services: Sequence[tuple[Service, Port]],
    proxy: ProxyInfo,
    mesh: MeshOptions,
    configs: ConfigLookup | None = None,
    visible: Sequence[Service] = (),
) -> route_pb2.RouteConfiguration:
    """The RouteConfiguration ``str(port)`` for the HTTP services ``services`` on ``port``.

    ``configs`` (VirtualServices, DestinationRules) and ``visible`` (all services the proxy sees, for
    resolving route destinations) enable VirtualService routing; without them every service gets
    the default route.
    """
    by_host = {s.hostname: s for s in visible}
    used = {"*"}
    hosts: list[rc.VirtualHost] = []
    for svc, p in sorted(services, key=lambda sp: sp[0].hostname):
        domains = names.host_domains(svc.hostname, port, svc.namespace, proxy.namespace, mesh.dns_domain)
        domains += vip_domains(svc, port)
        fresh = []
        for d in domains:
            if d.lower() not in used:
                used.add(d.lower())
                fresh.append(d)
        if not fresh:
            continue
        hosts.append(
            rc.VirtualHost(
                name=f"{svc.hostname}:{port}",
                domains=fresh,
                routes=service_routes(svc, p, proxy, mesh, configs, by_host or None),
            )
        )
    hosts.append(catch_all_host(mesh))
    return route_pb2.RouteConfiguration(
        name=names.route_name(port), virtual_hosts=hosts, validate_clusters=boolean(False)
    )
