"""Which Gateways a gateway proxy serves, their servers, and the VirtualServices bound to each server.

Istio's semantics:

* A Gateway selects gateway proxies by ``selector``: every label must be among the proxy's labels (its
  WorkloadGroup labels plus its registration labels). An empty selector selects every gateway proxy.
  Gateways of every namespace are considered (Istio's default; there is no namespace scoping).
* A server's ``hosts`` entries are ``[NAMESPACE/]HOST``: the namespace part says which namespaces'
  VirtualServices may bind (``*`` any, ``.`` the Gateway's own, else that namespace); no part means any.
* A VirtualService binds to a Gateway that it names in ``gateways`` (``NS/NAME``, or ``NAME`` in the
  VirtualService's namespace) when it is visible (``exportTo``) from the proxy's namespace. Its hosts
  intersect the server's hosts; each intersection (the more specific of the two names) becomes a virtual
  host domain. A short VirtualService host ``NAME`` means ``NAME.VS_NAMESPACE.svc.DOMAIN``.
* Within a bound VirtualService, the routes and matches in force on a server are chosen by the sidecar's
  route translation with the server's Gateway as context (``gateway_routes``): a match naming
  ``gateways`` applies only on those, a match with ``port`` only on that server port.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vmagent.controlplane.config.hosts import config_visible, host_intersection, labels_match, qualify_host
from vmagent.controlplane.model import ConfigObject
from vmagent.controlplane.specs.gateway import Gateway, ServerTLSSettings
from vmagent.controlplane.specs.virtualservice import VirtualService
from vmagent.controlplane.translate import names
from vmagent.controlplane.translate.configindex import ConfigLookup
from vmagent.controlplane.translate.proxy import MeshOptions, ProxyInfo

# Server TLS modes that terminate TLS at the gateway (the rest pass it through or do not apply).
TERMINATING_MODES = frozenset({"SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL"})


@dataclass(frozen=True)
class ServerHost:
    """One ``hosts`` entry of a server: the namespaces it admits VirtualServices from, and the host."""

    namespace: str  # "*" any, else one namespace ("." already resolved to the Gateway's)
    host: str

    def admits(self, namespace: str) -> bool:
        return self.namespace in ("*", namespace)


@dataclass(frozen=True)
class Server:
    """One server of one Gateway, as translation needs it."""

    gateway_namespace: str
    gateway_name: str
    index: int
    port: int
    port_name: str
    protocol: str  # upper case: HTTP, HTTPS, HTTP2, GRPC, TLS, TCP, ...
    hosts: tuple[ServerHost, ...]
    tls: ServerTLSSettings | None = None  # None also for an empty ``tls: {}``
    bind: str = ""

    @property
    def gateway_ref(self) -> str:
        return f"{self.gateway_namespace}/{self.gateway_name}"

    @property
    def tls_mode(self) -> str:
        return (self.tls.mode or "SIMPLE") if self.tls is not None else ""

    @property
    def terminates_tls(self) -> bool:
        """HTTPS (or TLS) whose TLS ends here; the traffic inside is HTTP (HTTPS) or TCP (TLS)."""
        return names.is_tls(self.protocol) and self.tls_mode in TERMINATING_MODES

    @property
    def serves_http(self) -> bool:
        """The gateway speaks HTTP on this server: HTTP-like protocols, or HTTPS terminated here."""
        if names.is_http(self.protocol):
            return True
        return self.protocol == "HTTPS" and self.terminates_tls

    @property
    def https_redirect(self) -> bool:
        return self.tls.https_redirect if self.tls is not None else False

    @property
    def sni_hosts(self) -> list[str]:
        """The SNI names the server's filter chain matches; empty when any name (``*``) is served."""
        hosts = sorted({h.host for h in self.hosts})
        return [] if "*" in hosts else hosts

    def route_name(self) -> str:
        """Istio's RDS names: ``http.PORT`` for plaintext (shared by all servers of the port),
        ``https.PORT.PORTNAME.GATEWAY.NAMESPACE`` for each HTTPS server."""
        if self.protocol == "HTTPS":
            return f"https.{self.port}.{self.port_name}.{self.gateway_name}.{self.gateway_namespace}"
        return f"http.{self.port}"


def selects(gateway: ConfigObject, labels: Mapping[str, str]) -> bool:
    """Whether ``gateway``'s selector matches a proxy with ``labels``."""
    return labels_match(dict(gateway.spec_as(Gateway).selector), labels)


def gateways_for(proxy: ProxyInfo, configs: ConfigLookup) -> list[ConfigObject]:
    """The Gateways (all namespaces, by namespace and name) whose selector matches ``proxy``."""
    found = [g for g in configs.list("Gateway") if selects(g, proxy.labels)]
    return sorted(found, key=lambda g: (g.namespace, g.name))


def _server_host(text: str, gateway_ns: str) -> ServerHost:
    ns, sep, host = text.partition("/")
    if not sep:
        return ServerHost("*", text)
    return ServerHost(gateway_ns if ns == "." else ns, host)


def servers_of(gateway: ConfigObject) -> list[Server]:
    out = []
    for i, s in enumerate(gateway.spec_as(Gateway).servers):
        port = s.port
        if port is None or not port.number:
            continue
        hosts = tuple(_server_host(h, gateway.namespace) for h in s.hosts)
        out.append(
            Server(
                gateway_namespace=gateway.namespace,
                gateway_name=gateway.name,
                index=i,
                port=port.number,
                port_name=port.name or f"port-{port.number}",
                protocol=(port.protocol or "TCP").upper(),
                hosts=hosts,
                tls=s.tls if s.tls != ServerTLSSettings() else None,
                bind=s.bind,
            )
        )
    return out


def proxy_servers(proxy: ProxyInfo, configs: ConfigLookup) -> list[Server]:
    """Every server of every Gateway selecting ``proxy``, in Gateway then server order."""
    return [s for g in gateways_for(proxy, configs) for s in servers_of(g)]


def binds_to(vs: ConfigObject, server: Server) -> bool:
    """Whether ``vs`` names the server's Gateway in ``gateways``."""
    for ref in vs.spec_as(VirtualService).gateways:
        ns, sep, name = ref.rpartition("/")
        if (ns if sep else vs.namespace) == server.gateway_namespace and name == server.gateway_name:
            return True
    return False


@dataclass(frozen=True)
class Binding:
    """A VirtualService bound to one server, with the domains where both meet."""

    virtual_service: ConfigObject
    domains: tuple[str, ...]


def bindings(server: Server, proxy: ProxyInfo, configs: ConfigLookup, mesh: MeshOptions) -> list[Binding]:
    """The VirtualServices bound to ``server`` (by namespace and name) and the hosts they serve there."""
    out = []
    for vs in sorted(configs.list("VirtualService"), key=lambda v: (v.namespace, v.name)):
        if not binds_to(vs, server) or not config_visible(vs, proxy.namespace):
            continue
        admitted = [h for h in server.hosts if h.admits(vs.namespace)]
        domains: list[str] = []
        for raw in vs.spec_as(VirtualService).hosts:
            host = qualify_host(raw, vs.namespace, mesh.dns_domain)
            for sh in admitted:
                d = host_intersection(host, sh.host)
                if d is not None and d not in domains:
                    domains.append(d)
        if domains:
            out.append(Binding(vs, tuple(domains)))
    return out


def group_by_port(servers: Sequence[Server]) -> dict[int, list[Server]]:
    """Servers grouped by port number (ports ascending; servers in their original order)."""
    out: dict[int, list[Server]] = {}
    for s in servers:
        out.setdefault(s.port, []).append(s)
    return {p: out[p] for p in sorted(out)}
