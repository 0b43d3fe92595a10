"""Istio's names for clusters, listeners and routes, protocol classes, and address helpers."""

from __future__ import annotations

import ipaddress

from vmagent.common import wire

PASSTHROUGH_CLUSTER = "PassthroughCluster"
BLACKHOLE_CLUSTER = "BlackHoleCluster"
INBOUND_PASSTHROUGH_V4 = "InboundPassthroughClusterIpv4"
INBOUND_PASSTHROUGH_V6 = "InboundPassthroughClusterIpv6"
VIRTUAL_OUTBOUND = "virtualOutbound"
VIRTUAL_INBOUND = "virtualInbound"
SECRET_DEFAULT = wire.SECRET_DEFAULT
SECRET_ROOTCA = wire.SECRET_ROOTCA
TLS_MODE_LABEL = "security.istio.io/tlsMode"
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"

_HTTP = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB"})
_H2 = frozenset({"HTTP2", "GRPC", "GRPC-WEB"})
_TLS = frozenset({"TLS", "HTTPS"})


def outbound_cluster(port: int, host: str, subset: str = "") -> str:
    """``outbound|PORT|SUBSET|HOST``."""
    return f"outbound|{port}|{subset}|{host}"


def inbound_cluster(port: int) -> str:
    """``inbound|PORT||``."""
    return f"inbound|{port}||"


def outbound_sni(port: int, host: str, subset: str = "") -> str:
    """``outbound_.PORT_.SUBSET_.HOST`` — the SNI a mesh client sends."""
    return f"outbound_.{port}_.{subset}_.{host}"


def outbound_listener(port: int) -> str:
    return f"0.0.0.0_{port}"


def route_name(port: int) -> str:
    """The RDS name of the outbound HTTP routes of one port: the port number."""
    return str(port)


def is_http(protocol: str) -> bool:
    return protocol.upper() in _H2 or protocol.upper() in _HTTP


def is_http2(protocol: str) -> bool:
    return protocol.upper() in _H2


def is_tls(protocol: str) -> bool:
    return protocol.upper() in _TLS


def protocol_from_port_name(name: str) -> str:
    """Istio's port naming convention: ``http-web`` -> HTTP, ``grpc`` -> GRPC; unknown -> TCP."""
    prefix = name.split("-", 1)[0].upper()
    known = {"HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTPS", "TLS", "TCP", "MONGO", "MYSQL", "REDIS"}
    return prefix if prefix in known else "TCP"


def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address ``text`` (also ``A/32`` or ``A/128``), or None if it is not a single IP."""
    if "/" not in text:  # the common case; parsing a network is several times slower
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            return None
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if net.num_addresses != 1:
        return None
    return net.network_address


def network_of(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """``text`` as a network (an IP becomes /32 or /128), or None if it is neither."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def is_loopback(address: str) -> bool:
    ip = ip_of(address)
    return ip is not None and ip.is_loopback


def host_domains(host: str, port: int, service_ns: str, proxy_ns: str, dns_domain: str) -> list[str]:
    """The names under which an HTTP client may reach ``host``: Istio's virtual host domains.

    The host itself; for ``NAME.NS.svc.DOMAIN`` also ``NAME.NS.svc``, ``NAME.NS`` and, from the same
    namespace, ``NAME`` (the same short names the agent's DNS proxy answers); each also with ``:PORT``.
    """
    names = [host]
    suffix = f".{service_ns}.svc.{dns_domain}"
    if host.endswith(suffix):
        short = host[: -len(suffix)]
        if short and "." not in short:
            names += [f"{short}.{service_ns}.svc", f"{short}.{service_ns}"]
            if service_ns == proxy_ns:
                names.append(short)
    return [d for n in names for d in (n, f"{n}:{port}")]


def sort_key_ip(text: str) -> tuple[int, int, str]:
    """Sort IPs numerically (v4 before v6); anything else after them by text."""
    ip = ip_of(text)
    if ip is None:
        return (2, 0, text)
    return (ip.version // 6, int(ip), text)
