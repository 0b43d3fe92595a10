"""Gateway translation: selection, servers, VirtualService binding, TLS chains and routes."""

from __future__ import annotations

from typing import Any

import yaml
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from tests.unit.route_twins import one_per_match
from vmagent.controlplane.config.hosts import host_intersection
from vmagent.controlplane.model import ConfigObject, Endpoint, Port, Service
from vmagent.controlplane.translate import ConfigIndex, MeshOptions, ProxyInfo, build_proxy_resources
from vmagent.controlplane.translate.build import Resources
from vmagent.controlplane.xds.snapshot import CLUSTER, LISTENER, ROUTE

GW_PROXY = ProxyInfo(
    namespace="edge",
    labels={"app": "ingress", "istio": "ingressgateway"},
    ip_addresses=("10.0.0.9",),
    identity="spiffe://cluster.local/ns/edge/sa/ingress",
    mode="gateway",
)
API_SA = "spiffe://cluster.local/ns/demo/sa/api"
API = Service(
    hostname="api.demo.svc.cluster.local",
    namespace="demo",
    ports=(Port(8080, "HTTP", "http"),),
    endpoints=(Endpoint("10.0.0.3", ports={"http": 8080}, service_account=API_SA),),
)
WEB = Service(
    hostname="web.demo.svc.cluster.local",
    namespace="demo",
    ports=(Port(80, "HTTP", "http"),),
    endpoints=(Endpoint("10.0.0.4", service_account=API_SA),),
)
DB = Service(
    hostname="db.demo.svc.cluster.local",
    namespace="demo",
    ports=(Port(5432, "TCP", "tcp"),),
    endpoints=(Endpoint("10.0.0.5", service_account=API_SA),),
)


def objs(text: str) -> list[ConfigObject]:
    out = []
    for d in yaml.safe_load_all(text):
        meta = d["metadata"]
        out.append(
            ConfigObject(
                d["kind"], d["apiVersion"], meta.get("namespace", "default"), meta["name"], d["spec"]
            )
        )
    return out


GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop, namespace: edge}
spec:
  selector: {app: ingress}
  servers:
  - port: {number: 8443, name: https-shop, protocol: HTTPS}
    hosts: ["shop.example.com"]
    tls: {mode: SIMPLE, serverCertificate: /etc/gw/shop.crt, privateKey: /etc/gw/shop.key}
  - port: {number: 8443, name: https-admin, protocol: HTTPS}
    hosts: ["demo/admin.example.com"]
    tls: {mode: MUTUAL, serverCertificate: /etc/gw/a.crt, privateKey: /etc/gw/a.key, caCertificates: /etc/gw/ca.pem}
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: demo}
spec:
  hosts: ["shop.example.com", "admin.example.com"]
  gateways: ["edge/shop"]
  http:
  - match: [{uri: {prefix: /v2}}]
    route:
    - destination: {host: api, subset: v2}
  - route:
    - destination: {host: api.demo.svc.cluster.local, port: {number: 8080}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: plain, namespace: edge}
spec:
  hosts: ["web.example.com"]
  gateways: ["shop"]
  http:
  - route:
    - destination: {host: web.demo.svc.cluster.local}
      weight: 90
    - destination: {host: api.demo.svc.cluster.local}
      weight: 10
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mesh-only, namespace: demo}
spec:
  hosts: ["shop.example.com"]
  http:
  - route:
    - destination: {host: web}
"""


def build(
    text: str, proxy: ProxyInfo = GW_PROXY, services: tuple[Service, ...] = (API, WEB, DB)
) -> Resources:
    return build_proxy_resources(proxy, list(services), ConfigIndex(objs(text)), MeshOptions())


def hcm_of(chain: Any) -> hcm.HttpConnectionManager:
    cfg = hcm.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(cfg)
    return cfg


def tls_of(chain: Any) -> tls_pb2.DownstreamTlsContext:
    ctx = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(ctx)
    return ctx


def test_gateway_proxy_gets_bound_listeners_and_no_sidecar_listeners() -> None:
    res = build(GATEWAY)
    assert sorted(res[LISTENER]) == ["0.0.0.0_8080", "0.0.0.0_8443"]
    assert "outbound|8080||api.demo.svc.cluster.local" in res[CLUSTER]
    lst: listener_pb2.Listener = res[LISTENER]["0.0.0.0_8443"]
    assert lst.address.socket_address.port_value == 8443
    assert not lst.HasField("bind_to_port") or lst.bind_to_port.value
    assert [f.name for f in lst.listener_filters] == ["envoy.filters.listener.tls_inspector"]


def test_https_servers_get_one_chain_per_sni_with_file_certificates_from_sds() -> None:
    lst = build(GATEWAY)[LISTENER]["0.0.0.0_8443"]
    by_sni = {tuple(c.filter_chain_match.server_names): c for c in lst.filter_chains}
    assert set(by_sni) == {("shop.example.com",), ("admin.example.com",)}
    shop = by_sni[("shop.example.com",)]
    assert shop.filter_chain_match.transport_protocol == "tls"
    ctx = tls_of(shop)
    names = [s.name for s in ctx.common_tls_context.tls_certificate_sds_secret_configs]
    assert names == ["file-cert:/etc/gw/shop.crt~/etc/gw/shop.key"]
    assert not ctx.require_client_certificate.value
    assert list(ctx.common_tls_context.alpn_protocols) == ["h2", "http/1.1"]
    assert hcm_of(shop).rds.route_config_name == "https.8443.https-shop.shop.edge"
    admin = tls_of(by_sni[("admin.example.com",)])
    assert admin.require_client_certificate.value
    sds_ca = admin.common_tls_context.combined_validation_context.validation_context_sds_secret_config
    assert sds_ca.name == "file-root:/etc/gw/ca.pem"


def test_routes_follow_the_bound_virtual_service_in_order() -> None:
    rc: route_pb2.RouteConfiguration = build(GATEWAY)[ROUTE]["https.8443.https-shop.shop.edge"]
    assert [v.name for v in rc.virtual_hosts] == ["shop.example.com:8443"]
    vh = rc.virtual_hosts[0]
    assert list(vh.domains) == ["shop.example.com", "shop.example.com:8443"]
    routes = one_per_match(list(vh.routes))
    assert [r.match.prefix for r in routes] == ["/v2", "/"]
    assert routes[0].route.cluster == "outbound|8080|v2|api.demo.svc.cluster.local"
    assert routes[1].route.cluster == "outbound|8080||api.demo.svc.cluster.local"


def test_server_host_namespace_restricts_which_virtual_services_bind() -> None:
    text = GATEWAY.replace('"demo/admin.example.com"', '"edge/admin.example.com"')
    rc = build(text)[ROUTE]["https.8443.https-admin.shop.edge"]
    assert list(rc.virtual_hosts) == []  # demo/shop may not bind to an edge/-only host


def test_plain_http_server_routes_weights_and_short_gateway_reference() -> None:
    rc = build(GATEWAY)[ROUTE]["http.8080"]
    # "*" on the server: every bound VirtualService host is served (shop, admin from demo/shop; web from edge)
    assert [v.name for v in rc.virtual_hosts] == [
        "admin.example.com:8080",
        "shop.example.com:8080",
        "web.example.com:8080",
    ]
    web = next(v for v in rc.virtual_hosts if v.name == "web.example.com:8080")
    weights = {c.name: c.weight.value for c in web.routes[0].route.weighted_clusters.clusters}
    assert weights == {
        "outbound|80||web.demo.svc.cluster.local": 90,
        "outbound|8080||api.demo.svc.cluster.local": 10,
    }
    lst = build(GATEWAY)[LISTENER]["0.0.0.0_8080"]
    cfg = hcm_of(lst.filter_chains[0])
    assert cfg.rds.route_config_name == "http.8080"
    assert cfg.use_remote_address.value
    assert cfg.forward_client_cert_details == hcm.HttpConnectionManager.SANITIZE_SET


def test_gateway_not_selecting_the_proxy_gives_no_listener() -> None:
    other = ProxyInfo(namespace="edge", labels={"app": "other"}, mode="gateway")
    assert build(GATEWAY, proxy=other)[LISTENER] == {}


def test_sidecar_proxies_ignore_gateways() -> None:
    sidecar = ProxyInfo(namespace="edge", labels={"app": "ingress"})
    res = build(GATEWAY, proxy=sidecar)
    assert "0.0.0.0_8443" not in res[LISTENER]
    assert not any(n.startswith("https.") for n in res[ROUTE])


def test_https_redirect_and_credential_name() -> None:
    text = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["*.example.com"]
    tls: {mode: SIMPLE, credentialName: shop-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: edge}
spec:
  hosts: ["*"]
  gateways: ["edge/gw"]
  http:
  - route:
    - destination: {host: api.demo.svc.cluster.local}
"""
    res = build(text)
    vh = res[ROUTE]["http.8080"].virtual_hosts[0]
    assert vh.name == "*.example.com:8080"
    assert vh.require_tls == vh.ALL
    chain = res[LISTENER]["0.0.0.0_8443"].filter_chains[0]
    assert list(chain.filter_chain_match.server_names) == ["*.example.com"]
    sds = tls_of(chain).common_tls_context.tls_certificate_sds_secret_configs
    assert [s.name for s in sds] == ["kubernetes://shop-cert"]


def test_passthrough_and_tcp_servers() -> None:
    text = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: edge}
spec:
  selector: {app: ingress}
  servers:
  - port: {number: 9443, name: tls, protocol: TLS}
    hosts: ["*.example.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 5432, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: edge}
spec:
  hosts: ["*.example.com", "db.demo.svc.cluster.local"]
  gateways: ["gw"]
  tls:
  - match: [{sniHosts: [api.example.com], port: 9443}]
    route:
    - destination: {host: api.demo.svc.cluster.local, port: {number: 8080}}
  tcp:
  - match: [{port: 5432}]
    route:
    - destination: {host: db.demo.svc.cluster.local}
"""
    res = build(text)
    chain = res[LISTENER]["0.0.0.0_9443"].filter_chains[0]
    assert list(chain.filter_chain_match.server_names) == ["api.example.com"]
    assert not chain.HasField("transport_socket")
    tcp = res[LISTENER]["0.0.0.0_5432"].filter_chains[0]
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    cfg = tcp_proxy_pb2.TcpProxy()
    tcp.filters[0].typed_config.Unpack(cfg)
    assert cfg.cluster == "outbound|5432||db.demo.svc.cluster.local"
    cfg = tcp_proxy_pb2.TcpProxy()
    chain.filters[0].typed_config.Unpack(cfg)
    assert cfg.cluster == "outbound|8080||api.demo.svc.cluster.local"


def test_overlapping_sni_goes_to_the_first_server_only() -> None:
    text = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: a, namespace: edge}
spec:
  selector: {}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["shop.example.com"]
    tls: {mode: SIMPLE, serverCertificate: /a.crt, privateKey: /a.key}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: b, namespace: edge}
spec:
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["shop.example.com", "other.example.com"]
    tls: {mode: SIMPLE, serverCertificate: /b.crt, privateKey: /b.key}
"""
    chains = build(text)[LISTENER]["0.0.0.0_8443"].filter_chains
    assert [list(c.filter_chain_match.server_names) for c in chains] == [
        ["shop.example.com"],
        ["other.example.com"],
    ]


def test_route_match_gateways_limits_routes_to_named_gateways() -> None:
    text = GATEWAY.replace(
        "  - match: [{uri: {prefix: /v2}}]", "  - match: [{uri: {prefix: /v2}, gateways: [edge/other]}]"
    )
    vh = build(text)[ROUTE]["https.8443.https-shop.shop.edge"].virtual_hosts[0]
    assert [r.match.prefix for r in one_per_match(list(vh.routes))] == ["/"]


def test_host_intersection_keeps_the_more_specific_name() -> None:
    assert host_intersection("*.example.com", "shop.example.com") == "shop.example.com"
    assert host_intersection("shop.example.com", "*") == "shop.example.com"
    assert host_intersection("*.example.com", "*.shop.example.com") == "*.shop.example.com"
    assert host_intersection("a.example.com", "b.example.com") is None


def test_gateway_routes_carry_the_full_virtual_service_semantics() -> None:
    text = GATEWAY.replace(
        "  - route:\n    - destination: {host: api.demo.svc.cluster.local, port: {number: 8080}}",
        "  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n"
        "    headers: {request: {set: {x-via: gateway}}}\n"
        "    route:\n    - destination: {host: api.demo.svc.cluster.local, port: {number: 8080}}",
    )
    vh = build(text)[ROUTE]["https.8443.https-shop.shop.edge"].virtual_hosts[0]
    last = vh.routes[-1]
    assert "envoy.filters.http.fault" in last.typed_per_filter_config
    assert [(h.header.key, h.header.value) for h in last.request_headers_to_add] == [("x-via", "gateway")]
    chain = build(text)[LISTENER]["0.0.0.0_8443"].filter_chains[0]
    assert "envoy.filters.http.fault" in [f.name for f in hcm_of(chain).http_filters]
