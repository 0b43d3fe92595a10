"""The inbound listener ``virtualInbound`` on 0.0.0.0:15006 and its filter chains.

Capture redirects inbound TCP to 15006; the ``original_dst`` listener filter restores the destination and
the TLS inspector tells TLS from plaintext. Each port of the proxy's own workload gets chains matched by
``destination_port``, according to its PeerAuthentication mode:

* PERMISSIVE (the default): a chain for ``transport_protocol: tls`` that terminates mutual TLS (the
  proxy's SDS certificate ``default``, clients verified against ``ROOTCA``) and a plaintext chain;
* STRICT: the mutual TLS chain only — a plaintext connection matches no chain and is closed;
* DISABLE: the plaintext chain only, which takes TLS too (passed to the application as it is); the TLS
  inspector is skipped on such ports so server-first protocols do not wait for it.

HTTP ports go through an http_connection_manager to ``inbound|PORT||`` that sets
``x-forwarded-client-cert`` as Istio does (SANITIZE_SET: By and Hash always, plus Subject, URI and DNS of
the client certificate; anything the client sent is dropped), with jwt_authn (RequestAuthentication)
and RBAC (AuthorizationPolicy) before the router when ``policy`` is an ``InboundSecurity`` that carries
them. Other ports use tcp_proxy behind network RBAC filters (AuthorizationPolicy with TCP semantics).

Ports no service declares go through the passthrough chains (no ``destination_port``) to the original
destination, following the workload's mode (port-level modes for such ports get their own chains).
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from vmagent.controlplane.model import Port
from vmagent.controlplane.translate import authn, authz, filters, names
from vmagent.controlplane.translate.protos import boolean, cidr, duration, socket_address, u32
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo
from vmagent.controlplane.translate.security import DISABLE, PERMISSIVE, STRICT, InboundSecurity, MtlsPolicy
from vmagent.controlplane.translate.tls import inbound_mtls_socket

HTTP_ALPN = ("h2", "http/1.1")


def inbound_ports(proxy: ProxyInfo) -> list[Port]:
    """The proxy's workload ports, one per number (the first declaration wins), ascending."""
    found: dict[int, Port] = {}
    for p in proxy.ports:
        found.setdefault(p.number, p)
    return [found[n] for n in sorted(found)]


def inbound_http_filters(
    proxy: ProxyInfo, port: Port, security: MtlsPolicy, mesh: MeshOptions
) -> list[hcm.HttpFilter]:
    """The inbound HTTP filters: jwt_authn (RequestAuthentication), RBAC (AuthorizationPolicy: AUDIT,
    DENY, ALLOW), then the router."""
    out: list[hcm.HttpFilter] = []
    if isinstance(security, InboundSecurity):
        jwt = authn.jwt_filter(security.request_authentications)
        if jwt is not None:
            out.append(jwt)
        out += authz.http_filters(security.authorization_policies, mesh.trust_domain)
    return [*out, filters.router()]


def inbound_tcp_filters(cluster: str, security: MtlsPolicy, mesh: MeshOptions) -> list[lc.Filter]:
    """Network RBAC (AuthorizationPolicy with TCP semantics), then tcp_proxy to ``cluster``."""
    out: list[lc.Filter] = []
    if isinstance(security, InboundSecurity):
        out += authz.network_filters(security.authorization_policies, mesh.trust_domain, f"tcp.{cluster}")
    return [*out, filters.tcp_proxy(cluster)]


def _http_filter(proxy: ProxyInfo, port: Port, security: MtlsPolicy, mesh: MeshOptions) -> lc.Filter:
    cluster = names.inbound_cluster(port.number)
    cfg = filters.base_hcm(f"inbound_0.0.0.0_{port.number}")
    cfg.forward_client_cert_details = hcm.HttpConnectionManager.SANITIZE_SET
    cfg.set_current_client_cert_details.CopyFrom(
        hcm.HttpConnectionManager.SetCurrentClientCertDetails(subject=boolean(True), uri=True, dns=True)
    )
    route = rc.Route(
        name="default",
        match=rc.RouteMatch(prefix="/"),
        route=rc.RouteAction(cluster=cluster, timeout=duration(0)),
    )
    cfg.route_config.CopyFrom(
        route_pb2.RouteConfiguration(
            name=cluster,
            virtual_hosts=[rc.VirtualHost(name=f"inbound|http|{port.number}", domains=["*"], routes=[route])],
            validate_clusters=boolean(False),
        )
    )
    cfg.http_filters.extend(inbound_http_filters(proxy, port, security, mesh))
    return filters.http_connection_manager(cfg)


def _chains(
    name: str,
    mode: str,
    match: lc.FilterChainMatch,
    filters_: list[lc.Filter],
    mesh: MeshOptions,
    alpn: tuple[str, ...],
) -> list[lc.FilterChain]:
    out = []
    if mode in (STRICT, PERMISSIVE):
        tls_match = lc.FilterChainMatch()
        tls_match.CopyFrom(match)
        tls_match.transport_protocol = "tls"
        out.append(
            lc.FilterChain(
                name=f"{name}/mtls",
                filter_chain_match=tls_match,
                filters=filters_,
                transport_socket=inbound_mtls_socket(mesh.sds_cluster, alpn),
            )
        )
    if mode in (PERMISSIVE, DISABLE):
        out.append(lc.FilterChain(name=f"{name}/plaintext", filter_chain_match=match, filters=filters_))
    return out


def _passthrough_families(proxy: ProxyInfo) -> list[tuple[str, str, int]]:
    fams = [(names.INBOUND_PASSTHROUGH_V4, "0.0.0.0", 0)]
    if any((ip := names.ip_of(a)) is not None and ip.version == 6 for a in proxy.ip_addresses):
        fams.append((names.INBOUND_PASSTHROUGH_V6, "::", 0))
    return fams


def virtual_inbound(proxy: ProxyInfo, policy: MtlsPolicy, mesh: MeshOptions) -> listener_pb2.Listener:
    """``virtualInbound`` for ``proxy`` under ``policy``."""
    chains: list[lc.FilterChain] = []
    disabled: list[int] = []
    declared = set()
    for port in inbound_ports(proxy):
        alpn: tuple[str, ...]
        declared.add(port.number)
        mode = policy.for_port(port.number)
        if mode == DISABLE:
            disabled.append(port.number)
        if names.is_http(port.protocol):
            filts, alpn = [_http_filter(proxy, port, policy, mesh)], HTTP_ALPN
        else:
            filts, alpn = inbound_tcp_filters(names.inbound_cluster(port.number), policy, mesh), ()
        match = lc.FilterChainMatch(destination_port=u32(port.number))
        chains += _chains(names.inbound_cluster(port.number), mode, match, filts, mesh, alpn)
    for cluster, prefix, length in _passthrough_families(proxy):
        tcp = inbound_tcp_filters(cluster, policy, mesh)
        for number, mode in sorted(policy.port_modes.items()):
            if number in declared:
                continue
            if mode == DISABLE:
                disabled.append(number)
            match = lc.FilterChainMatch(destination_port=u32(number), prefix_ranges=[cidr(prefix, length)])
            chains += _chains(f"{cluster}|{number}", mode, match, tcp, mesh, ())
        match = lc.FilterChainMatch(prefix_ranges=[cidr(prefix, length)])
        chains += _chains(cluster, policy.mode, match, tcp, mesh, ())
    return listener_pb2.Listener(
        name=names.VIRTUAL_INBOUND,
        address=socket_address("0.0.0.0", mesh.inbound_port),
        traffic_direction=base_pb2.INBOUND,
        listener_filters=[filters.original_dst(), filters.tls_inspector(sorted(set(disabled)))],
        listener_filters_timeout=duration(mesh.protocol_detection_timeout_s),
        continue_on_listener_filters_timeout=True,
        filter_chains=chains,
    )
