"""Outbound listeners: ``virtualOutbound`` on 15001 and one ``0.0.0.0_PORT`` listener per service port.

Capture redirects every outbound TCP connection to 15001. ``virtualOutbound`` restores the original
destination (listener filter ``original_dst``) and, with ``use_original_dst``, hands the connection to the
listener for that destination port, ``0.0.0.0_PORT`` (not bound: ``bind_to_port: false``). A destination
port without one stays on ``virtualOutbound``, whose only filter chain is the passthrough (ALLOW_ANY:
``PassthroughCluster``) or the black hole (REGISTRY_ONLY: ``BlackHoleCluster``).

Within ``0.0.0.0_PORT`` the filter chains are matched by destination IP, then SNI, then protocol:

* a TCP-like service (TCP, TLS, MONGO, ...) with VIPs: a chain matching the VIPs (CIDRs as written);
* without VIPs: a chain matching its endpoints' IP addresses, so a client that resolved the name to an
  endpoint (the agent's DNS proxy does so) reaches the service's cluster;
* a TLS/HTTPS service without VIPs or IP endpoints: a chain matching its hostname as SNI;
* a TCP service with neither: a chain for the whole port (Istio does the same; only the first such
  service by hostname gets it);
* HTTP services (HTTP, HTTP2, GRPC): one chain for plaintext HTTP (``raw_buffer`` with ALPN ``http/1.1``
  or ``h2c`` as detected by the HTTP inspector) with an http_connection_manager whose routes come by
  RDS under the port number; the virtual hosts pick the service by Host header;
* everything else: the listener's default chain, passthrough or black hole as above.

A VirtualService that routes a TCP-like service changes where its chain goes: the first ``tcp`` route in
force sends it to its destinations (weighted when several); each ``tls`` match in force adds a chain
for its ``sniHosts`` (with the service's addresses, when it has any) ahead of the service's own chain.

An address claimed by two services on one port goes to the first by hostname (Envoy refuses two chains
with equal matches). Listener filters are only added when a chain needs them: the TLS inspector for SNI
or protocol matching, the HTTP inspector where HTTP services are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from vmagent.common import constants
from vmagent.controlplane.model import Port, Service
from vmagent.controlplane.translate import filters, names
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.protos import ads, boolean, cidr, duration, socket_address
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo
from vmagent.controlplane.translate.services import ip_endpoint_addresses
from vmagent.controlplane.translate.virtualservice import (
    Destination,
    RouteContext,
    select_virtual_service,
    tcp_destinations,
    tls_routes,
)

# Ports of the proxy and agent themselves; a service port among them gets no outbound listener.
RESERVED_PORTS = frozenset(
    {
        constants.ENVOY_ADMIN_PORT,
        constants.OUTBOUND_PORT,
        constants.INBOUND_PORT,
        constants.AGENT_STATUS_PORT,
        constants.READINESS_PORT,
        constants.DNS_PROXY_PORT,
        constants.ENVOY_PROMETHEUS_PORT,
    }
)
HTTP_ALPN = ("http/1.1", "h2c")


@dataclass
class PortPlan:
    """What the outbound listener of one port carries."""

    port: int
    http: list[tuple[Service, Port]] = field(default_factory=list)
    chains: list[lc.FilterChain] = field(default_factory=list)
    claimed_prefixes: set[str] = field(default_factory=set)
    claimed_sni: set[str] = field(default_factory=set)
    claimed_ip_sni: set[tuple[str, str]] = field(default_factory=set)
    catch_all: bool = False
    needs_tls_inspector: bool = False


@dataclass(frozen=True)
class RoutingInputs:
    """What VirtualService tcp/tls routing reads (absent: every service goes to its own cluster)."""

    proxy: ProxyInfo
    mesh: MeshOptions
    configs: ConfigLookup
    services: Mapping[str, Service]


def tcp_destination(service: Service, port: Port) -> str:
    """The service's own cluster for ``port`` (where TCP goes without a VirtualService)."""
    return names.outbound_cluster(port.number, service.hostname)


def _proxy_filter(dests: Sequence[Destination], stat_prefix: str | None = None) -> lc.Filter:
    return filters.tcp_proxy(dests[0].cluster, stat_prefix, weighted=[(d.cluster, d.weight) for d in dests])


def _routed_filter(service: Service, port: Port, vs_dests: Sequence[Destination] | None) -> lc.Filter:
    if vs_dests:
        return _proxy_filter(vs_dests, tcp_destination(service, port))
    return filters.tcp_proxy(tcp_destination(service, port))


def _prefixes(service: Service) -> list[str]:
    """CIDR texts a TCP connection to ``service`` is recognised by: its VIPs, else its IP endpoints."""
    nets = [n for a in service.addresses if (n := names.network_of(a)) is not None]
    if not nets:
        nets = [n for a in ip_endpoint_addresses(service) if (n := names.network_of(a)) is not None]
    return sorted({str(n) for n in nets}, key=lambda t: names.sort_key_ip(t.split("/")[0]))


def _add_sni_chains(
    plan: PortPlan, service: Service, routes: list[tuple[list[str], list[Destination]]], prefixes: list[str]
) -> None:
    """Chains for VirtualService ``tls`` matches: SNI hosts (on the service's addresses, if any)."""
    key = ",".join(prefixes)
    for i, (sni_hosts, dests) in enumerate(routes):
        fresh = [h for h in sni_hosts if (key, h) not in plan.claimed_ip_sni]
        if not fresh:
            continue
        plan.claimed_ip_sni.update((key, h) for h in fresh)
        match = lc.FilterChainMatch(server_names=fresh)
        for text in prefixes:
            addr, length = text.split("/")
            match.prefix_ranges.append(cidr(addr, int(length)))
        plan.chains.append(
            lc.FilterChain(
                name=f"{service.hostname}|tls[{i}]", filter_chain_match=match, filters=[_proxy_filter(dests)]
            )
        )
        plan.needs_tls_inspector = True


def _add_tcp(plan: PortPlan, service: Service, port: Port, routing: RoutingInputs | None = None) -> None:
    cluster = tcp_destination(service, port)
    vs_dests: list[Destination] | None = None
    if routing is not None:
        vs = select_virtual_service(service, routing.proxy, routing.configs, routing.mesh)
        ctx = RouteContext(routing.proxy, routing.mesh, routing.configs, routing.services, port.number)
        vs_dests = tcp_destinations(vs, ctx)
        if names.is_tls(port.protocol):
            _add_sni_chains(plan, service, tls_routes(vs, ctx), _prefixes(service))
    match = lc.FilterChainMatch()
    prefixes = [p for p in _prefixes(service) if p not in plan.claimed_prefixes]
    if prefixes:
        plan.claimed_prefixes.update(prefixes)
        for text in prefixes:
            addr, length = text.split("/")
            match.prefix_ranges.append(cidr(addr, int(length)))
    elif _prefixes(service):
        return  # every address already taken by an earlier service
    elif names.is_tls(port.protocol):
        if service.hostname in plan.claimed_sni:
            return
        plan.claimed_sni.add(service.hostname)
        match.server_names.append(service.hostname)
        plan.needs_tls_inspector = True
    elif plan.catch_all:
        return
    else:
        plan.catch_all = True
    plan.chains.append(
        lc.FilterChain(
            name=cluster, filter_chain_match=match, filters=[_routed_filter(service, port, vs_dests)]
        )
    )


def plan_ports(
    services: Sequence[Service],
    proxy: ProxyInfo | None = None,
    configs: ConfigLookup | None = None,
    mesh: MeshOptions | None = None,
) -> list[PortPlan]:
    """Group the services' ports into per-port plans (ports in ascending order).

    With ``proxy``, ``configs`` and ``mesh``, VirtualService ``tcp`` and ``tls`` routes are applied.
    """
    routing = None
    if proxy is not None and configs is not None and mesh is not None:
        routing = RoutingInputs(proxy, mesh, configs, {s.hostname: s for s in services})
    plans: dict[int, PortPlan] = {}
    for svc in sorted(services, key=lambda s: s.hostname):
        for port in sorted(svc.ports, key=lambda p: p.number):
            if port.number in RESERVED_PORTS:
                continue
            plan = plans.setdefault(port.number, PortPlan(port.number))
            if names.is_http(port.protocol):
                plan.http.append((svc, port))
            else:
                _add_tcp(plan, svc, port, routing)
    return [plans[p] for p in sorted(plans)]


def _fallback_cluster(mesh: MeshOptions) -> str:
    return (
        names.BLACKHOLE_CLUSTER
        if mesh.outbound_traffic_policy == "REGISTRY_ONLY"
        else names.PASSTHROUGH_CLUSTER
    )


def fallback_chain(mesh: MeshOptions) -> lc.FilterChain:
    cluster = _fallback_cluster(mesh)
    name = "BlackHoleFilterChain" if cluster == names.BLACKHOLE_CLUSTER else "PassthroughFilterChain"
    return lc.FilterChain(name=name, filters=[filters.tcp_proxy(cluster)])


def outbound_http_filters() -> list[hcm.HttpFilter]:
    """The outbound HTTP filter chain: CORS and fault injection (configured per route), the router."""
    return [filters.cors(), filters.fault(), filters.router()]


def _http_chain(port: int) -> lc.FilterChain:
    cfg = filters.base_hcm(f"outbound_0.0.0.0_{port}")
    cfg.rds.CopyFrom(hcm.Rds(config_source=ads(), route_config_name=names.route_name(port)))
    cfg.http_filters.extend(outbound_http_filters())
    return lc.FilterChain(
        name=f"0.0.0.0_{port}_http",
        filter_chain_match=lc.FilterChainMatch(
            transport_protocol="raw_buffer", application_protocols=list(HTTP_ALPN)
        ),
        filters=[filters.http_connection_manager(cfg)],
    )


def port_listener(plan: PortPlan, mesh: MeshOptions) -> listener_pb2.Listener:
    """``0.0.0.0_PORT`` for one port plan."""
    chains = list(plan.chains)
    listener_filters: list[lc.ListenerFilter] = []
    if plan.http:
        chains.append(_http_chain(plan.port))
    if plan.http or plan.needs_tls_inspector:
        listener_filters.append(filters.tls_inspector())
    if plan.http:
        listener_filters.append(filters.http_inspector())
    lst = listener_pb2.Listener(
        name=names.outbound_listener(plan.port),
        address=socket_address("0.0.0.0", plan.port),
        bind_to_port=boolean(False),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=chains,
        default_filter_chain=fallback_chain(mesh),
        listener_filters=listener_filters,
    )
    if listener_filters:
        lst.listener_filters_timeout.CopyFrom(duration(mesh.protocol_detection_timeout_s))
        lst.continue_on_listener_filters_timeout = True
    return lst


def virtual_outbound(mesh: MeshOptions) -> listener_pb2.Listener:
    """``virtualOutbound`` on 0.0.0.0:15001: restores the destination and hands the connection over."""
    return listener_pb2.Listener(
        name=names.VIRTUAL_OUTBOUND,
        address=socket_address("0.0.0.0", mesh.outbound_port),
        use_original_dst=boolean(True),
        traffic_direction=base_pb2.OUTBOUND,
        listener_filters=[filters.original_dst()],
        filter_chains=[fallback_chain(mesh)],
    )
