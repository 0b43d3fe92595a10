"""The listeners and route configurations of a gateway proxy, from the Gateways that select it.

One listener per server port, ``0.0.0.0_PORT`` (or ``BIND_PORT`` for a server with ``bind``), bound to the
port (unlike the sidecar's outbound listeners, nothing redirects traffic to a gateway). Its filter chains:

* HTTPS terminated here (SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL): one chain per server matching
  the server's hosts as SNI (``*``: any SNI), with the server's certificate from SDS and an HTTP
  connection manager whose routes come by RDS as ``https.PORT.PORTNAME.GATEWAY.NAMESPACE``;
* TLS terminated here: the same chain with tcp_proxy to the bound VirtualServices' ``tcp`` route;
* TLS or HTTPS with PASSTHROUGH: one chain per SNI host of the bound VirtualServices' ``tls`` routes
  (``sniHosts`` within the server's hosts), tcp_proxy to the route's destination;
* plaintext HTTP (HTTP, HTTP2, GRPC): one chain for all such servers of the port, RDS ``http.PORT``;
  with ``tls.httpsRedirect`` its virtual hosts answer 301 to https;
* TCP: tcp_proxy to the bound VirtualServices' first ``tcp`` route.

A connection whose SNI matches no chain (and no ``*`` server) is closed. SNI names are claimed in server
order: a later server naming a claimed host does not get it (Envoy refuses equal chain matches), and a
port gets one plaintext chain (HTTP servers first, then the first TCP server).

Route configurations have one virtual host per domain (the intersection of the server's and the
VirtualService's hosts), named ``DOMAIN:PORT``, matching the domain with and without ``:PORT``; the routes
of every VirtualService bound there are concatenated in namespace/name order. A request for another host
gets 404.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from vmagent.controlplane.config.hosts import host_intersection
from vmagent.controlplane.model import Service
from vmagent.controlplane.translate import filters, gateway_routes, names
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.gateway import Server, bindings, group_by_port, proxy_servers
from vmagent.controlplane.translate.gateway_tls import server_tls_socket
from vmagent.controlplane.translate.listeners import RESERVED_PORTS, outbound_http_filters
from vmagent.controlplane.translate.protos import ads, boolean, socket_address
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo

HTTP_ALPN = ("h2", "http/1.1")


@dataclass
class GatewayResources:
    listeners: list[listener_pb2.Listener] = field(default_factory=list)
    routes: list[route_pb2.RouteConfiguration] = field(default_factory=list)


@dataclass
class _PortState:
    port: int
    chains: list[lc.FilterChain] = field(default_factory=list)
    claimed_sni: set[str] = field(default_factory=set)
    any_sni: bool = False
    plaintext: bool = False
    tls_chains: bool = False


def _hcm(port: int, route_name: str) -> lc.Filter:
    cfg = filters.base_hcm(f"outbound_0.0.0.0_{port}")
    cfg.rds.CopyFrom(hcm.Rds(config_source=ads(), route_config_name=route_name))
    cfg.http_filters.extend(outbound_http_filters())
    # The gateway is the edge: it trusts no forwarded-for or client-cert header from outside.
    cfg.use_remote_address.CopyFrom(boolean(True))
    cfg.forward_client_cert_details = hcm.HttpConnectionManager.SANITIZE_SET
    cfg.set_current_client_cert_details.CopyFrom(
        hcm.HttpConnectionManager.SetCurrentClientCertDetails(subject=boolean(True), uri=True, dns=True)
    )
    return filters.http_connection_manager(cfg)


def _claim(state: _PortState, sni: Sequence[str]) -> list[str] | None:
    """The SNI names this chain may take ([] = any); None when nothing is left for it."""
    if not sni:
        if state.any_sni:
            return None
        state.any_sni = True
        return []
    fresh = [s for s in sni if s not in state.claimed_sni]
    if not fresh:
        return None
    state.claimed_sni.update(fresh)
    return fresh


def _tls_chain(state: _PortState, name: str, sni: Sequence[str], filt: lc.Filter) -> lc.FilterChain | None:
    claimed = _claim(state, sni)
    if claimed is None:
        return None
    state.tls_chains = True
    return lc.FilterChain(
        name=name,
        filter_chain_match=lc.FilterChainMatch(server_names=claimed, transport_protocol="tls"),
        filters=[filt],
    )


def _virtual_hosts(
    servers: Sequence[Server],
    proxy: ProxyInfo,
    services: Sequence[Service],
    configs: ConfigLookup,
    mesh: MeshOptions,
) -> list[rc.VirtualHost]:
    hosts: dict[str, rc.VirtualHost] = {}
    for server in servers:
        ctx = gateway_routes.route_context(server, proxy, services, configs, mesh)
        for b in bindings(server, proxy, configs, mesh):
            routes = gateway_routes.http_routes(b.virtual_service, ctx)
            for domain in b.domains:
                vh = hosts.get(domain)
                if vh is None:
                    vh = rc.VirtualHost(name=f"{domain}:{server.port}", domains=_domains(domain, server.port))
                    if server.https_redirect:
                        vh.require_tls = rc.VirtualHost.ALL
                    hosts[domain] = vh
                vh.routes.extend(routes)
    return [hosts[d] for d in sorted(hosts)]


def _domains(domain: str, port: int) -> list[str]:
    return [domain] if domain == "*" else [domain, f"{domain}:{port}"]


def _route_config(name: str, vhosts: list[rc.VirtualHost]) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=vhosts, validate_clusters=boolean(False))


def _passthrough_chains(
    state: _PortState,
    server: Server,
    proxy: ProxyInfo,
    services: Sequence[Service],
    configs: ConfigLookup,
    mesh: MeshOptions,
) -> None:
    ctx = gateway_routes.route_context(server, proxy, services, configs, mesh)
    for b in bindings(server, proxy, configs, mesh):
        vs = b.virtual_service
        for i, (sni_hosts, dests) in enumerate(gateway_routes.sni_routes(vs, ctx)):
            sni: list[str] = []
            for s in sni_hosts:
                for d in b.domains:
                    hit = host_intersection(s, d)
                    if hit is not None and hit not in sni:
                        sni.append(hit)
            if not sni:
                continue
            name = f"{server.gateway_ref}.{server.index}.{vs.namespace}.{vs.name}.tls.{i}"
            filt = gateway_routes.tcp_filter(dests, f"outbound_0.0.0.0_{server.port}")
            chain = _tls_chain(state, name, sorted(sni), filt)
            if chain is not None:
                state.chains.append(chain)


def _tcp_filter(
    server: Server, proxy: ProxyInfo, services: Sequence[Service], configs: ConfigLookup, mesh: MeshOptions
) -> lc.Filter:
    ctx = gateway_routes.route_context(server, proxy, services, configs, mesh)
    vss = [b.virtual_service for b in bindings(server, proxy, configs, mesh)]
    return gateway_routes.first_tcp_route(vss, ctx)


def gateway_resources(
    proxy: ProxyInfo, services: Sequence[Service], configs: ConfigLookup, mesh: MeshOptions
) -> GatewayResources:
    """Listeners and route configurations for every server of the Gateways selecting ``proxy``."""
    out = GatewayResources()
    for port, servers in group_by_port(proxy_servers(proxy, configs)).items():
        if port in RESERVED_PORTS:
            continue
        state = _PortState(port)
        http_plain = [s for s in servers if not names.is_tls(s.protocol) and s.serves_http]
        for server in servers:
            if server.protocol == "HTTPS" and server.terminates_tls:
                rname = server.route_name()
                chain = _tls_chain(state, rname, server.sni_hosts, _hcm(port, rname))
                if chain is None:
                    continue
                chain.transport_socket.CopyFrom(server_tls_socket(server.tls, mesh.sds_cluster, HTTP_ALPN))
                state.chains.append(chain)
                out.routes.append(
                    _route_config(rname, _virtual_hosts([server], proxy, services, configs, mesh))
                )
            elif server.protocol == "TLS" and server.terminates_tls:
                filt = _tcp_filter(server, proxy, services, configs, mesh)
                chain = _tls_chain(state, f"{server.gateway_ref}.{server.index}", server.sni_hosts, filt)
                if chain is not None:
                    chain.transport_socket.CopyFrom(server_tls_socket(server.tls, mesh.sds_cluster, ()))
                    state.chains.append(chain)
            elif names.is_tls(server.protocol) and server.tls_mode == "PASSTHROUGH":
                _passthrough_chains(state, server, proxy, services, configs, mesh)
        if http_plain:
            rname = http_plain[0].route_name()
            state.chains.append(lc.FilterChain(name=rname, filters=[_hcm(port, rname)]))
            state.plaintext = True
            out.routes.append(
                _route_config(rname, _virtual_hosts(http_plain, proxy, services, configs, mesh))
            )
        else:
            tcp = [s for s in servers if not names.is_tls(s.protocol) and not s.serves_http]
            if tcp:
                filt = _tcp_filter(tcp[0], proxy, services, configs, mesh)
                state.chains.append(
                    lc.FilterChain(name=f"{tcp[0].gateway_ref}.{tcp[0].index}", filters=[filt])
                )
                state.plaintext = True
        if not state.chains:
            continue
        if state.plaintext and state.tls_chains:
            state.chains[-1].filter_chain_match.CopyFrom(lc.FilterChainMatch(transport_protocol="raw_buffer"))
        bind = next((s.bind for s in servers if s.bind), "0.0.0.0")
        lst = listener_pb2.Listener(
            name=f"{bind}_{port}",
            address=socket_address(bind, port),
            traffic_direction=base_pb2.OUTBOUND,
            filter_chains=state.chains,
        )
        if state.tls_chains:
            lst.listener_filters.append(filters.tls_inspector())
        out.listeners.append(lst)
    return out
